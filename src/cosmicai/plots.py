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
    from cosmicai.bench.sweep import SweepResult
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
            figures[name] = _png(fig)
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


def _png(fig: Any) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out.getvalue()


def sweep_figures(result: SweepResult) -> dict[str, bytes]:
    """PNG files of a sweep: duration and cost against partition size, throughput against
    world size, memory against partition size (CosmicAI's published figures overlaid), and
    one run's per-rank timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cosmicai.bench.sweep import PUBLISHED_TABLE

    figures: dict[str, bytes] = {}
    cells = result.cells
    published_mb = [r["partition_mb"] for r in PUBLISHED_TABLE]
    by_world: dict[int, list[Any]] = {}
    per_partition = [c for c in cells if c.world_size == c.partitions]
    for c in cells:
        by_world.setdefault(c.world_size, []).append(c)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, chosen in (("ours: one rank per partition", per_partition),):
        xs = [c.partition_mb for c in chosen]
        left.plot(xs, [c.median("map_wall_s") for c in chosen], "o-", label=f"{label}, Map wall")
        left.plot(xs, [c.rank_handler(0.5) for c in chosen], "s--", label=f"{label}, rank p50")
        right.plot(xs, [c.cost_per_gb for c in chosen], "o-", label=f"{label} (billed)")
    left.plot(
        published_mb,
        [r["duration_s"] for r in PUBLISHED_TABLE],
        "k^:",
        label="CosmicAI published (per worker, 12.6 GB)",
    )
    gb = float(result.published_dataset["gigabytes"])
    right.plot(
        published_mb,
        [r["cost"] / gb for r in PUBLISHED_TABLE],
        "k^:",
        label="CosmicAI published (duration × memory used)",
    )
    left.set(xlabel="partition size (MB)", ylabel="seconds", title="duration")
    right.set(
        xlabel="partition size (MB)",
        ylabel="$ per GB",
        yscale="log",
        title=f"cost per GB ({result.config.memory_mb:,} MB configured)",
    )
    from matplotlib.ticker import FuncFormatter, NullFormatter

    right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    right.yaxis.set_minor_formatter(NullFormatter())
    for ax in (left, right):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    figures["duration_cost.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for size in sorted({c.partition_mb for c in cells}):
        chosen = sorted((c for c in cells if c.partition_mb == size), key=lambda c: c.world_size)
        ax.plot(
            [c.world_size for c in chosen],
            [c.median("samples_per_s") for c in chosen],
            "o-",
            label=f"{size} MB",
        )
    ax.axvline(result.config.concurrency, color="0.5", ls="--", lw=1)
    ax.set(
        xlabel="world size (ranks)",
        ylabel="samples/s over the Map's wall-clock",
        xscale="log",
        title=f"throughput (this machine: {result.config.concurrency} workers at once)",
    )
    ax.legend(fontsize="small", title="partition")
    ax.grid(alpha=0.3)
    figures["throughput.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [c.partition_mb for c in per_partition]
    ax.plot(xs, [c.peak_rss_mb for c in per_partition], "o-", label="ours: worker peak RSS")
    ax.plot(
        xs,
        [c.peak_rss_mb - c.max_partition_mb for c in per_partition],
        "s--",
        label="ours: peak RSS − partition bytes",
    )
    ax.plot(
        published_mb,
        [r["memory_gb"] * 1024 for r in PUBLISHED_TABLE],
        "k^:",
        label="CosmicAI published: memory used",
    )
    ax.set(xlabel="partition size (MB)", ylabel="MB", yscale="log", title="worker memory")
    ax.set_yticks([250, 500, 1000, 2000, 4000, 8000])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    figures["memory.png"] = _png(fig)
    plt.close(fig)

    if result.timeline:
        fig = timeline_figure(result.timeline, title=f"one run: {result.timeline_label}")
        figures["timeline.png"] = _png(fig)
        plt.close(fig)
    return figures
