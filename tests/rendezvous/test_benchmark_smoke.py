"""The benchmark script still runs (at a tiny size); its figures live in the docs, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_benchmark_runs_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    tiny = ["--pairs", "20", "--silent", "2", "--garbage", "3", "--world", "5", "--repeat", "1"]
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "rendezvous_bench.py"),
            *tiny,
            "--sweep",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=110,
    )
    figures = json.loads(out.with_suffix(".json").read_text())
    assert figures["pairs"]["pairs"] == 20
    assert figures["world"]["all_identical"] is True
    assert "| scenario | target | result |" in out.read_text()
