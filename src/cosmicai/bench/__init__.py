"""Benchmarks that ship with the package (``cosmicai bench ...``) and what they share.

Every benchmark records the machine it ran on with :func:`cosmicai.bench.machine.machine`, so
figures written to ``docs/`` can always be read against the hardware that produced them.
"""
