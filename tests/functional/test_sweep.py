"""`cosmicai bench sweep` in small, then the projection, planner and report made from it."""

from __future__ import annotations

import json
import platform
import re
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cosmicai.cli import app
from cosmicai.projection import lambda_architecture
from harness.system import ensure_program


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # GIVEN a tiny sweep: 4 MB of galaxies cut into 1 and 2 MB partitions, world sizes 1 and
    # one per partition, 2 repeats
    root = tmp_path_factory.mktemp("sweep")
    args = ["bench", "sweep", "--out", str(root / "out"), "--workdir", str(root / "work")]
    args += ["--sizes", "1,2", "--world-sizes", "1,0", "--dataset-mb", "4", "--repeats", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "out"


@pytest.mark.slow
def test_sweep_table_and_profile(sweep_dir: Path) -> None:
    data = json.loads((sweep_dir / "sweep.json").read_text())
    # THEN every cell ran its repeats, and the figures are measured, not placeholders
    cells = {(c["partition_mb"], c["world_size"]): c for c in data["cells"]}
    assert set(cells) == {(1, 1), (1, 4), (2, 1), (2, 2)}
    for cell in cells.values():
        assert len(cell["runs"]) == 2
        for run in cell["runs"]:
            assert run["status"] == "ok"
            assert run["map_wall_s"] > 0 and run["cost"] > 0
            assert run["samples"] == data["dataset_samples"]
            # every run starts its workers cold: at least one cold start per run
            assert sum(1 for c in run["cold_start_s"] if c > 0) >= 1
    profile = data["profile"]
    assert profile["cpu_s_per_sample"] > 0 and profile["cold_start_s"] > 0
    assert data["machine"]["cpus"] >= 1
    assert len(data["timeline"]) == 4  # no cell of 25 MB or more: the 1 MB cell, 4 ranks
    # and the markdown puts CosmicAI's table and the differences in definition beside ours
    md = (sweep_dir / "sweep.md").read_text()
    assert "| 100 | 130 | 25.0 | 7.0 | 0.38 |" in md
    assert "Differences in definition" in md
    assert len(re.findall(r"^\| 2 \| ", md, flags=re.M)) == 2


@pytest.mark.slow
def test_report_renders_a_page_with_real_figures(sweep_dir: Path) -> None:
    # WHEN the report is made from the sweep
    result = CliRunner().invoke(app, ["report", str(sweep_dir)])
    assert result.exit_code == 0, result.output
    # THEN one HTML page embeds every figure, and the figures are real drawings
    page = (sweep_dir / "report.html").read_text()
    names = ["duration_cost.png", "throughput.png", "memory.png", "timeline.png"]
    for name in names:
        png = (sweep_dir / name).read_bytes()
        width, height = _png_size(png)
        assert width > 300 and height > 200 and len(png) > 10_000, name
        assert f'alt="{name}"' in page
    assert page.count("data:image/png;base64,") == len(names)
    assert "CosmicAI published" in page
    assert "![timeline.png](timeline.png)" in (sweep_dir / "report.md").read_text()


@pytest.mark.slow
def test_projection_and_planner_from_the_sweep(sweep_dir: Path) -> None:
    sweep = str(sweep_dir / "sweep.json")
    # WHEN projected to AWS with the sweep's profile
    result = CliRunner().invoke(
        app, ["project", "--sweep", sweep, "--out", str(sweep_dir / "p.json")]
    )
    assert result.exit_code == 0, result.output
    projections = json.loads((sweep_dir / "p.json").read_text())["projections"]
    # THEN both datasets are projected, with a cost and a wall-clock, and the assumptions shown
    assert [p["dataset"] for p in projections][1] == "1 TB"
    assert all(p["map_wall_s"] > 0 and p["cost"]["total"] > 0 for p in projections)
    assert "Assumptions:" in result.output and "vcpu_share" in result.output
    # and the planner picks a configuration for a generous deadline and budget
    plan = CliRunner().invoke(
        app, ["plan-aws", "--sweep", sweep, "--deadline", "120", "--budget", "5"]
    )
    assert plan.exit_code == 0, plan.output
    assert "Choice" in plan.output and "Runner-up 2" in plan.output
    # and says so, exit 1, when nothing can meet an impossible deadline
    impossible = CliRunner().invoke(
        app, ["plan-aws", "--sweep", sweep, "--deadline", "0.1", "--budget", "5"]
    )
    assert impossible.exit_code == 1
    assert "no configuration meets" in impossible.output
    # and pricing the other Lambda architecture says its speed was not measured there
    measured = projections[0]["scenario"]["architecture"]
    other = "arm64" if measured == "x86_64" else "x86_64"
    assert measured == lambda_architecture(platform.machine())
    borrowed = CliRunner().invoke(
        app,
        ["plan-aws", "--sweep", sweep, "--deadline", "120", "--budget", "5",
         "--architecture", other],
    )  # fmt: skip
    assert borrowed.exit_code == 0, borrowed.output
    assert f"measured on {measured}" in borrowed.output
    assert f"{other} (speed not measured on it)" in borrowed.output
    # unless the speed is the caller's own figure, from a machine the planner cannot know
    given = CliRunner().invoke(
        app,
        ["plan-aws", "--sweep", sweep, "--deadline", "120", "--budget", "5",
         "--architecture", other, "--samples-per-s-per-vcpu", "300"],
    )  # fmt: skip
    assert given.exit_code == 0, given.output
    assert "not measured" not in given.output


def test_report_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "x.json")])
    assert result.exit_code == 1
    assert "neither a sweep.json nor a run's summary.json" in result.output


