"""The run request: what a user (or the state machine's input) asks cosmicai to do.

It accepts the original CosmicAI payload verbatim, e.g.::

    {"bucket": "cosmicai-data", "file_limit": "11", "batch_size": 512, "object_type": "folder",
     "S3_object_name": "Anomaly Detection",
     "script": "/tmp/Anomaly Detection/Inference/inference.py",
     "result_path": "result-partition-100MB/1GB/1", "data_bucket": "cosmicai-data",
     "data_prefix": "100MB"}

``script``, ``object_type`` and ``S3_object_name`` only made sense for the original container
(which downloaded a script and ran it); they are accepted and reported as ignored. Every
problem is reported at once, each naming its field, by :func:`parse_request`.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cosmicai.constants import BUILTIN_MODEL_PREFIX, DEFAULT_MODEL, DEFAULT_RUNS_PREFIX
from cosmicai.exceptions import InvalidRequestError
from cosmicai.layout import ATTEMPT_LENGTH, RunLayout
from cosmicai.model import builtin_models
from cosmicai.storage import as_prefix

#: Fields of the original payload that only the original container used.
IGNORED_FIELDS = ("script", "object_type", "S3_object_name")

# S3's bucket naming rules (the local backend keeps them so a run moves between the two).
# Matched with fullmatch: a `$`-anchored search lets a trailing newline through.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
# Control characters (NUL above all) have no place in a key prefix: S3 takes some, the local
# backend none, and a request that validates must run on both.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: A request file larger than this is not a request (ours are a few hundred bytes); reading
#: stops here, so `cosmicai validate /dev/zero` ends at once.
MAX_REQUEST_BYTES = 64 * 1024
#: More partitions than any dataset has; a larger file_limit is a mistake, not a limit.
MAX_FILE_LIMIT = 10**9
#: S3 refuses keys longer than this many bytes (UTF-8).
MAX_KEY_BYTES = 1024
#: Default samples per inference call for each ONNX Runtime thread. `cosmicai bench model`
#: (docs/astromae-bench.md) ran AstroMAE INT8 the same at 64 and 512 on one thread, fp32 and
#: torch faster at 64; the sweeps' worker memory beyond the partition halved at 64. More
#: threads need bigger calls to keep every thread busy, hence per thread.
BATCH_PER_THREAD = 64
#: Validation context of a request that comes from outside (a file, an execution's input).
_EXTERNAL = {"external": True}


def new_run_id() -> str:
    """A sortable, collision-resistant run id: UTC time plus 6 random hex digits."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class RunRequest(BaseModel):
    """A run of inference over a partitioned dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- fields of the original CosmicAI payload -------------------------------------------
    bucket: str = Field(description="Bucket that receives the run's plan, results and summary.")
    file_limit: int | None = Field(
        default=None,
        ge=1,
        le=MAX_FILE_LIMIT,
        description="Process at most this many partitions (the first ones in numeric order).",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Samples per inference call; by default 64 per inference thread of the "
        "worker (`inference_batch`).",
    )
    result_path: str = Field(
        default=DEFAULT_RUNS_PREFIX,
        description="Prefix under `bucket` for run outputs; each run writes below "
        "`<result_path>/<run_id>/`.",
    )
    data_bucket: str | None = Field(
        default=None, description="Bucket holding the partitions (defaults to `bucket`)."
    )
    data_prefix: str = Field(default="", description="Prefix of the partitions `N.safetensors`.")

    # -- cosmicai's own fields -------------------------------------------------------------
    run_id: str = Field(
        default_factory=new_run_id, description="Names the run; generated when absent."
    )
    world_size: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="Number of worker ranks; default one rank per partition, as CosmicAI.",
    )
    model: str = Field(
        default=DEFAULT_MODEL,
        description="ONNX model (image, magnitudes) -> redshift: `builtin:reference`, "
        "`s3://bucket/key.onnx`, or a local path for local runs.",
    )
    memory_mb: int = Field(
        default=2048,
        ge=128,
        le=10240,
        description="Configured worker memory (Lambda bills this, not the memory used).",
    )
    architecture: Literal["x86_64", "arm64"] = Field(
        default="x86_64", description="Worker architecture, for the price per GB-second."
    )
    ort_threads: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="ONNX Runtime intra-op threads per worker; default COSMICAI_ORT_THREADS, "
        "else the vCPUs the worker really has (affinity and cgroup quota, not the host's).",
    )
    communicator: Literal["off", "direct", "store"] = Field(
        default="off",
        description="Worker-to-worker reduction of the metrics: `off` (Summarize reads every "
        "rank's result), `direct` (hole-punched TCP, object store where a link cannot be made) "
        "or `store` (object store only).",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Ranks that can run at once (the Map's MaxConcurrency, or local workers); "
        "filled in by the deployment or the local runner when absent.",
    )
    ignored_fields: tuple[str, ...] = Field(
        default=(), description="Fields of the original payload that were accepted and ignored."
    )

    @model_validator(mode="before")
    @classmethod
    def _set_aside_container_fields(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        if "ignored_fields" in data and info.context == _EXTERNAL:
            # cosmicai fills it in itself; a request that sets it would hide what was ignored.
            raise ValueError("ignored_fields is set by cosmicai, not by a request")
        data = dict(data)
        ignored = [name for name in IGNORED_FIELDS if name in data]
        for name in ignored:
            data.pop(name)
        if ignored:
            data["ignored_fields"] = tuple(ignored)
        return data

    @field_validator("file_limit", "world_size", "batch_size", mode="before")
    @classmethod
    def _integer_from_string(cls, value: Any) -> Any:
        # The original payload sends file_limit as a string ("11"); accept digits only, so
        # "11.5" or "eleven" are still reported as errors.
        # ASCII only: str.isdigit() and int() also take other scripts' digits ("١١").
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            return int(value.strip())
        if isinstance(value, str) and not value.isascii():
            raise ValueError("must be an integer written with the digits 0-9")
        if isinstance(value, bool):
            raise ValueError("must be an integer, not a boolean")
        return value

    @field_validator("bucket", "data_bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value is not None and not _BUCKET.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid bucket name (3-63 characters: lowercase letters, "
                "digits, '.', '-')"
            )
        return value

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str) -> str:
        if not _RUN_ID.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid run id (1-80 characters: letters, digits, '.', '_', "
                "'-', starting with a letter or digit)"
            )
        return value

    @field_validator("result_path")
    @classmethod
    def _result_path(cls, value: str) -> str:
        value = _key_prefix(value)
        if not value:
            raise ValueError("must not be empty: runs need a prefix of their own")
        return value

    @field_validator("data_prefix")
    @classmethod
    def _data_prefix(cls, value: str) -> str:
        return _key_prefix(value)

    @model_validator(mode="after")
    def _keys_fit(self) -> RunRequest:
        # The longest key a run writes is a rank's predictions file; S3 refuses it past 1,024
        # bytes, which would fail every rank after the whole inference.
        longest = RunLayout(self.run_prefix).predictions(99999, "0" * ATTEMPT_LENGTH)
        size = len(longest.encode())
        if size > MAX_KEY_BYTES:
            raise ValueError(
                f"result_path is too long: with this run_id the run's longest key is {size} "
                f"bytes, S3 allows {MAX_KEY_BYTES}"
            )
        return self

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model")
        if value.startswith(BUILTIN_MODEL_PREFIX):
            name = value[len(BUILTIN_MODEL_PREFIX) :]
            if name not in builtin_models():
                raise ValueError(
                    f"unknown built-in model {name!r}; built-in models: "
                    + ", ".join(f"builtin:{m}" for m in builtin_models())
                )
        return value

    @property
    def source_bucket(self) -> str:
        return self.data_bucket or self.bucket

    @property
    def run_prefix(self) -> str:
        """Every object of this run lives below this prefix of ``bucket``."""
        return f"{self.result_path}{self.run_id}/"

    def inference_batch(self, threads: int) -> int:
        """Samples per inference call for a worker with ``threads`` inference threads."""
        return self.batch_size or BATCH_PER_THREAD * max(1, threads)


def _key_prefix(value: str) -> str:
    """Normalise a key prefix first, then check the normalised value (so " ../.. " is caught)."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (NUL, newline, ...)")
    value = as_prefix(value.strip())
    parts = value.rstrip("/").split("/")
    if value and any(part in ("", ".", "..") or part != part.strip() for part in parts):
        raise ValueError(
            f"{value!r} must be plain names separated by single '/' (no '..', '.', empty or "
            "space-padded parts)"
        )
    return value


