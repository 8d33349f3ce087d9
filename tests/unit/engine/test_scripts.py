"""Scripts: the code is the plan; every checkpoint replays without re-running (§1.2)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import msgspec
import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


class User(msgspec.Struct):
    id: str
    email: str


class SignupParams(msgspec.Struct):
    email: str
    plan: str = "free"


@dataclasses.dataclass
class Order:
    sku: str
    qty: int


calls: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


@stemd.step(name="create-user")
async def create_user(email: str) -> User:
    """Counts its call; returns the user of ``email``."""
    calls["create-user"] += 1
    return User(id=f"user:{email}", email=email)


@stemd.step
async def send_welcome(user: User) -> str:
    """Counts its call; returns a greeting."""
    calls["send_welcome"] += 1
    return f"welcome {user.id}"


async def verify(user: User) -> bool:
    """Count the call; whether the user's email is at example.com."""
    calls["verify"] += 1
    return user.email.endswith("@example.com")


@stemd.script("user.signup")
async def signup(ctx: stemd.ScriptContext, params: SignupParams) -> dict[str, Any]:
    """Creates a user, sleeps a minute, verifies and greets them."""
    calls["body"] += 1
    user = await create_user(params.email)
    assert isinstance(user, User)  # replayed values are decoded into the return type
    await ctx.sleep(60)
    ok = await ctx.step("verify", verify, user)
    greeting = await send_welcome(user)
    return {"userId": user.id, "verified": ok, "greeting": greeting, "plan": params.plan}


async def test_checkpoints_replay_without_running_again() -> None:
    """On re-entry every recorded checkpoint returns its stored value without running."""
    clock = ManualClock()
    async with open_app(signup, clock=clock) as app:
        run_id = await app.start_workflow(signup, params={"email": "ana@example.com"})
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.checkpoints == {
            "create-user": {"id": "user:ana@example.com", "email": "ana@example.com"}
        }
        clock.advance(60)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == {
        "userId": "user:ana@example.com",
        "verified": True,
        "greeting": "welcome user:ana@example.com",
        "plan": "free",
    }
    assert calls == {"body": 2, "create-user": 1, "verify": 1, "send_welcome": 1}
    assert result.state is not None
    assert list(result.state.checkpoints) == ["create-user", "verify", "send_welcome"]


async def test_repeated_steps_are_numbered_by_occurrence() -> None:
    """The second and third ctx.step("poll") of a run are checkpoints poll#1 and poll#2."""
    seen: list[str] = []

    async def poll(n: int, *, context: stemd.StepContext) -> int:
        seen.append(context.step_name)
        return n * n

    @stemd.script("poller.script")
    async def poller(ctx: stemd.ScriptContext) -> list[int]:
        out = [await ctx.step("poll", poll, n) for n in range(3)]
        await ctx.sleep(1)
        out.append(await ctx.step("poll", poll, 3))
        return out

    clock = ManualClock()
    async with open_app(poller, clock=clock) as app:
        run_id = await app.start_workflow(poller)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(1)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == [0, 1, 4, 9]
    assert result.state is not None
    assert result.state.checkpoints == {"poll": 0, "poll#1": 1, "poll#2": 4, "poll#3": 9}
    assert seen == ["poll", "poll#1", "poll#2", "poll#3"]


async def test_step_function_is_a_plain_coroutine_outside_a_run() -> None:
    """A @stemd.step function called outside any run just runs (and records nothing)."""
    user = await create_user("bob@example.com")
    assert user == User(id="user:bob@example.com", email="bob@example.com")
    assert await create_user("bob@example.com") == user
    assert calls["create-user"] == 2


async def test_step_name_defaults_to_the_function_name() -> None:
    """@stemd.step without a name records its checkpoint under the function's name."""

    @stemd.step
    async def compute(x: int) -> int:
        return x + 1

    @stemd.step(retry=stemd.Retry(max_attempts=2))
    async def compute_more(x: int) -> int:
        return x + 2

    @stemd.script("names.script")
    async def names(ctx: stemd.ScriptContext) -> int:
        return await compute(1) + await compute_more(1)

    async with open_app(names) as app:
        result = await app.wait_for_completion(await app.start_workflow(names), timeout=5)
    assert result.value == 5
    assert result.state is not None
    assert result.state.checkpoints == {"compute": 2, "compute_more": 3}


