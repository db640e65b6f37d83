"""ksampling's benchmarks: steps against quality on exact problems and a trained network.

Run from the repository root::

    python -m benchmarks            # the default: a couple of minutes at most on 2 CPU cores
    python -m benchmarks --quick    # the CI smoke test (seconds)
    python -m benchmarks --full     # the full CPU run committed under benchmarks/results/

See ``python -m benchmarks --help`` and ``docs/benchmarks.md``. The speed suite lives in
``benchmarks/test_speed.py`` (``pytest benchmarks/ --benchmark-only``).
"""
