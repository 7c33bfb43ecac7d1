"""``cosmicai report``: one HTML page (and its markdown) for a run or a sweep, with the tables
and figures; the HTML embeds its images so it travels as one file, the markdown links the PNG
files written beside it."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from cosmicai import plots
from cosmicai.bench.sweep import PUBLISHED_TABLE, SweepResult
from cosmicai.exceptions import CosmicAIError
from cosmicai.report import metric_rows, performance_rows
from cosmicai.run_types import RankResult, Summary

Table = tuple[str, list[str], list[list[str]]]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222 }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right }
th { background: #f3f3f3 } td:first-child, th:first-child { text-align: left }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5rem 0 }
.note { color: #555; font-size: 0.9rem }
"""


def _md_table(table: Table) -> list[str]:
    title, headers, rows = table
    lines = [f"## {title}", "", "| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _html_table(table: Table) -> str:
    title, headers, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _write(
    out: Path, title: str, intro: list[str], tables: list[Table], figures: dict[str, bytes]
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        (out / name).write_bytes(png)
    md = [f"# {title}", "", *intro, ""]
    for table in tables:
        md += _md_table(table)
    md += [f"![{name}]({name})" for name in figures]
    (out / "report.md").write_text("\n".join(md) + "\n")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="note">{html.escape(line)}</p>' for line in intro if line]
    parts += [_html_table(t) for t in tables]
    for name, png in figures.items():
        data = base64.b64encode(png).decode()
        parts.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    (out / "report.html").write_text(page)
    return out / "report.html", out / "report.md"


def sweep_tables(result: object) -> list[Table]:

    assert isinstance(result, SweepResult)
    ours: list[list[str]] = []
    for c in result.cells:
        ours.append(
            [
                f"{c.partition_mb}",
                f"{c.world_size}",
                f"{c.concurrency}",
                f"{c.median('map_wall_s'):.2f}",
                f"{c.rank_handler(0.5):.2f} / {c.rank_handler(0.95):.2f} / "
                f"{c.rank_handler(1.0):.2f}",
                f"{c.cold_starts:g} ({c.cold_start_s:.2f} s)",
                f"{c.peak_rss_mb:.0f}",
                f"{c.peak_rss_mb - c.max_partition_mb:.0f}",
                f"{c.median('samples_per_s'):,.0f}",
                f"{c.median('gbit_per_s'):.3f}",
                f"{c.median('cost'):.6f}",
                f"{c.cost_per_gb:.4f}",
            ]
        )
    published = [
        [
            f"{r['partition_mb']:.0f}",
            f"{r['workers']:.0f}",
            f"{r['duration_s']}",
            f"{r['memory_gb']}",
            f"{r['cost']:.2f}",
        ]
        for r in PUBLISHED_TABLE
    ]
    return [
        (
            "Ours (medians over repeats)",
            [
                "partition MB",
                "ranks",
                "at once",
                "Map wall s",
                "rank p50 / p95 / max s",
                "cold starts",
                "peak RSS MB",
                "RSS − partition MB",
                "samples/s",
                "Gbit/s",
                "cost $",
                "$ per GB",
            ],
            ours,
        ),
        (
            "CosmicAI published (12.6 GB, 10,240 MB configured)",
            ["partition MB", "workers", "duration s", "memory used GB", "cost $ (× memory used)"],
            published,
        ),
    ]


def render_sweep(path: Path, out: Path) -> tuple[Path, Path]:

    result = SweepResult.model_validate_json(path.read_text())
    m, c, p = result.machine, result.config, result.profile
    intro = [
        f"Machine: {m.get('cpus')} × {m.get('cpu_model')}, {m.get('date')}. Model {c.model}, "
        f"batch {c.batch_size or '64 per thread'}, {c.repeats} repeats, {c.concurrency} workers "
        "at once, cost at "
        f"{c.memory_mb:,} MB configured. Dataset {result.dataset_samples:,} galaxies "
        f"({result.dataset_bytes / 2**20:,.0f} MiB).",
        f"Command: {result.command}" if result.command else "",
        f"Profile: {p.cpu_s_per_sample * 1000:.3f} ms CPU per sample, cold start "
        f"{p.cold_start_s:.2f} CPU s ({p.cold_start_wall_s:.2f} s wall-clock here), "
        f"worker RSS ≈ {p.rss_base_mb:.0f} MB + "
        f"{p.rss_per_partition_mb:.2f} × partition MB.",
        *(f"Definition: {d}" for d in result.definitions),
    ]
    figures = sweep_figures(result) if plots.available() else {}
    tables = sweep_tables(result) + _projection_tables(path.parent)
    return _write(out, "Partition-size sweep", intro, tables, figures)


def _projection_tables(folder: Path) -> list[Table]:
    """The projections (``cosmicai project --out``) saved beside the sweep, if any."""
    rows: list[list[str]] = []
    for file in sorted(folder.glob("projection*.json")):
        try:
            data = json.loads(file.read_text())
            for p in data["projections"]:
                s, c = p["scenario"], p["cost"]
                rows.append(
                    [
                        file.name,
                        p["dataset"],
                        f"{s['partition_mb']:g} MB × {p['world_size']:,}",
                        f"{s['memory_mb']:,} MB, {s['map_child_type']}",
                        f"{p['map_wall_s']:.2f}",
                        f"{c['total']:.4f}",
                        f"{p['peak_rss_mb']:.0f}",
                        data["calibration"]["source"],
                    ]
                )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a projection file of ours: nothing to show from it
    if not rows:
        return []
    headers = ["file", "dataset", "partitions × ranks", "worker", "Map wall s", "cost $"]
    headers += ["peak RSS MB", "calibration"]
    return [("Projected to AWS (cosmicai project)", headers, rows)]


_RANK_COLUMNS = [
    "rank",
    "status",
    "samples",
    "cold start s",
    "read s",
    "inference s",
    "write s",
    "handler s",
    "billed ms",
    "peak RSS MB",
]


def render_run(folder: Path, out: Path) -> tuple[Path, Path]:

    summary = Summary.model_validate_json((folder / "summary.json").read_text())
    results = [
        RankResult.model_validate_json(f.read_text())
        for f in sorted((folder / "ranks").glob("*/result.json"))
    ]
    tables: list[Table] = [
        ("Accuracy", ["", ""], [list(r) for r in metric_rows(summary)]),
        ("Performance", ["", ""], [list(r) for r in performance_rows(summary)]),
        (
            "Ranks",
            _RANK_COLUMNS,
            [
                [
                    str(r.rank),
                    r.status,
                    f"{r.samples:,}",
                    f"{r.cold_start_s:.3f}",
                    f"{r.read_s:.3f}",
                    f"{r.inference_s:.3f}",
                    f"{r.write_s:.3f}",
                    f"{r.total_s:.3f}",
                    str(r.billed_ms),
                    f"{r.peak_rss_mb:.0f}",
                ]
                for r in summary.ranks
            ],
        ),
    ]
    figures: dict[str, bytes] = {}
    if plots.available() and results:
        import matplotlib.pyplot as plt

        fig = plots.timeline_figure(
            results, title=f"ranks (Map wall-clock {summary.performance.map_wall_s:.2f} s)"
        )
        figures["timeline.png"] = plots.png(fig)
        plt.close(fig)
    redshift = folder / "plots" / "redshift.png"
    if redshift.exists():
        figures["redshift.png"] = redshift.read_bytes()
    intro = [f"Status: {summary.status}."]
    intro += [f"Rank {r} failed: {why}" for r, why in sorted(summary.failed_ranks.items())]
    return _write(out, f"Run {summary.run_id}", intro, tables, figures)


def render(path: Path, out: Path | None = None) -> tuple[Path, Path]:
    """A report of ``path``: a sweep.json (or a folder holding one) or a local run's folder
    (holding summary.json)."""
    if path.is_dir() and (path / "sweep.json").exists():
        path = path / "sweep.json"
    if path.is_file():
        try:
            kind = "sweep" if "cells" in json.loads(path.read_text()) else None
        except (OSError, ValueError) as exc:
            raise CosmicAIError(f"{path} is not readable JSON: {exc}") from None
        if kind is None:
            if path.name == "summary.json":
                return render_run(path.parent, out or path.parent / "report")
            raise CosmicAIError(f"{path} is neither a sweep.json nor a run's summary.json")
        return render_sweep(path, out or path.parent)
    if path.is_dir() and (path / "summary.json").exists():
        return render_run(path, out or path / "report")
    raise CosmicAIError(f"{path}: not a sweep (sweep.json) nor a local run folder (summary.json)")


def sweep_figures(result: SweepResult) -> dict[str, bytes]:
    """PNG files of a sweep: duration and cost against partition size, throughput against
    world size, memory against partition size (CosmicAI's published figures overlaid), and
    one run's per-rank timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figures["duration_cost.png"] = plots.png(fig)
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
    figures["throughput.png"] = plots.png(fig)
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
    figures["memory.png"] = plots.png(fig)
    plt.close(fig)

    if result.timeline:
        fig = plots.timeline_figure(result.timeline, title=f"one run: {result.timeline_label}")
        figures["timeline.png"] = plots.png(fig)
        plt.close(fig)
    return figures
