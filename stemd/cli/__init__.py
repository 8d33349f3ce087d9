"""The ``stemd`` command line."""
