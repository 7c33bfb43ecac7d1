"""AstroMAE to ONNX Runtime: export with parity, INT8 with its accuracy guard, the built-in
models in a pipeline run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cosmicai.cli import app
from cosmicai.data.format import encode_partition
from cosmicai.model import RedshiftModel, builtin_models
from cosmicai.pipeline import initialize, run_rank, summarize
from cosmicai.quantize import Split, accuracy_guard, quantize
from cosmicai.request import parse_request
from cosmicai.run_types import WorkItem
from cosmicai.storage import LocalStorage
from harness.data import BUCKET
from harness.pickles import ShellPayload

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from cosmicai.astromae.checkpoint import save_checkpoint
    from cosmicai.astromae.network import AstroMAE, AstroMAEConfig

    torch.manual_seed(0)
    model = AstroMAE(AstroMAEConfig.tiny())
    train = Split.rendered("train", 256, 1000)
    model.preprocess.fit(train.images, train.magnitudes)
    path = tmp_path_factory.mktemp("astromae") / "tiny.pt"
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint: Path) -> Path:
    out = tiny_checkpoint.with_suffix(".onnx")
    result = runner.invoke(app, ["model", "export", str(tiny_checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def test_split() -> Split:
    return Split.rendered("test", 256, 2000)


@pytest.mark.slow
def test_export_writes_a_dynamic_batch_model_equal_to_torch(
    tiny_checkpoint: Path, tiny_onnx: Path
) -> None:
    import onnx
    import torch

    from cosmicai.astromae.checkpoint import load_checkpoint

    # GIVEN the exported file
    graph = onnx.load(str(tiny_onnx)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # WHEN it runs in ONNX Runtime on batches of sizes the export never saw
    session = RedshiftModel(tiny_onnx.read_bytes())
    model = load_checkpoint(tiny_checkpoint)
    data = Split.rendered("test", 37, 7)
    got = session.predict(data.images, data.magnitudes)
    with torch.no_grad():
        expected = model(torch.from_numpy(data.images), torch.from_numpy(data.magnitudes))
    # THEN it gives torch's redshifts, preprocessing included
    assert got.shape == (37,)
    assert np.max(np.abs(got - expected.numpy())) <= 1e-4


@pytest.mark.slow
def test_export_reports_parity(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["model", "export", str(tiny_checkpoint), "-o", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert "max |dz|" in result.output
    assert (tmp_path / "m.onnx").is_file()


def test_export_of_a_malicious_checkpoint_fails_cleanly(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    marker = tmp_path / "pwned"
    torch.save(ShellPayload(marker), tmp_path / "evil.pt")
    result = runner.invoke(
        app, ["model", "export", str(tmp_path / "evil.pt"), "-o", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 1
    assert "refused" in result.output
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_guard_refuses_a_model_that_lost_accuracy(tiny_onnx: Path, test_split: Split) -> None:
    import onnx
    from onnx import numpy_helper

    # GIVEN a candidate whose last layer's weights were scaled up twentyfold (its scatter,
    # hence NMAD and MAE, grows whatever the untrained model predicts)
    fp32 = tiny_onnx.read_bytes()
    graph = onnx.load_from_string(fp32)
    weight = next(t for t in graph.graph.initializer if t.name == "head.2.weight")
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 20, weight.name))
    # WHEN the guard compares it with the fp32 model
    guard = accuracy_guard(fp32, graph.SerializeToString(), test_split)
    # THEN it refuses, and says why
    assert not guard.passed
    assert guard.nmad_change > 0.03


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_quantizes_matmuls_only_and_keeps_magnitude_input_fp32(
    tiny_onnx: Path, method: str
) -> None:
    import onnx

    int8 = quantize(
        tiny_onnx.read_bytes(),
        method=method,  # type: ignore[arg-type]
        calibration=Split.rendered("train", 64, 1000),
    )
    ops = {n.op_type for n in onnx.load_from_string(int8).graph.node}
    assert "Conv" in ops and "ConvInteger" not in ops and "QLinearConv" not in ops
    assert ops & {"MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm"}
    first_magnitude_layer = {
        n.op_type
        for n in onnx.load_from_string(int8).graph.node
        if n.name.startswith("/magnitude_mlp/magnitude_mlp.0/")
    }
    assert first_magnitude_layer and first_magnitude_layer <= {"Gemm", "MatMul", "Add"}


@pytest.mark.slow
def test_quantize_command_prints_both_models_and_refuses_past_its_limit(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    # GIVEN limits no INT8 copy can meet (MAE and NMAD must fall by half)
    out = tmp_path / "int8.onnx"
    args = ["model", "quantize", str(tiny_onnx), "-o", str(out), "--test-samples", "128"]
    result = runner.invoke(
        app, [*args, "--max-mae-increase", "-0.5", "--max-nmad-increase", "-0.5"]
    )
    # THEN it exits non-zero, prints both models' figures, writes nothing
    assert result.exit_code == 1
    assert "fp32: MAE" in result.output and "int8: MAE" in result.output
    assert "refused" in result.output
    assert not out.exists()
    # AND with the default limits the same command writes the INT8 model or refuses it,
    # consistently with the figures it printed
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    assert out.exists() == (result.exit_code == 0)


@pytest.mark.skipif("astromae-int8" not in builtin_models(), reason="model not built")
def test_builtin_astromae_int8_is_a_pipeline_model(test_split: Split) -> None:
    # GIVEN the shipped INT8 AstroMAE, through the path the worker uses
    from cosmicai.metrics import redshift_metrics
    from cosmicai.model import get_model

    model = get_model("builtin:astromae-int8")
    z = np.concatenate(
        [
            model.predict(test_split.images[i : i + 64], test_split.magnitudes[i : i + 64])
            for i in range(0, 256, 64)
        ]
    )
    metrics = redshift_metrics(test_split.redshift, z)
    # THEN it predicts far better than the mean of the split
    baseline = float(np.mean(np.abs(test_split.redshift - test_split.redshift.mean())))
    assert metrics is not None and metrics.mae < 0.5 * baseline


@pytest.mark.skipif("astromae-int8" not in builtin_models(), reason="model not built")
def test_pipeline_run_names_builtin_astromae_int8(local_storage: LocalStorage) -> None:
    # GIVEN two partitions of rendered test galaxies and a request naming the INT8 AstroMAE
    from cosmicai.data.synth import render_chunk

    for number in (1, 2):
        part = render_chunk("test", 64 * (number - 1), 64 * number, 2000)
        local_storage.put(BUCKET, f"data/{number}.safetensors", encode_partition(part))
    request = parse_request(
        {
            "bucket": BUCKET,
            "data_prefix": "data",
            "model": "builtin:astromae-int8",
            "world_size": 1,
            "batch_size": 32,
        }
    )
    pointer = initialize(request, local_storage)
    # WHEN the rank runs (both partitions, the second read while the first is inferred)
    result = run_rank(
        WorkItem(
            run_id=pointer.run_id,
            bucket=BUCKET,
            run_prefix=pointer.run_prefix,
            rank=0,
            world_size=1,
        ),
        local_storage,
    )
    summary = summarize(pointer, local_storage)
    # THEN every galaxy is predicted, with AstroMAE's accuracy
    assert result.status == "ok" and result.samples == 128 and result.partitions == 2
    assert summary.metrics is not None and summary.metrics.mae < 0.03


@pytest.mark.slow
def test_export_fuses_each_blocks_attention_and_int8_quantizes_it(tiny_onnx: Path) -> None:
    import onnx

    # GIVEN the exported tiny AstroMAE (2 ViT blocks)
    graph = onnx.load(str(tiny_onnx)).graph
    ops = [(n.domain, n.op_type) for n in graph.node]
    # THEN each block's attention is one ORT Attention node, no softmax left behind
    assert ops.count(("com.microsoft", "Attention")) == 2
    assert ("", "Softmax") not in ops
    # AND the INT8 copy runs its QKV projection in 8 bits
    int8 = onnx.load_from_string(quantize(tiny_onnx.read_bytes()))
    assert [n.op_type for n in int8.graph.node].count("QAttention") == 2


@pytest.mark.slow
def test_fusion_leaves_a_block_whose_intermediate_is_read_elsewhere(tiny_checkpoint: Path) -> None:
    import onnx

    from cosmicai.astromae.checkpoint import load_checkpoint
    from cosmicai.astromae.export import to_onnx_bytes
    from cosmicai.exceptions import ModelError
    from cosmicai.fusion import fuse_attention

    model = load_checkpoint(tiny_checkpoint)
    plain = to_onnx_bytes(model)
    # GIVEN a graph where block 0's attention weights are also a graph output
    proto = onnx.load_from_string(plain)
    softmax = next(
        n
        for n in proto.graph.node
        if n.op_type == "Softmax" and n.name.startswith("/vit/blocks/blocks.0/")
    )
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(softmax.output[0], onnx.TensorProto.FLOAT, None)
    )
    # WHEN it is fused
    fused, count = fuse_attention(proto.SerializeToString(), model.config.heads)
    # THEN only block 1 is, block 0 keeps its softmax, and the redshifts are unchanged
    nodes = onnx.load_from_string(fused).graph.node
    assert count == 1
    assert any(n.op_type == "Softmax" and "blocks.0" in n.name for n in nodes)
    data = Split.rendered("test", 16, 3)
    before = RedshiftModel(plain).predict(data.images, data.magnitudes)
    after = RedshiftModel(fused).predict(data.images, data.magnitudes)
    assert np.max(np.abs(before - after)) <= 1e-5
    # AND a head count that does not divide the width is refused by name
    with pytest.raises(ModelError, match="not divisible by 5 heads"):
        fuse_attention(plain, 5)


@pytest.mark.slow
def test_bench_model_compares_engines_on_the_same_batches(
    tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    import json

    int8 = tmp_path / "tiny-int8.onnx"
    int8.write_bytes(quantize(tiny_onnx.read_bytes()))
    out = tmp_path / "bench"
    # WHEN the bench runs two batch sizes at one thread
    result = runner.invoke(
        app,
        [
            "bench", "model", "--fp32", str(tiny_onnx), "--int8", str(int8),
            "--checkpoint", str(tiny_checkpoint), "--threads", "1", "--batch", "16",
            "--batch", "64", "--samples", "128", "--rounds", "2", "--rss-batches", "1",
            "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    # THEN every engine was measured at both batches, with its ratio to torch on that batch
    rows = {(r["engine"], r["batch"]): r for r in report["throughput"]}
    for engine in ("torch eager fp32", "ORT fp32", "ORT INT8"):
        for batch in (16, 64):
            assert len(rows[(engine, batch)]["samples_per_s_runs"]) == 2
    assert rows[("torch eager fp32", 16)]["speedup_vs_torch_eager_median_of_pairs"] == 1.0
    # AND the best batch of each engine is the one with the highest median
    for best in report["best"]:
        same = [r for (e, _), r in rows.items() if e == best["engine"]]
        assert best["samples_per_s_median"] == max(r["samples_per_s_median"] for r in same)
    assert "Each engine at its fastest batch" in out.with_suffix(".md").read_text()
    # AND the ceiling was measured every round for the checkpoint's widths; no engine running
    # the whole network is far above what its quantized layers alone allow
    for key in ("16", "64"):
        bound = report["ceiling"][key]
        assert len(bound["runs"]) == 2
        assert bound["int8_samples_per_s"] > 0 and bound["fp32_samples_per_s"] > 0
        names = {p["name"] for p in bound["products_last_round"]}
        assert {"vit.qkv", "vit.fc1", "head.1"} <= names
    assert all(0 < r["of_ceiling_per_thread"] < 3 for r in report["throughput"])
    # AND the run is checked against the targets, in the JSON and on the page
    assert len(report["targets"]) == 4
    assert "Against the targets (this run)" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_colour_basis_feeds_colours_exports_exactly_and_stays_fp32_in_int8(
    tmp_path: Path,
) -> None:
    import dataclasses

    import onnx
    import torch

    from cosmicai.astromae.checkpoint import load_checkpoint, save_checkpoint
    from cosmicai.astromae.export import export_checkpoint
    from cosmicai.astromae.network import AstroMAE, AstroMAEConfig

    # GIVEN a tiny AstroMAE whose magnitude MLP takes r and the colours
    torch.manual_seed(0)
    model = AstroMAE(dataclasses.replace(AstroMAEConfig.tiny(), colour_basis=True))
    train = Split.rendered("train", 256, 1000)
    model.preprocess.fit(train.images, train.magnitudes)
    mags = torch.from_numpy(train.magnitudes[:8])
    _, standardised = model.preprocess(torch.from_numpy(train.images[:8]), mags)
    p = model.preprocess
    # THEN its inputs are r and u-g, g-r, r-i, i-z, each standardised over the training split
    raw = torch.stack([mags[:, 2], *(mags[:, i] - mags[:, i + 1] for i in range(4))], dim=1)
    assert torch.allclose(standardised, (raw - p.magnitude_mean) / p.magnitude_std, atol=1e-5)
    assert standardised[:, 1:].std() > 0.1  # colours at unit scale, not squeezed
    # AND the setting survives a checkpoint, the export matches torch
    path = tmp_path / "colour.pt"
    save_checkpoint(model, path)
    assert load_checkpoint(path).config.colour_basis
    result = export_checkpoint(path, tmp_path / "colour.onnx")
    assert result.max_abs_diff <= 1e-4
    # AND INT8 leaves the basis change exact (no quantized op in the preprocessing)
    int8 = onnx.load_from_string(quantize((tmp_path / "colour.onnx").read_bytes()))
    preprocess = {n.op_type for n in int8.graph.node if n.name.startswith("/preprocess/")}
    assert "Sub" in preprocess
    assert not preprocess & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