async def test_step_context_is_injected_and_never_stored() -> None:
    """A keyword-only `context` parameter gets a StepContext, which is never stored."""
    contexts: list[dict[str, Any]] = []

    @stemd.step(name="charge")
    async def charge(amount: int, *, context: stemd.StepContext) -> dict[str, Any]:
        contexts.append(
            {
                "run_id": context.run_id,
                "workflow": context.workflow,
                "step_name": context.step_name,
                "step_index": context.step_index,
                "attempt": context.attempt,
                "key": context.idempotency_key(),
            }
        )
        return {"charged": amount}

    async def refund(amount: int, *, context: stemd.StepContext) -> int:
        contexts.append({"step_name": context.step_name, "step_index": context.step_index})
        return -amount

    @stemd.script("ctx.script")
    async def billing(ctx: stemd.ScriptContext) -> Any:
        first = await charge(5)
        back = await ctx.step("refund", refund, 5)
        again = await charge(7)
        return [first, back, again]

    async with open_app(billing) as app:
        run_id = await app.start_workflow(billing, run_id="bill-1")
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == [{"charged": 5}, -5, {"charged": 7}]
    assert result.state is not None
    assert result.state.checkpoints == {
        "charge": {"charged": 5},
        "refund": -5,
        "charge#1": {"charged": 7},
    }
    assert contexts[0] == {
        "run_id": "bill-1",
        "workflow": "ctx.script",
        "step_name": "charge",
        "step_index": 0,
        "attempt": 1,
        "key": contexts[0]["key"],
    }
    assert contexts[1] == {"step_name": "refund", "step_index": 1}
    assert contexts[2]["step_name"] == "charge#1"
    assert contexts[2]["step_index"] == 2
    assert contexts[0]["key"] != contexts[2]["key"]


async def test_step_context_key_is_stable_across_retries() -> None:
    """StepContext.idempotency_key is the same on every attempt of a step."""
    keys: list[tuple[int, str]] = []

    async def flaky(*, context: stemd.StepContext) -> str:
        keys.append((context.attempt, context.idempotency_key("pay")))
        if context.attempt < 3:
            raise RuntimeError("try again")
        return "paid"

    @stemd.script("retry-key.script")
    async def pay(ctx: stemd.ScriptContext) -> str:
        return await ctx.step(
            "pay", flaky, retry=stemd.Retry(max_attempts=3, backoff=1, jitter=False)
        )

    clock = ManualClock()
    async with open_app(pay, clock=clock) as app:
        run_id = await app.start_workflow(pay)
        for attempt, backoff in ((1, 1), (2, 2)):
            await wait_until(_attempts, keys, attempt, what=f"attempt {attempt}")
            await wait_status(app, run_id, RunStatus.SUSPENDED)
            clock.advance(backoff)
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "paid"
    assert [a for a, _ in keys] == [1, 2, 3]
    assert len({k for _, k in keys}) == 1


async def _attempts(keys: list[tuple[int, str]], n: int) -> bool:
    return len(keys) >= n


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"email": "a@example.com"}, "a@example.com/free"),
        ({"email": "b@example.com", "plan": "pro"}, "b@example.com/pro"),
    ],
)
async def test_script_params_decode_into_a_struct(params: Any, expected: str) -> None:
    """A script whose params are annotated with a Struct receives them decoded."""

    @stemd.script("struct-params.script")
    async def typed(ctx: stemd.ScriptContext, p: SignupParams) -> str:
        assert isinstance(p, SignupParams)
        return f"{p.email}/{p.plan}"

    async with open_app(typed) as app:
        result = await app.wait_for_completion(
            await app.start_workflow(typed, params=params), timeout=5
        )
    assert result.value == expected


async def test_script_params_decode_into_a_dataclass() -> None:
    """A dataclass annotation works like a Struct."""

    @stemd.script("dc-params.script")
    async def typed(ctx: stemd.ScriptContext, order: Order) -> int:
        assert isinstance(order, Order)
        return order.qty * 2

    async with open_app(typed) as app:
        run_id = await app.start_workflow(typed, params=Order(sku="x", qty=4))
        assert (await app.wait_for_completion(run_id, timeout=5)).value == 8


async def test_script_params_that_do_not_decode_are_refused_at_start() -> None:
    """Params that do not fit the annotated type are refused at start with a PayloadError,
    and nothing is written."""

    @stemd.script("bad-params.script")
    async def typed(ctx: stemd.ScriptContext, p: SignupParams) -> str:
        return p.email

    async with open_app(typed) as app:
        with pytest.raises(stemd.PayloadError, match=r"bad-params\.script"):
            await app.start_workflow(typed, params={"mail": "oops"})
        with pytest.raises(stemd.PayloadError):
            await app.start_workflow("bad-params.script", params=None)
        assert await app.list_runs() == []


