"""Encryption at rest: with a keyring configured, no plaintext reaches the store's bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import stemd
from stemd._codec import CodecChain, Keyring
from stemd._config import load_config
from stemd._errors import PayloadError

if TYPE_CHECKING:
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

SECRETS = (b"PARAM-4f1c-secret", b"RESULT-9a7e-secret", b"EVENT-23bd-secret", b"CHILD-77aa-secret")

vault = stemd.Flow("vault.flow")


@vault.step("open")
async def open_step(ctx: stemd.FlowContext) -> str:
    """Returns a result holding the secret card number."""
    return "RESULT-9a7e-secret:" + ctx.params["card"]


@vault.step("approve")
async def approve(ctx: stemd.FlowContext) -> str:
    """Waits for approval and for a child holding a secret note; returns the approver."""
    payload = await ctx.wait_for_event("vault.approve")
    child = await ctx.start_child(vault_child, {"note": "CHILD-77aa-secret"})
    await ctx.wait_child(child)
    return str(payload["who"])


@stemd.script("vault.child")
async def vault_child(ctx: stemd.ScriptContext, params: dict[str, str]) -> str:
    """Returns its secret note."""
    return params["note"]


def _chain() -> CodecChain:
    return CodecChain(
        compression="zstd", compress_threshold=0, keyring=Keyring({"k1": os.urandom(32)}, "k1")
    )


async def _run_vault(store: str, codec: CodecChain) -> stemd.RunState:
    async with stemd.App(store=store, workflows=[vault, vault_child], codec=codec) as app:
        run_id = await app.start_workflow(vault, {"card": "PARAM-4f1c-secret"})
        for _ in range(200):
            if await app.runs_waiting_on("vault.approve"):
                break
            result = await app.wait_for_completion(run_id, timeout=0.02)
        assert await app.emit("vault.approve", {"who": "EVENT-23bd-secret"}) == 1
        result = await app.wait_for_completion(run_id, timeout=10)
        assert result.is_completed, result
        assert result.state is not None
        assert result.state.params == {"card": "PARAM-4f1c-secret"}
        return result.state


def _raw_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


async def test_encrypted_sqlite_file_holds_no_plaintext(tmp_path: Path) -> None:
    """Params, results, event payloads and child params are unreadable in the SQLite files."""
    codec = _chain()
    db = tmp_path / "db"
    db.mkdir()
    state = await _run_vault(f"sqlite:///{db}/stemd.db", codec)
    assert state.result == "EVENT-23bd-secret"
    raw = _raw_bytes(db)
    assert b"vault.flow" in raw  # the file was really read: names are not secret
    for secret in SECRETS:
        assert secret not in raw

    async with stemd.App(store=f"sqlite:///{db}/stemd.db", workers=False) as reader:
        with pytest.raises(PayloadError, match="no keys"):
            await reader.get_run(state.run_id)
    async with stemd.App(store=f"sqlite:///{db}/stemd.db", workers=False, codec=codec) as r2:
        again = await r2.get_run(state.run_id)
        assert again is not None
        assert again.checkpoints["open"].startswith("RESULT-9a7e")


async def test_encrypted_kv_values_hold_no_plaintext(nats: NatsServer) -> None:
    """On JetStream KV, the server's store directory holds no plaintext of any value."""
    state = await _run_vault(nats.url, _chain())
    assert state.result == "EVENT-23bd-secret"
    raw = _raw_bytes(Path(nats.store_dir))
    assert b"vault" in raw
    for secret in SECRETS:
        assert secret not in raw


async def test_config_builds_daemon_and_per_workflow_codecs(tmp_path: Path) -> None:
    """[codec] and [workflow_codecs] configure the chains; a workflow override applies to it
    alone and still reads the daemon's encrypted values."""
    key = tmp_path / "k1.key"
    key.write_bytes(os.urandom(32))
    config_file = tmp_path / "stemd.toml"
    config_file.write_text(
        f"""
store = "sqlite:///{tmp_path}/s.db"
[codec]
compression = "gzip"
compress_threshold = 0
max_payload = 4096
[codec.encryption]
active = "k1"
keys = {{ k1 = "file:{key}" }}
[workflow_codecs."vault.child"]
format = "msgpack"
encrypt = false
"""
    )
    config = load_config(config_file, environ={})
    main, per = config.build_codecs()
    assert main.id == "json+gzip+aesgcm"
    assert per["vault.child"].id == "msgpack+gzip"
    sealed = main.encode({"x": 1})
    assert per["vault.child"].decode(sealed) == {"x": 1}
    with pytest.raises(PayloadError, match="4096-byte"):
        main.encode(os.urandom(6000).hex())

    async with stemd.App(
        store=config.store, workflows=[vault, vault_child], codec=main, workflow_codecs=per
    ) as app:
        child = await app.start_workflow(vault_child, {"note": "plain"})
        assert (await app.wait_for_completion(child, timeout=10)).value == "plain"
        parent = await app.start_workflow(vault, {"card": "c"})
        child_rec = await app.store.get_run(child)
        parent_rec = await app.store.get_run(parent)
        assert child_rec is not None
        assert parent_rec is not None
        assert child_rec.params.startswith(b"\xffS1mg\x00")  # msgpack, gzip, not sealed
        assert parent_rec.params.startswith(b"\xffS1jg\x02k1")  # json, gzip, sealed with k1


async def test_oversized_params_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    """A start whose params exceed the payload limit raises PayloadError and writes nothing."""
    codec = CodecChain(max_size=1024)
    async with stemd.App(store=f"sqlite:///{tmp_path}/s.db", workflows=[vault], codec=codec) as app:
        with pytest.raises(PayloadError, match="1024-byte"):
            await app.start_workflow(vault, {"card": "x" * 5000}, run_id="too-big")
        assert await app.get_run("too-big") is None
        assert await app.list_runs() == []
