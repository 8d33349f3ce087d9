"""A user signup script: checkpoints, durable sleeps and a polling loop.

Start it with params ``"ana@example.com"``. Each ``ctx.step("poll", ...)`` of the loop is
its own checkpoint (``poll``, ``poll#1``, ``poll#2`` ...), so a resumed run skips the polls
already made and sleeps only the sleeps not yet slept.
"""

from __future__ import annotations

from typing import Any

import stemd


@stemd.step(name="create-user")
async def create_user(email: str) -> dict[str, Any]:
    """A checkpoint: runs once per run, whatever crashes."""
    return {"id": f"user:{email}", "email": email}


async def check_verified(user_id: str, attempt: int) -> bool:
    """Stands for a call to an email service: the address is verified at the third poll."""
    return attempt >= 2


async def send_welcome(user: dict[str, Any], *, context: stemd.StepContext) -> str:
    """A step that receives its StepContext: the idempotency key to give a mail service."""
    return context.idempotency_key("welcome")


@stemd.script("user.signup")
async def signup(ctx: stemd.ScriptContext, email: str) -> dict[str, Any]:
    user = await create_user(email)
    await ctx.sleep(0.2)  # durable: the run is suspended, the worker freed
    verified = False
    for attempt in range(10):
        verified = await ctx.step("poll", check_verified, user["id"], attempt)
        if verified:
            break
        await ctx.sleep(0.1)
    key = await ctx.step("welcome", send_welcome, user) if verified else None
    return {"userId": user["id"], "verified": verified, "welcomeKey": key}