async def test_script_with_plain_params_and_without_params() -> None:
    """An unannotated second parameter gets plain values; a script may take none."""

    @stemd.script("plain.script")
    async def plain(ctx: stemd.ScriptContext, params):  # type: ignore[no-untyped-def]
        return {"got": params, "same": ctx.params}

    @stemd.script("none.script")
    async def none(ctx: stemd.ScriptContext) -> str:
        return "no params"

    async with open_app(plain, none) as app:
        one = await app.start_workflow(plain, params={"a": [1, 2]})
        two = await app.start_workflow(none, params={"ignored": True})
        assert (await app.wait_for_completion(one, timeout=5)).value == {
            "got": {"a": [1, 2]},
            "same": {"a": [1, 2]},
        }
        assert (await app.wait_for_completion(two, timeout=5)).value == "no params"


async def test_script_context_fields() -> None:
    """ScriptContext has the run id, the workflow and a stable idempotency key."""
    seen: list[tuple[str, str, str]] = []

    @stemd.script("fields.script")
    async def fields(ctx: stemd.ScriptContext) -> None:
        seen.append((ctx.run_id, ctx.workflow, ctx.idempotency_key("k")))
        await ctx.sleep(1)

    clock = ManualClock()
    async with open_app(fields, clock=clock) as app:
        run_id = await app.start_workflow(fields, run_id="fields-1")
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(1)
        await app.wait_for_completion(run_id, timeout=5)
    assert len(seen) == 2
    assert seen[0] == seen[1]
    assert seen[0][:2] == ("fields-1", "fields.script")


async def test_script_error_fails_the_run() -> None:
    """An exception escaping the script body fails the run with its type and message."""

    @stemd.script("raise.script")
    async def boom(ctx: stemd.ScriptContext) -> None:
        await create_user("x@example.com")
        raise LookupError("nothing here")

    async with open_app(boom) as app:
        result = await app.wait_for_completion(await app.start_workflow(boom), timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert (result.error.type, result.error.message) == ("LookupError", "nothing here")
    assert result.state is not None
    assert "create-user" in result.state.checkpoints


async def test_failing_step_without_retry_fails_the_run() -> None:
    """A checkpointed step that raises (no retry) fails the run, naming the step."""

    async def explode() -> None:
        raise ZeroDivisionError("divided")

    @stemd.script("step-raise.script")
    async def body(ctx: stemd.ScriptContext) -> None:
        await ctx.step("explode", explode)

    async with open_app(body) as app:
        result = await app.wait_for_completion(await app.start_workflow(body), timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert (result.error.type, result.error.step) == ("ZeroDivisionError", "explode")


async def test_script_result_that_does_not_encode_fails_the_run() -> None:
    """A final result msgspec cannot encode fails the run with a PayloadError."""

    @stemd.script("unencodable.script")
    async def body(ctx: stemd.ScriptContext) -> object:
        return object()

    async with open_app(body) as app:
        result = await app.wait_for_completion(await app.start_workflow(body), timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "PayloadError"


async def test_step_called_inside_a_step_is_not_a_separate_checkpoint() -> None:
    """A @stemd.step called from within another step's function runs as a plain call."""

    async def outer() -> str:
        user = await create_user("in@example.com")
        return user.id

    @stemd.script("nested.script")
    async def nested(ctx: stemd.ScriptContext) -> str:
        return await ctx.step("outer", outer)

    async with open_app(nested) as app:
        result = await app.wait_for_completion(await app.start_workflow(nested), timeout=5)
    assert result.value == "user:in@example.com"
    assert result.state is not None
    assert result.state.checkpoints == {"outer": "user:in@example.com"}


async def test_script_requires_an_async_function_with_a_context() -> None:
    """@stemd.script refuses a plain function or one without parameters."""
    with pytest.raises(TypeError):

        @stemd.script("sync.script")
        def sync(ctx: stemd.ScriptContext) -> None:  # type: ignore[type-var]
            return None

    with pytest.raises(TypeError):

        @stemd.script("noargs.script")
        async def noargs() -> None:
            return None

    with pytest.raises(ValueError, match="step name 'bad#name' must not contain"):

        @stemd.step(name="bad#name")
        async def bad() -> None:
            return None


@pytest.mark.parametrize("name", ["poll#1", "a@b", ""])
async def test_ctx_step_refuses_reserved_names(name: str) -> None:
    """ctx.step refuses empty names and names with '#' or '@' (the run fails, nothing clashes)."""

    async def one() -> int:
        return 1

    @stemd.script(f"reserved-{len(name)}.script")
    async def body(ctx: stemd.ScriptContext) -> int:
        await ctx.step("poll", one)
        return await ctx.step(name, one)

    async with open_app(body) as app:
        result = await app.wait_for_completion(await app.start_workflow(body), timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "ValueError"
    assert result.state is not None
    assert result.state.checkpoints == {"poll": 1}
