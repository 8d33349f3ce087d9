"""Chaos tests: real processes killed, paused and restarted under load.

Every scenario runs in a short form by default (part of the normal ``pytest`` run, a few
seconds to a minute each). ``STEMD_CHAOS_LONG=1`` runs the long form: more runs, at
least 20 kill cycles, longer horizons (see docs/explanation/guarantees.md)::

    STEMD_CHAOS_LONG=1 pytest tests/chaos -s

Each scenario draws its random choices (which runs sleep, wait, fail or start children;
when to kill) from a seed printed in its failure messages; ``STEMD_CHAOS_SEED=N`` replays
one. A scenario that needs NATS and cannot start nats-server fails.
"""
