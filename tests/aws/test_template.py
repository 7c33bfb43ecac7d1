"""The SAM application as files: linted, built, and the built artifacts run on Python 3.12.

`sam` comes from its own tool environment (aws-sam-cli pins boto3 to one exact version), which
`make test` creates and names in COSMICAI_SAM; these tests skip with the reason when it or a
python3.12 is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.aws import ROOT, render_definition
from harness.net import free_port

#: Lambda's limit for a function and all its layers, unzipped.
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
FAKE_ARN = "arn:aws:lambda:us-east-1:123456789012:function:cosmicai-{}"


def _sam() -> str:
    sam = os.environ.get("COSMICAI_SAM") or shutil.which("sam")
    if not sam:
        pytest.skip("aws-sam-cli not found: `make test` installs it into .venv-sam")
    return sam


def _python312() -> str | None:
    """A Python 3.12 that runs: on PATH, or one of pyenv's (whose shim only answers when 3.12
    is the selected version)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        shutil.which("python3.12"),
        *sorted(map(str, pyenv_root.glob("versions/3.12*/bin/python3.12"))),
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True
        )
        if probe.returncode == 0:
            return probe.stdout.strip()
    return None


def _sam_env() -> dict[str, str]:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    python312 = _python312()
    if python312:
        # sam build looks for "python3.12" on PATH: put a real one first.
        env["PATH"] = f"{Path(python312).parent}{os.pathsep}{env['PATH']}"
    return env


@pytest.mark.slow
def test_sam_validate_lint() -> None:
    result = subprocess.run(
        [_sam(), "validate", "--lint", "--template", str(ROOT / "template.yaml")],
        capture_output=True,
        text=True,
        env=_sam_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout


@pytest.mark.slow
def test_state_machine_definition_passes_cfn_lint() -> None:
    # cfn-lint does not open DefinitionUri files: embed the ASL, placeholders filled, as the
    # Definition of a plain state machine in a throwaway template (its rule E3601 checks ASL).
    from cfnlint.api import ManualArgs, lint

    definition = render_definition(
        {
            "InitializeFunctionArn": FAKE_ARN.format("initialize"),
            "WorkerFunctionArn": FAKE_ARN.format("worker"),
            "SummarizeFunctionArn": FAKE_ARN.format("summarize"),
            "MaxConcurrency": "100",
            "MapChildType": "EXPRESS",
            "ToleratedFailurePercentage": "5",
        }
    )
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "Pipeline": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "RoleArn": "arn:aws:iam::123456789012:role/cosmicai",
                    "Definition": definition,
                },
            }
        },
    }
    matches = lint(json.dumps(template), config=ManualArgs(regions=["us-east-1"]))
    assert [str(m) for m in matches] == []


@pytest.mark.parametrize("child_type", ["STANDARD", "EXPRESS"])
def test_every_task_retries_lambda_transient_errors(child_type: str) -> None:
    definition = render_definition(
        {
            "InitializeFunctionArn": "a",
            "WorkerFunctionArn": "b",
            "SummarizeFunctionArn": "c",
            "MaxConcurrency": "1",
            "MapChildType": child_type,
            "ToleratedFailurePercentage": "0",
        }
    )
    states = dict(definition["States"])
    states.update(definition["States"]["Distributed Test"]["ItemProcessor"]["States"])
    tasks = {name: s for name, s in states.items() if s["Type"] == "Task"}
    assert set(tasks) == {"Initialize", "Worker", "Summarize"}
    for name, task in tasks.items():
        retried = {e for r in task["Retry"] for e in r["ErrorEquals"]}
        assert {
            "Lambda.ServiceException",
            "Lambda.AWSLambdaException",
            "Lambda.SdkClientException",
            "Lambda.TooManyRequestsException",
        } <= retried, name
    processor = definition["States"]["Distributed Test"]["ItemProcessor"]["ProcessorConfig"]
    assert processor == {"Mode": "DISTRIBUTED", "ExecutionType": child_type}


def test_template_parameters_reach_the_state_machine() -> None:
    class Loader(yaml.SafeLoader):
        pass

    # CloudFormation's short-form tags (!Ref, !Sub, ...) as plain values, enough to read it.
    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)
    machine = template["Resources"]["PipelineStateMachine"]["Properties"]
    text = (ROOT / machine["DefinitionUri"]).read_text()
    for placeholder in machine["DefinitionSubstitutions"]:
        assert "${" + placeholder + "}" in text
    assert machine["Type"] == "STANDARD"
    # the Map's child type is a parameter, passed to the definition and to the functions
    # (Summarize prices the children by it)
    assert template["Parameters"]["MapChildType"]["AllowedValues"] == ["STANDARD", "EXPRESS"]
    assert "MapChildType" in machine["DefinitionSubstitutions"]
    assert "COSMICAI_MAP_CHILD_TYPE" in template["Globals"]["Function"]["Environment"]["Variables"]
    for function in ("InitializeFunction", "WorkerFunction", "SummarizeFunction"):
        props = template["Resources"][function]["Properties"]
        assert props["Handler"] == "app.lambda_handler"
        assert (ROOT / props["CodeUri"] / "app.py").is_file()
    assert template["Globals"]["Function"]["Runtime"] == "python3.12"


