"""Counters of the rendezvous server, served as JSON on /healthz and Prometheus text on /metrics.

Counters are declared once with their help text, so a misspelt name fails loudly instead of
counting into a series nobody reads. Gauges are read from the server's state when rendered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PREFIX = "cosmicai_rendezvous_"

COUNTERS: dict[str, str] = {
    "connections_total": "Connections accepted.",
    "connections_rejected_total": "Connections closed at once because the server was full.",
    "sessions_total": "Connections by the protocol their first byte chose.",
    "pairings_total": "Pairs matched.",
    "worlds_completed_total": "Worlds whose every rank registered and received the world.",
    "worlds_failed_total": "Worlds that ended without completing, by reason.",
    "timeouts_total": "Deadlines that passed, by what was awaited.",
    "auth_failures_total": "Native clients refused for their credentials, by reason.",
    "protocol_errors_total": "Connections closed for breaking a protocol, by fault.",
    "limit_refusals_total": "Requests refused because a limit was reached.",
    "dead_waiters_dropped_total": "Waiting entries found closed when a partner arrived.",
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, int]] = {name: {} for name in COUNTERS}
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        series = self._counters[name]
        key = tuple(sorted(labels.items()))
        series[key] = series.get(key, 0) + amount

    def value(self, name: str, **labels: str) -> int:
        """One counter series (0 if never counted); labels omitted means summed over them."""
        series = self._counters[name]
        if not labels:
            return sum(series.values())
        return series.get(tuple(sorted(labels.items())), 0)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._gauges[name] = (help_text, read)

    def snapshot(self) -> dict[str, Any]:
        """Every counter and gauge, labelled series as {"label=value,...": count}."""
        result: dict[str, Any] = {}
        for name, series in self._counters.items():
            if all(not key for key in series):
                result[name] = series.get((), 0)
            else:
                result[name] = {
                    ",".join(f"{k}={v}" for k, v in key) or "": count
                    for key, count in sorted(series.items())
                }
        for name, (_, read) in self._gauges.items():
            result[name] = read()
        return result

    def prometheus(self) -> str:
        lines: list[str] = []
        for name, series in self._counters.items():
            full = PREFIX + name
            lines.append(f"# HELP {full} {COUNTERS[name]}")
            lines.append(f"# TYPE {full} counter")
            if not series:
                lines.append(f"{full} 0")
            for key, count in sorted(series.items()):
                lines.append(f"{full}{_labels(key)} {count}")
        for name, (help_text, read) in self._gauges.items():
            full = PREFIX + name
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} gauge")
            lines.append(f"{full} {_number(read())}")
        return "\n".join(lines) + "\n"


def _labels(key: Labels) -> str:
    if not key:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in key
    )
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
