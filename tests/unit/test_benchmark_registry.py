"""``python -m benchmarks`` names every benchmark script, and each one it names can be run."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from benchmarks.__main__ import BENCHMARKS

ROOT = Path(__file__).parents[2]


def test_the_registry_lists_every_benchmark_script() -> None:
    scripts = {path.stem for path in (ROOT / "benchmarks").glob("*_bench.py")}
    assert {entry.module.rsplit(".", 1)[1] for entry in BENCHMARKS.values()} == scripts
    for entry in BENCHMARKS.values():
        assert callable(importlib.import_module(entry.module).main), entry.module


def test_an_unknown_name_is_refused_with_the_list() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "no-such-bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no benchmark named 'no-such-bench'" in done.stderr
    for name in BENCHMARKS:
        assert f"  {name} " in done.stderr
