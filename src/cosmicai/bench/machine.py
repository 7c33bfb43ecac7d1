"""A description of the machine a benchmark ran on, written beside its figures."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# CPU features that change which kernels ONNX Runtime and torch pick (INT8 dot products,
# bf16 and AMX tiles): a figure means little without them.
_FEATURE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "unknown", set[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model, [flag for flag in _FEATURE_FLAGS if flag in flags]


def _version(command: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode == 0:
            return done.stdout.strip() or None
    return None


def machine(
    *, tools: dict[str, list[str]] | None = None, note: str | None = None
) -> dict[str, Any]:
    """CPU, OS, Python and library versions, load at start; ``tools`` adds ``name: version``
    lines from commands (``{"nftables": ["nft", "--version"]}``)."""
    model, features = _cpuinfo()
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "cpu_features": features,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "architecture": platform.machine(),
        "kernel": platform.release(),
        "open_file_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    for module in ("numpy", "onnxruntime", "torch"):
        with contextlib.suppress(ImportError):
            info[module] = __import__(module).__version__
    for name, command in (tools or {}).items():
        info[name] = _version(command) or "unknown"
    if note:
        info["note"] = note
    return info
