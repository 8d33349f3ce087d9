"""The public surface: every name of the contract is importable from `stemd`."""

from __future__ import annotations

import msgspec
import pytest

import stemd
from tests.helpers import RUN_STATE_CONTRACT_FIELDS

CONTRACT_NAMES = [
    "App",
    "CancellationPolicy",
    "ChildFailed",
    "EventTimeout",
    "Flow",
    "FlowContext",
    "PayloadError",
    "Retry",
    "RunState",
    "RunStatus",
    "ScriptContext",
    "StemError",
    "StepContext",
    "UnknownWorkflow",
    "WorkflowResult",
    "script",
    "step",
]


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_contract_names_are_exported(name: str) -> None:
    """Each name the contract uses is an attribute of `stemd` and listed in __all__."""
    assert hasattr(stemd, name)
    assert name in stemd.__all__


def test_every_error_derives_from_stem_error() -> None:
    """Every exception class stemd exports is a StemError."""
    errors = [
        obj
        for name in stemd.__all__
        if isinstance(obj := getattr(stemd, name), type) and issubclass(obj, BaseException)
    ]
    assert len(errors) >= 10
    for error in errors:
        assert issubclass(error, stemd.StemError), error


def test_run_status_values() -> None:
    """RunStatus has exactly the six statuses, lower-case, three of them terminal."""
    assert [s.name for s in stemd.RunStatus] == [
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    ]
    assert stemd.RunStatus.COMPLETED.value == "completed"
    assert {s for s in stemd.RunStatus if s.is_terminal} == {
        stemd.RunStatus.COMPLETED,
        stemd.RunStatus.FAILED,
        stemd.RunStatus.CANCELLED,
    }


def test_run_state_fields() -> None:
    """RunState is a msgspec Struct with every field the contract names."""
    assert issubclass(stemd.RunState, msgspec.Struct)
    fields = set(stemd.RunState.__struct_fields__)
    assert fields >= RUN_STATE_CONTRACT_FIELDS


def test_workflow_result_fields_and_properties() -> None:
    """WorkflowResult has the contract's fields and status properties."""
    result = stemd.WorkflowResult(run_id="r", status=stemd.RunStatus.FAILED)
    assert set(stemd.WorkflowResult.__struct_fields__) >= {
        "run_id",
        "status",
        "value",
        "error",
        "state",
        "timed_out",
    }
    assert (result.is_completed, result.is_failed, result.is_cancelled) == (False, True, False)
    assert result.timed_out is False