def _shown(value: Any) -> str:
    """A given value as the error shows it: JSON, cut short (a 5,000-digit number or a
    megabyte string must not make a 5 KB error line)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return f"an integer of {len(str(abs(value)))} digits"
    text = json.dumps(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "request"
    kind = error["type"]
    if kind == "missing":
        return f"{location}: required field is missing"
    if kind == "extra_forbidden":
        return f"{location}: unknown field"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message  # a check of the whole request: its message names the fields
    if "input" in error and kind not in ("model_type", "dict_type"):
        given = error["input"]
        shown = (
            _shown(given)
            if isinstance(given, str | int | float | bool)
            else f"a JSON {'object' if isinstance(given, dict) else type(given).__name__}"
        )
        return f"{location}: {message} (got {shown})"
    return f"{location}: {message}"


def parse_request(data: Any) -> RunRequest:
    """Validate a run request, naming every bad field in one :class:`InvalidRequestError`."""
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"invalid run request: expected a JSON object, got {type(data).__name__}"
        )
    return _validate(data, _EXTERNAL)


def revalidate(request: RunRequest, **changes: Any) -> RunRequest:
    """``request`` with ``changes``, validated again (cosmicai's own defaults, filled in by a
    deployment or the local runner; the fields it sets itself are kept)."""
    data = {**request.model_dump(exclude_unset=True), **changes, "run_id": request.run_id}
    return _validate(data, None)


def _validate(data: dict[str, Any], context: dict[str, Any] | None) -> RunRequest:
    try:
        return RunRequest.model_validate(data, context=context)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise InvalidRequestError(f"invalid run request: {problems}") from None
    except RecursionError:
        raise InvalidRequestError("invalid run request: nested too deeply") from None


def load_request(path: str | Path) -> RunRequest:
    """Read and validate a request file; a file that is not a JSON request, whatever is wrong
    with it, is a request error naming the fault, never a traceback."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_REQUEST_BYTES + 1)
    except OSError as exc:
        raise InvalidRequestError(f"cannot read request file {path}: {exc.strerror}") from None
    if len(raw) > MAX_REQUEST_BYTES:
        raise InvalidRequestError(
            f"request file {path} is larger than {MAX_REQUEST_BYTES // 1024} KB: not a run request"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"request file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"request file {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidRequestError(f"request file {path} is nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4,300 digits: Python refuses it
        reason = str(exc).split(":", 1)[0]
        raise InvalidRequestError(
            f"request file {path} is not a usable request: {reason}"
        ) from None
    return parse_request(data)
