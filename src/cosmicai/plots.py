"""Figures of a run: predicted against true redshift, the Δz distribution, and a timeline of
the ranks (when each ran, for how long, whether it failed) — the picture of a Map's
stragglers and cold starts that a table hides.

matplotlib is an optional extra (``cosmicai[plots]``); without it Summarize writes no figures
and says so. The Lambda layer leaves it out to keep the functions small.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cosmicai.metrics import known_redshift

if TYPE_CHECKING:
    from cosmicai.run_types import RankResult, Summary

logger = logging.getLogger(__name__)


class NothingToDraw(Exception):
    """A figure has no data it can show; the message says why."""


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_figures(
    summary: Summary,
    predictions: Mapping[str, np.ndarray[Any, Any]],
    results: Sequence[RankResult],
) -> dict[str, bytes]:
    """PNG files by name: ``redshift.png``, ``timeline.png``.

    A figure that cannot be drawn (no finite pair to plot, a matplotlib failure) is left out
    and the reason logged: figures must never cost a run its summary.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on Lambda or CI
    import matplotlib.pyplot as plt

    figures: dict[str, bytes] = {}
    drawers: dict[str, Callable[[], Any]] = {
        "redshift.png": lambda: _redshift_figure(plt, summary, predictions),
        "timeline.png": lambda: _timeline_figure(plt, summary, results),
    }
    for name, draw in drawers.items():
        try:
            fig = draw()
        except NothingToDraw as exc:
            logger.info("figure %s not drawn: %s", name, exc)
            continue
        except Exception as exc:  # a figure is never worth a run's summary
            logger.warning("figure %s could not be drawn: %s: %s", name, type(exc).__name__, exc)
            plt.close("all")
            continue
        try:
            figures[name] = png(fig)
        except Exception as exc:
            logger.warning("figure %s could not be saved: %s: %s", name, type(exc).__name__, exc)
        finally:
            plt.close(fig)
    return figures


def _redshift_figure(
    plt: Any, summary: Summary, predictions: Mapping[str, np.ndarray[Any, Any]]
) -> Any:
    z = np.asarray(predictions["redshift"], dtype=np.float64)
    pred = np.asarray(predictions["z_pred"], dtype=np.float64)
    known = known_redshift(z) & np.isfinite(pred)
    if not known.any():
        raise NothingToDraw("no sample has both a known redshift and a finite prediction")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    top = float(max(z[known].max(), pred[known].max())) * 1.05
    left.hexbin(
        z[known],
        pred[known],
        gridsize=60,
        bins="log",
        cmap="viridis",
        extent=(0, top, 0, top),
        mincnt=1,
    )
    left.plot([0, top], [0, top], color="white", lw=1, ls="--")
    left.set(xlabel="spectroscopic z", ylabel="predicted z", title=f"{int(known.sum()):,} galaxies")
    dz = (pred[known] - z[known]) / (1 + z[known])
    right.hist(dz, bins=80, color="tab:blue")
    m = summary.metrics
    if m is not None:
        right.set_title(f"Δz: bias {m.bias:+.4f}, NMAD {m.nmad:.4f}, MAE {m.mae:.4f}")
    right.set(xlabel="Δz = (z_pred − z) / (1 + z)", ylabel="galaxies")
    fig.suptitle(f"run {summary.run_id}")
    return fig


def _timeline_figure(plt: Any, summary: Summary, results: Sequence[RankResult]) -> Any:
    if not results:
        raise NothingToDraw("no rank reported a result")
    return timeline_figure(
        results, title=f"ranks (Map wall-clock {summary.performance.map_wall_s:.2f} s)"
    )


#: Phases of a rank on the timeline, in the order drawn, with their colours.
PHASES = {
    "cold start": "0.6",
    "read": "tab:blue",
    "inference": "tab:orange",
    "write": "tab:purple",
    "communication": "tab:cyan",
    "other": "tab:olive",
}


def timeline_figure(results: Sequence[RankResult], *, title: str) -> Any:
    """One bar per rank, split into cold start, read, inference, write and communication.

    Read and inference alternate partition by partition; each is drawn as one block of its
    summed time, so the bar's length is right and the split is proportional. A failed rank is
    outlined in red.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.22 * len(results) + 1.6)))
    origin = min(r.started_at - r.timings.cold_start_s for r in results)
    for r in results:
        t = r.timings
        comm = r.communicator.seconds if r.communicator is not None else 0.0
        handler = max(r.finished_at - r.started_at, 0.0)
        other = max(handler - t.read_s - t.inference_s - t.write_s - comm, 0.0)
        left = r.started_at - t.cold_start_s - origin
        for phase, width in zip(
            PHASES, (t.cold_start_s, t.read_s, t.inference_s, t.write_s, comm, other), strict=True
        ):
            if width > 0:
                ax.barh(r.rank, width, left=left, color=PHASES[phase], height=0.8)
                left += width
        if r.status != "ok":
            start = r.started_at - t.cold_start_s - origin
            ax.barh(
                r.rank,
                max(left - start, 1e-3),
                left=start,
                fill=False,
                edgecolor="red",
                lw=1.5,
                height=0.8,
            )
    ax.legend(
        handles=[Patch(color=c, label=p) for p, c in PHASES.items()],
        ncols=len(PHASES),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        fontsize="small",
        frameon=False,
    )
    ax.set(xlabel="seconds since the first worker started", ylabel="rank", title=title)
    ax.invert_yaxis()
    return fig


def png(fig: Any) -> bytes:
    """A figure as PNG bytes."""
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out.getvalue()
