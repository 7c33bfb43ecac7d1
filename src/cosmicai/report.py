"""Human-readable forms of a run's results: Markdown, a terminal table and a CSV catalogue."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rich.console import Console

    from cosmicai.run_types import Plan, Summary


def predictions_csv(predictions: dict[str, np.ndarray[Any, Any]]) -> bytes:
    """The predictions catalogue: one row per galaxy, empty ``z_spec`` where unknown."""
    out = io.StringIO()
    out.write("object_id,partition,z_spec,z_pred\n")
    z_spec = predictions["redshift"]
    for oid, part, z, p in zip(
        predictions["object_id"].tolist(),
        predictions["partition"].tolist(),
        z_spec.tolist(),
        predictions["z_pred"].tolist(),
        strict=True,
    ):
        out.write(f"{oid},{part},{'' if z != z else f'{z:.6f}'},{p:.6f}\n")
    return out.getvalue().encode()


def metric_rows(summary: Summary) -> list[tuple[str, str]]:
    m = summary.metrics
    excluded = (
        [
            (
                "non-finite predictions",
                f"{summary.nonfinite_predictions:,} (NaN or inf: counted as outliers, left out "
                "of MAE, MSE, bias, NMAD, R²)",
            )
        ]
        if summary.nonfinite_predictions
        else []
    )
    if m is None:
        if summary.nonfinite_predictions:
            return [("metrics", "no finite prediction of a known redshift"), *excluded]
        return [("metrics", "no sample with a known redshift")]
    rows = [
        ("samples with z_spec", f"{summary.samples_with_redshift:,}"),
        *excluded,
        ("MAE", f"{m.mae:.4f}"),
        ("MSE", f"{m.mse:.5f}"),
        ("bias <Δz>", f"{m.bias:+.4f}"),
        ("NMAD (precision)", f"{m.nmad:.4f}"),
        ("R²", f"{m.r2:.3f}" if m.r2 is not None else "undefined (every z_spec the same)"),
        ("outliers |Δz|>0.15", f"{m.outlier_fraction:.2%}"),
    ]
    if summary.baseline_mean_mae is not None:
        rows.append(("MAE of predicting mean z", f"{summary.baseline_mean_mae:.4f}"))
    rows.append(("computed from", _source(summary)))
    return rows


def _source(summary: Summary) -> str:
    comm = summary.communicator
    if comm is None:
        return summary.metrics_source
    links = ", ".join(f"{n} {kind}" for kind, n in sorted(comm.links.items())) or "no links"
    text = f"{summary.metrics_source} (communicator {comm.mode}: {links} link ends)"
    if comm.degraded_ranks:
        text += f"; reduction degraded on rank(s) {', '.join(map(str, comm.degraded_ranks))}"
    return text


def performance_rows(summary: Summary) -> list[tuple[str, str]]:
    p = summary.performance
    c = p.cost
    return [
        ("ranks ok / world size", f"{summary.ranks_ok} / {summary.world_size}"),
        ("partitions", f"{summary.partitions:,}"),
        ("samples", f"{summary.samples:,}"),
        ("data", f"{summary.bytes / 2**20:,.1f} MiB"),
        ("Map wall-clock", f"{p.map_wall_s:.2f} s"),
        ("throughput", f"{p.samples_per_s:,.0f} samples/s, {p.gbit_per_s:.3f} Gbit/s"),
        ("slowest / mean rank", f"{p.max_rank_s:.2f} s / {p.mean_rank_s:.2f} s"),
        ("peak RSS (max rank)", f"{p.max_peak_rss_mb:,.0f} MB"),
        ("configured memory", f"{p.memory_mb:,} MB"),
        (
            "billed GB-seconds",
            f"{c.billed_gb_seconds:,.3f} (of which cold starts {c.init_gb_seconds:,.3f}, "
            f"{c.cold_starts} cold)",
        ),
        (
            f"AWS cost ({c.region}, prices {c.prices_date})",
            f"${c.total:.6f} (Lambda ${c.lambda_compute + c.lambda_requests:.6f}, "
            f"Step Functions ${c.step_functions:.6f} {c.map_child_type} children, "
            f"S3 ${c.s3_requests:.6f}" + (f", Fargate ${c.fargate:.6f}" if c.fargate else "") + ")",
        ),
    ]


def summary_markdown(summary: Summary) -> str:
    lines = [f"# Run {summary.run_id}: {summary.status}", ""]
    if summary.failed_ranks:
        lines += ["## Failed ranks", ""]
        lines += [f"- rank {r}: {why}" for r, why in sorted(summary.failed_ranks.items())]
        lines.append("")
    for title, rows in (
        ("Accuracy", metric_rows(summary)),
        ("Performance", performance_rows(summary)),
    ):
        lines += [f"## {title}", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        lines.append("")
    lines += [
        "## Ranks",
        "",
        "Handler time (total) excludes the cold start (process start, imports, model load), "
        "which a worker pays once before its first rank; Lambda bills both.",
        "",
        "| rank | status | partitions | samples | cold start s | read s | inference s | write s "
        "| handler s | billed ms | peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.ranks:
        lines.append(
            f"| {r.rank} | {r.status} | {r.partitions} | {r.samples} | {r.cold_start_s:.3f} | "
            f"{r.read_s:.3f} | {r.inference_s:.3f} | {r.write_s:.3f} | {r.total_s:.3f} | "
            f"{r.billed_ms} | {r.peak_rss_mb:.0f} |"
        )
    if summary.ignored_fields:
        lines += ["", f"Ignored request fields: {', '.join(summary.ignored_fields)}"]
    return "\n".join(lines) + "\n"


def print_summary(summary: Summary, console: Console, *, max_rank_rows: int = 16) -> None:
    from rich.table import Table

    colour = {"ok": "green", "partial": "yellow", "failed": "red"}[summary.status]
    console.print(f"[bold]Run {summary.run_id}[/]: [{colour}]{summary.status}[/]")
    for title, rows in (
        ("Accuracy", metric_rows(summary)),
        ("Performance", performance_rows(summary)),
    ):
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(key, value)
        console.print(table)
    ranks = Table(title="Ranks", title_justify="left")
    for column in (
        "rank",
        "status",
        "partitions",
        "samples",
        "cold s",
        "read s",
        "infer s",
        "handler s",
        "peak RSS MB",
    ):
        ranks.add_column(column, justify="right")
    for r in summary.ranks[:max_rank_rows]:
        style = "" if r.status == "ok" else "red"
        ranks.add_row(
            str(r.rank),
            r.status,
            str(r.partitions),
            f"{r.samples:,}",
            f"{r.cold_start_s:.3f}",
            f"{r.read_s:.3f}",
            f"{r.inference_s:.3f}",
            f"{r.total_s:.3f}",
            f"{r.peak_rss_mb:.0f}",
            style=style,
        )
    if len(summary.ranks) > max_rank_rows:
        ranks.caption = f"{len(summary.ranks) - max_rank_rows} more ranks in summary.md"
    console.print(ranks)
    for rank, why in sorted(summary.failed_ranks.items()):
        console.print(f"[red]rank {rank} failed:[/] {why}")


def print_plan(plan: Plan, console: Console, *, max_rank_rows: int = 16) -> None:
    from rich.table import Table

    samples = f"{plan.samples:,}" if plan.samples is not None else "unknown (no dataset index)"
    console.print(
        f"[bold]Plan {plan.run_id}[/]: {plan.world_size} ranks, {plan.partitions:,} "
        f"partitions, {plan.bytes / 2**20:,.1f} MiB, samples {samples}"
    )
    table = Table(title_justify="left")
    for column in ("rank", "partitions", "first", "last", "samples", "MiB"):
        table.add_column(column, justify="right")
    for r in plan.ranks[:max_rank_rows]:
        known = all(p.samples is not None for p in r.partitions)
        table.add_row(
            str(r.rank),
            str(len(r.partitions)),
            str(r.partitions[0].number),
            str(r.partitions[-1].number),
            f"{sum(p.samples or 0 for p in r.partitions):,}" if known else "?",
            f"{r.bytes / 2**20:,.1f}",
        )
    if len(plan.ranks) > max_rank_rows:
        table.caption = f"... and {len(plan.ranks) - max_rank_rows} more ranks"
    console.print(table)
