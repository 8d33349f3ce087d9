"""The engine: advance one run one slice against a Store."""