@pytest.mark.slow
def test_report_looks_like_a_page_in_a_real_browser(sweep_dir: Path, tmp_path: Path) -> None:
    import subprocess

    import numpy as np
    from matplotlib.image import imread

    browser, why_not = ensure_program(("chromium", "chromium-browser"), "chromium")
    if browser is None:
        pytest.skip(f"no headless browser: {why_not}")
    result = CliRunner().invoke(app, ["report", str(sweep_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    shot = tmp_path / "shot.png"
    # WHEN headless Chromium renders the page
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            (tmp_path / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    # THEN the screenshot is a page with content: mostly white, with a good share of drawn
    # pixels (tables, text and figures), and colour (the plots' lines), not a blank page
    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    ink = (pixels.mean(axis=2) < 0.9).mean()
    coloured = (np.ptp(pixels, axis=2) > 0.2).mean()
    assert 0.02 < ink < 0.6, ink
    assert coloured > 0.001, coloured


def test_sweep_refuses_a_model_it_cannot_load_before_any_work(tmp_path: Path) -> None:
    args = ["bench", "sweep", "--model", "builtin:no-such-model", "--workdir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "unknown built-in model 'no-such-model'" in result.output
    assert not (tmp_path / "store").exists()


def test_sweep_refuses_partitions_larger_than_the_dataset(tmp_path: Path) -> None:
    args = ["bench", "sweep", "--sizes", "50", "--dataset-mb", "10", "--workdir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())  # typer boxes and wraps errors
    assert "between 1 and the dataset size (10 MB)" in text


def test_a_workdir_reused_for_another_size_holds_the_size_asked_for(tmp_path: Path) -> None:
    from cosmicai.bench.sweep import SweepConfig, _prepare

    store = tmp_path / "store"

    def galaxies(config: SweepConfig) -> int:
        _prepare(store, config, say=lambda _: None)
        index = json.loads((store / "sweep" / "source" / "_index.json").read_text())
        return sum(p["samples"] for p in index["partitions"])

    small = SweepConfig(partition_mb=[1], dataset_mb=1)
    large = SweepConfig(partition_mb=[1], dataset_mb=2)
    # GIVEN a workdir that held a 1 MB dataset, then a 2 MB one
    first = galaxies(small)
    assert galaxies(large) > first
    # WHEN the 1 MB sweep runs there again
    # THEN it gets 1 MB of galaxies, not the 2 MB left behind
    assert galaxies(small) == first
