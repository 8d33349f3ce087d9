"""Finding workflows and actors by name: the config's ``modules`` and ``actors``, and the
installed packages that expose the ``stemd.workflows`` entry point group.

The modules of the *app directory* import too: :func:`use_app_dir` puts it (by default the
working directory) first on ``sys.path``, as uvicorn's ``--app-dir`` does, so that
``modules = ["approvals"]`` finds ``./approvals.py`` with no ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stemd._authoring.classes import definition_of
from stemd._authoring.definitions import Flow, Script
from stemd._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "ENTRY_POINT_GROUP",
    "import_object",
    "load_workflows",
    "use_app_dir",
    "workflows_in",
]

ENTRY_POINT_GROUP = "stemd.workflows"

Workflow = Flow[Any, Any] | Script[Any, Any]


def _workflow(value: Any) -> Workflow | None:
    """The workflow ``value`` is or defines (a ``@stemd.workflow`` class), if any."""
    found = definition_of(value)
    return found if isinstance(found, (Flow, Script)) else None


def workflows_in(module: types.ModuleType) -> list[Workflow]:
    """Every Flow, script and ``@stemd.workflow`` class bound to a name at the top level
    of ``module``, in the order the module defines them."""
    return [wf for value in vars(module).values() if (wf := _workflow(value)) is not None]


_app_dir: list[Path] = []  # the app directory in use, for messages


def use_app_dir(app_dir: str | os.PathLike[str] | None = None, *, key: str = "app_dir") -> Path:
    """Make the modules in ``app_dir`` (``None``: the working directory) importable: its
    absolute path goes first on ``sys.path``. Return that path.

    Raises:
        ConfigError: ``app_dir`` is not a directory (the message starts with ``key``).
    """
    path = Path(os.getcwd() if app_dir is None else app_dir).absolute()
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a directory")
    entry = str(path)
    if sys.path[:1] != [entry]:
        sys.path.insert(0, entry)
        importlib.invalidate_caches()
    _app_dir[:] = [path]
    return path


def _import(key: str, name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        hint = ""
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):  # not one of its imports
            where = f"the app directory {_app_dir[0]} or " if _app_dir else ""
            hint = (
                f" (looked in {where}the installed packages: start stemd in the directory "
                "that holds it, give --app-dir (app_dir, STEMD_APP_DIR), or install it)"
            )
        raise ConfigError(f"{key}: cannot import {name!r}: {exc}{hint}") from None
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import {name!r}: {exc}") from None
    except Exception as exc:  # the module itself raised while importing
        raise ConfigError(f"{key}: importing {name!r} raised {type(exc).__name__}: {exc}") from None


def _from_object(key: str, obj: Any) -> list[Workflow]:
    """Workflows from what an entry point names: a module, a workflow, or a list of them."""
    if isinstance(obj, types.ModuleType):
        return workflows_in(obj)
    single = _workflow(obj)
    if single is not None:
        return [single]
    if isinstance(obj, (list, tuple)):
        found = [_workflow(w) for w in obj]
        if all(wf is not None for wf in found):
            return [wf for wf in found if wf is not None]
    raise ConfigError(f"{key}: names {obj!r}, which is neither a module nor a workflow")


def load_workflows(
    modules: Iterable[str], *, use_entry_points: bool = True
) -> tuple[list[Workflow], list[str]]:
    """Import ``modules`` and, when ``use_entry_points``, the ``stemd.workflows`` entry points.

    Returns:
        The workflows found (each once, in load order) and where they came from (module
        names and ``entry point NAME`` strings), for logging.

    Raises:
        ConfigError: a module does not import, or two different workflows share a name.
    """
    found: list[Workflow] = []
    sources: list[str] = []
    for i, name in enumerate(modules):
        found += workflows_in(_import(f"modules[{i}]", name))
        sources.append(name)
    if use_entry_points:
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            key = f"entry point {ep.name!r} ({ep.value})"
            try:
                obj = ep.load()
            except Exception as exc:
                raise ConfigError(f"{key}: {type(exc).__name__}: {exc}") from None
            found += _from_object(key, obj)
            sources.append(f"entry point {ep.name}")
    unique: dict[str, Workflow] = {}
    for wf in found:
        other = unique.get(wf.name)
        if other is not None and other is not wf:
            raise ConfigError(f"modules: two different workflows are named {wf.name!r}")
        unique[wf.name] = wf
    return list(unique.values()), sources


def import_object(key: str, spec: str) -> Callable[..., Any]:
    """The callable named by ``"module:attribute"``."""
    module_name, _, attr = spec.partition(":")
    module = _import(key, module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]
