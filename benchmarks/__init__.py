"""The repository's benchmarks; ``python -m benchmarks`` lists them and runs one by name.

Each is also a script of its own (``python benchmarks/<name>_bench.py --help``). They write
their figures to docs/ and describe the machine with ``cosmicai.bench.machine.machine()``;
shared helpers come from the ``harness`` package, never from ``tests``.
"""
