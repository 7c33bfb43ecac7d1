from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosmicai.exceptions import InvalidRequestError
from cosmicai.request import load_request, parse_request

EVENTS = Path(__file__).parents[2] / "events"
ORIGINAL = json.loads((EVENTS / "cosmicai-original.json").read_text())


def test_original_cosmicai_payload_is_accepted_verbatim() -> None:
    # GIVEN the payload the original CosmicAI state machine was started with
    # WHEN parsed
    request = parse_request(ORIGINAL)
    # THEN the string file_limit is a number, container-only fields are reported as ignored
    assert request.file_limit == 11
    assert request.bucket == request.source_bucket == "cosmicai-data"
    assert request.data_prefix == "100MB/"
    assert set(request.ignored_fields) == {"script", "object_type", "S3_object_name"}
    # and the run gets a prefix of its own below result_path, ending with '/'
    assert request.run_prefix == f"result-partition-100MB/1GB/1/{request.run_id}/"


def test_two_requests_get_different_run_ids() -> None:
    assert parse_request(ORIGINAL).run_id != parse_request(ORIGINAL).run_id


def test_missing_bucket_is_named_without_a_traceback_style_message() -> None:
    payload = {k: v for k, v in ORIGINAL.items() if k != "bucket"}
    with pytest.raises(InvalidRequestError) as caught:
        parse_request(payload)
    assert str(caught.value) == "invalid run request: bucket: required field is missing"


def test_every_bad_field_is_named_at_once() -> None:
    payload = {
        **ORIGINAL,
        "file_limit": "eleven",
        "batch_size": 0,
        "data_bucket": "Not_A_Bucket",
        "run_id": "../etc",
        "batchsize": 5,
    }
    with pytest.raises(InvalidRequestError) as caught:
        parse_request(payload)
    message = str(caught.value)
    for field in ("file_limit", "batch_size", "data_bucket", "run_id", "batchsize: unknown field"):
        assert field in message


@pytest.mark.parametrize("value", [True, "11.5", -1, "0"])
def test_file_limit_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="file_limit"):
        parse_request({**ORIGINAL, "file_limit": value})


def test_prefixes_are_normalised() -> None:
    request = parse_request({"bucket": "abc", "data_prefix": "/25MB", "result_path": "out//"})
    assert request.data_prefix == "25MB/"
    assert request.result_path == "out/"
    assert request.data_bucket is None
    assert request.source_bucket == "abc"


def test_unknown_builtin_model_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="unknown built-in model 'nope'"):
        parse_request({"bucket": "abc", "model": "builtin:nope"})


def test_not_an_object() -> None:
    with pytest.raises(InvalidRequestError, match="expected a JSON object, got list"):
        parse_request([1, 2])


def test_request_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidRequestError, match="is not valid JSON"):
        load_request(bad)
    with pytest.raises(InvalidRequestError, match="cannot read request file"):
        load_request(tmp_path / "missing.json")


def test_readme_documents_every_request_field() -> None:
    from cosmicai.request import IGNORED_FIELDS, RunRequest

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `")]
    documented = " ".join(table)
    for field in [*RunRequest.model_fields, *IGNORED_FIELDS]:
        if field != "ignored_fields":
            assert f"`{field}`" in documented, f"README's request table lacks {field}"


def test_inference_batch_is_64_per_thread_unless_the_request_sets_one() -> None:
    default = parse_request({"bucket": "cosmicai-data"})
    assert default.batch_size is None
    assert [default.inference_batch(t) for t in (1, 2, 6)] == [64, 128, 384]
    assert default.inference_batch(0) == 64
    chosen = parse_request({"bucket": "cosmicai-data", "batch_size": "512"})
    assert [chosen.inference_batch(t) for t in (1, 6)] == [512, 512]
