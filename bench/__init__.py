"""carbonlink's benchmarks: the gateway measured against the limits of its own stack.

Each module measures one thing and compares it with the limit below it (bare gRPC, raw
SQLite, the pymerkle library); :mod:`bench.runner` runs them all, prints a table and
writes JSON.  ``carbonlink bench`` is the command line (``gateway.cli_bench``).

Timings are wall-clock floats; nothing here asserts a speed: the numbers are recorded in
``docs/performance.md``, never checked by tests.
"""