@pytest.fixture(scope="module")
def sam_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _python312():
        pytest.skip("sam build needs python3.12 on PATH (pyenv has one on these machines)")
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    result = subprocess.run(
        [_sam(), "build", "--template", str(ROOT / "template.yaml"), "--build-dir", str(build_dir)],
        capture_output=True,
        text=True,
        env=_sam_env(),
        cwd=ROOT,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return build_dir


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.mark.slow
def test_built_functions_fit_lambda_limits(
    sam_build: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layers = _size(sam_build / "DependenciesLayer") + _size(sam_build / "CosmicaiLayer")
    sizes = {}
    for function in ("InitializeFunction", "WorkerFunction", "SummarizeFunction"):
        sizes[function] = _size(sam_build / function) + layers
        assert sizes[function] < LAMBDA_UNZIPPED_LIMIT, f"{function}: {sizes[function]:,} bytes"
    with capsys.disabled():
        print("\nunzipped size, function + layers (Lambda's limit 250 MB):")
        for name in ("DependenciesLayer", "CosmicaiLayer"):
            print(f"  {name:20s} {_size(sam_build / name) / 2**20:7.1f} MB")
        for function, size in sizes.items():
            print(f"  {function:20s} {size / 2**20:7.1f} MB in all")
    # the package layer carries the reference model the default request names and the INT8
    # AstroMAE the demo runs; the fp32 AstroMAE is left for S3
    models = sam_build / "CosmicaiLayer/python/cosmicai/models"
    assert (models / "reference.onnx").is_file()
    assert (models / "astromae-int8.onnx").is_file()
    assert not (models / "astromae.onnx").exists()


@pytest.mark.slow
def test_built_worker_runs_on_python312(sam_build: Path, tmp_path: Path, aws_env: None) -> None:
    # GIVEN an S3 endpoint on loopback with a planned run
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="cosmicai-data")
        from cosmicai.data.format import BYTES_PER_SAMPLE
        from cosmicai.data.synth import synthesize
        from cosmicai.pipeline import initialize
        from cosmicai.request import parse_request
        from cosmicai.storage import Location, S3Storage

        storage = S3Storage(client)
        synthesize(
            Location(storage, "cosmicai-data", "25MB/"),
            size_bytes=30 * BYTES_PER_SAMPLE,
            partition_bytes=30 * BYTES_PER_SAMPLE,
            processes=1,
        )
        pointer = initialize(
            parse_request({"bucket": "cosmicai-data", "data_prefix": "25MB", "run_id": "built"}),
            storage,
        )
        # WHEN the built worker (function + both layers, nothing else) runs on Python 3.12
        script = (
            "import json, sys\n"
            "import app\n"
            "class Context:\n"
            "    function_name = 'cosmicai-worker'; memory_limit_in_mb = 2048\n"
            "    invoked_function_arn = 'arn:aws:lambda:us-east-1:123456789012:function:w'\n"
            "    aws_request_id = 'r'\n"
            "item = {'run_id': 'built', 'bucket': 'cosmicai-data', 'rank': 0, 'world_size': 1,\n"
            f"        'run_prefix': {pointer.run_prefix!r}}}\n"
            "print('RESULT', json.dumps(app.lambda_handler(item, Context())))\n"
        )
        python_path = os.pathsep.join(
            str(p)
            for p in (
                sam_build / "WorkerFunction",
                sam_build / "DependenciesLayer" / "python",
                sam_build / "CosmicaiLayer" / "python",
            )
        )
        env = {
            **os.environ,
            "PYTHONPATH": python_path,
            "PYTHONNOUSERSITE": "1",
            "AWS_ENDPOINT_URL": endpoint,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "cosmicai",
        }
        python312 = _python312()
        assert python312
        result = subprocess.run(
            [python312, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            cwd=tmp_path,
        )
        # THEN it predicts every sample
        assert result.returncode == 0, result.stderr[-3000:]
        line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
        output: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
        assert output == {"rank": 0, "status": "ok", "samples": 30, "total_s": output["total_s"]}
        assert sys.version_info >= (3, 11)
    finally:
        server.stop()


def test_dashboard_is_valid_json_and_charts_metrics_we_emit() -> None:
    import re

    class Loader(yaml.SafeLoader):
        pass

    def value(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        return loader.construct_scalar(node)  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", value)
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)
    body_template = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"][0]
    body = json.loads(re.sub(r"\$\{[^}]+\}", "X", body_template))
    charted = {
        m[1]
        for w in body["widgets"]
        for m in w["properties"]["metrics"]
        if isinstance(m[0], str) and m[0] == "cosmicai"
    }
    emitted = set(
        re.findall(r'add_metric\("(\w+)"', (ROOT / "src/cosmicai/aws/stages.py").read_text())
    )
    assert charted, "the dashboard charts none of our metrics"
    assert charted <= emitted, f"charted but never emitted: {charted - emitted}"
