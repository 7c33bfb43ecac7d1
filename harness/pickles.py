"""Hostile pickles for the checkpoint loader's tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class ShellPayload:
    """What a hostile checkpoint holds: unpickling it would run a shell command that creates
    ``marker``, so a test can tell whether it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))
