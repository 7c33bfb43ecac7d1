"""Peak memory as a rank reports it: its own process's, whoever started it."""

from __future__ import annotations


def test_a_worker_reports_its_own_peak_memory_not_its_parents() -> None:
    import subprocess
    import sys

    # GIVEN a parent process whose memory peaked high (as the sweep's, which loads the model
    # once to check it, or a CLI that rendered data)
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    # WHEN a fresh worker process measures its peak
    code = "from cosmicai.pipeline import peak_rss_mb; print(peak_rss_mb())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    # THEN it is its own (a Python with numpy and ONNX Runtime imported), not the parent's
    assert float(done.stdout) < 300, done.stdout
    del ballast
