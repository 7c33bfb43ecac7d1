"""Where a run keeps its objects: every key below the run's prefix, and attempt ids.

The bottom of a run's floor: the request checks that its longest key fits S3's limit, and the
stages, the reduction and the runners take every key from :class:`RunLayout`. The layout, as
the docs describe it::

    request.json  plan.json  manifest.json
    ranks/<rank:05d>/result.json
    ranks/<rank:05d>/predictions-<attempt>.safetensors
    comm/  reduced.json
    summary.json  summary.md  predictions.csv  plots/<name>.png
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from cosmicai.storage import join_key

#: Length of an attempt id (see :func:`new_attempt`).
ATTEMPT_LENGTH = 18
_PREDICTIONS_FILE = re.compile(rf"predictions-([0-9a-f]{{{ATTEMPT_LENGTH}}})\.safetensors")


def new_attempt() -> str:
    """An id for one attempt of a rank: milliseconds since the epoch then random digits, in
    hex, so attempts sort by when they started (Summarize tidies away the older ones)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunLayout:
    """The object keys of one run, below ``run_prefix`` (which ends with ``/``)."""

    run_prefix: str

    def key(self, name: str) -> str:
        return join_key(self.run_prefix, name)

    @property
    def request(self) -> str:
        return self.key("request.json")

    @property
    def plan(self) -> str:
        return self.key("plan.json")

    @property
    def manifest(self) -> str:
        return self.key("manifest.json")

    def rank_prefix(self, rank: int) -> str:
        return self.key(f"ranks/{rank:05d}/")

    def rank_result(self, rank: int) -> str:
        return join_key(self.rank_prefix(rank), "result.json")

    def predictions(self, rank: int, attempt: str) -> str:
        return join_key(self.rank_prefix(rank), f"predictions-{attempt}.safetensors")

    def predictions_attempt(self, rank: int, key: str) -> str | None:
        """The attempt whose predictions file ``key`` is (None for any other key)."""
        prefix = self.rank_prefix(rank)
        if not key.startswith(prefix):
            return None
        match = _PREDICTIONS_FILE.fullmatch(key[len(prefix) :])
        return match.group(1) if match else None

    @property
    def comm_prefix(self) -> str:
        return self.key("comm/")

    @property
    def reduced(self) -> str:
        return self.key("reduced.json")

    @property
    def summary_json(self) -> str:
        return self.key("summary.json")

    @property
    def summary_md(self) -> str:
        return self.key("summary.md")

    @property
    def predictions_csv(self) -> str:
        return self.key("predictions.csv")

    def plot(self, name: str) -> str:
        return self.key(f"plots/{name}")
