"""Programs the tests need from the operating system, installed with apt where missing."""

from __future__ import annotations

import os
import shutil
import subprocess

#: apt can be slow on a cold mirror; a test waits this long per apt step before skipping.
INSTALL_TIMEOUT_S = 600


def ensure_program(names: tuple[str, ...], package: str) -> tuple[str | None, str | None]:
    """(path of the first of ``names`` on PATH, None), installing ``package`` with apt-get
    when none is there; (None, why not) when it cannot be had."""
    found = next((p for p in map(shutil.which, names) if p), None)
    if found:
        return found, None
    if shutil.which("apt-get") is None:
        return None, f"{names[0]} is not installed and apt-get is not available to install it"
    if os.geteuid() != 0:
        return None, f"{names[0]} is not installed and installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"installing {package} failed: {' '.join(argv)}: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, f"installing {package} failed: {' '.join(argv)}: {' / '.join(tail)}"
    found = next((p for p in map(shutil.which, names) if p), None)
    if found is None:
        return None, f"{package} was installed but {names[0]} is still not on PATH"
    return found, None
