"""``python -m benchmarks``: list the benchmarks; ``python -m benchmarks NAME [ARGS...]``: run
one, ARGS going to its own command line (``python -m benchmarks comm --quick``)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Benchmark(NamedTuple):
    module: str
    what: str


#: Name → module (imported only when run: each pulls in its own heavy dependencies).
BENCHMARKS = {
    "rendezvous": Benchmark(
        "benchmarks.rendezvous_bench",
        "rendezvous server on loopback: TCPunch pairs, junk clients, one world "
        "(docs/rendezvous-benchmark.md)",
    ),
    "comm": Benchmark(
        "benchmarks.comm_bench",
        "communicator collectives over loopback TCP and the object store, one link's "
        "throughput (docs/comm-benchmark.md)",
    ),
    "punch": Benchmark(
        "benchmarks.punch_bench",
        "hole-punched link setup through namespace NATs; needs root (docs/punch-benchmark.md)",
    ),
}


def listing() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["usage: python -m benchmarks NAME [ARGS...]   (ARGS: NAME's own; try --help)", ""]
    lines += [f"  {name:<{width}}  {bench.what}" for name, bench in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] in ("-h", "--help", "list"):
        print(listing())
        return 0
    name, rest = words[0], words[1:]
    if name not in BENCHMARKS:
        print(f"no benchmark named {name!r}\n\n{listing()}", file=sys.stderr)
        return 2
    entry: Callable[[list[str]], int | None] = importlib.import_module(BENCHMARKS[name].module).main
    return entry(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
