"""Fuzz and property tests (hypothesis). Short forms by default; ``STEMD_CHAOS_LONG=1``
runs the long forms (more than 10,000 wire requests, thousands of engine examples), as
for tests/chaos. Nothing is kept between runs (no hypothesis database)."""
