"""Fault matrix, requests: hostile or careless request files and fields (issue 11, items 4-6).

Each case gets one line naming what is wrong and exit status 2 from the CLI, never a traceback.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cosmicai.cli import app
from cosmicai.exceptions import InvalidRequestError
from cosmicai.request import parse_request

runner = CliRunner()
ROOT = Path(__file__).parents[2]
GOOD = {"bucket": "cosmicai-data", "data_prefix": "25MB"}


def _validate_file(path: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", str(path)])
    return result.exit_code, result.output


def _assert_one_line_error(code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error:")
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- item 4: data_prefix is normalised before it is checked -------------------------------


@pytest.mark.parametrize("prefix", [" ../.. ", "25MB/ ../", "./25MB", "a//b"])
def test_padded_parent_prefix_is_refused(prefix: str) -> None:
    # GIVEN a data_prefix that leaves its bucket once its padding is stripped
    # WHEN validated / THEN it is refused, naming the field
    with pytest.raises(InvalidRequestError, match="data_prefix"):
        parse_request({**GOOD, "data_prefix": prefix})


# -- item 5: request files that used to give tracebacks -----------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_request_file_not_in_utf8_is_one_line(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "request.json"
    path.write_bytes(json.dumps({**GOOD, "run_id": "café"}, ensure_ascii=False).encode(encoding))
    _assert_one_line_error(*_validate_file(path), "not UTF-8")


def test_deeply_nested_request_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    # (30,000 deep fits the 64 KB size bound; Python's parser gives up at about 1,000)
    path.write_text("[" * 30_000 + "]" * 30_000)
    _assert_one_line_error(*_validate_file(path), "nested too deeply")


def test_five_thousand_digit_integer_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text('{"bucket": "cosmicai-data", "file_limit": ' + "9" * 5000 + "}")
    code, output = _validate_file(path)
    _assert_one_line_error(code, output, "request.json")
    assert len(output) < 400


def test_nul_in_data_prefix_is_refused_at_validation(tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps({**GOOD, "data_prefix": "25MB\x00x"}))
    _assert_one_line_error(*_validate_file(path), "data_prefix", "control characters")


def _limit_memory() -> None:
    # The old code read /dev/zero until MemoryError: cap the address space so a regression
    # fails fast instead of eating the machine.
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def test_validate_dev_zero_stops_reading() -> None:
    # GIVEN an endless "request file" / WHEN validated by the real command
    completed = subprocess.run(
        [sys.executable, "-m", "cosmicai", "validate", "/dev/zero"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "COLUMNS": "200"},
        check=False,
    )
    # THEN it stops at the size bound with one line and exit status 2
    _assert_one_line_error(completed.returncode, completed.stderr, "larger than")


# -- item 6: smaller field faults ----------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("run_id", "run1\n"), ("bucket", "cosmicai-data\n")])
def test_trailing_newline_is_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        parse_request({**GOOD, field: value})


def test_result_path_whose_keys_exceed_s3_limit_is_refused() -> None:
    # GIVEN a result_path that leaves a run's longest key above S3's 1,024 bytes
    request = {**GOOD, "result_path": "r" * 990, "run_id": "x"}
    # THEN it is refused at validation, not after every rank's inference
    with pytest.raises(InvalidRequestError, match=r"result_path is too long.*1024"):
        parse_request(request)
    # and one that fits is accepted
    assert parse_request({**request, "result_path": "r" * 900}).run_id == "x"


def test_internal_ignored_fields_cannot_be_set_by_a_request() -> None:
    with pytest.raises(InvalidRequestError, match="ignored_fields"):
        parse_request({**GOOD, "ignored_fields": ["bucket"]})


@pytest.mark.parametrize(
    "value", [10**4000, -(10**4000), "9" * 4000], ids=["4001 digits", "negative", "string"]
)
def test_huge_file_limit_gives_a_short_error(value: object) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request({**GOOD, "file_limit": value})
    message = str(caught.value)
    assert "file_limit" in message
    assert len(message) < 200, len(message)


@pytest.mark.parametrize("digits", ["١١", "１１", "১১"])
def test_non_ascii_digits_are_not_numbers(digits: str) -> None:
    with pytest.raises(InvalidRequestError, match="file_limit"):
        parse_request({**GOOD, "file_limit": digits})
