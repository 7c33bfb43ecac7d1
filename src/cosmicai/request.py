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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cosmicai.constants import BUILTIN_MODEL_PREFIX, DEFAULT_MODEL, DEFAULT_RUNS_PREFIX
from cosmicai.exceptions import InvalidRequestError

#: Fields of the original payload that only the original container used.
IGNORED_FIELDS = ("script", "object_type", "S3_object_name")

# S3's bucket naming rules (the local backend keeps them so a run moves between the two).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def new_run_id() -> str:
    """A sortable, collision-resistant run id: UTC time plus 6 random hex digits."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _prefix(value: str) -> str:
    """An object-store prefix with no leading slash and exactly one trailing slash."""
    value = value.strip().strip("/")
    return f"{value}/" if value else ""


class RunRequest(BaseModel):
    """A run of inference over a partitioned dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- fields of the original CosmicAI payload -------------------------------------------
    bucket: str = Field(description="Bucket that receives the run's plan, results and summary.")
    file_limit: int | None = Field(
        default=None,
        ge=1,
        description="Process at most this many partitions (the first ones in numeric order).",
    )
    batch_size: int = Field(default=512, ge=1, le=65536, description="Samples per inference call.")
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
    def _set_aside_container_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
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
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        if isinstance(value, bool):
            raise ValueError("must be an integer, not a boolean")
        return value

    @field_validator("bucket", "data_bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value is not None and not _BUCKET.match(value):
            raise ValueError(
                f"{value!r} is not a valid bucket name (3-63 characters: lowercase letters, "
                "digits, '.', '-')"
            )
        return value

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str) -> str:
        if not _RUN_ID.match(value):
            raise ValueError(
                f"{value!r} is not a valid run id (1-80 characters: letters, digits, '.', '_', "
                "'-', starting with a letter or digit)"
            )
        return value

    @field_validator("result_path")
    @classmethod
    def _result_path(cls, value: str) -> str:
        value = _prefix(value)
        if not value:
            raise ValueError("must not be empty: runs need a prefix of their own")
        if ".." in value.split("/"):
            raise ValueError(f"{value!r} must not contain '..'")
        return value

    @field_validator("data_prefix")
    @classmethod
    def _data_prefix(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError(f"{value!r} must not contain '..'")
        return _prefix(value)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model")
        if value.startswith(BUILTIN_MODEL_PREFIX):
            from cosmicai.model import builtin_models

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


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "request"
    kind = error["type"]
    if kind == "missing":
        return f"{location}: required field is missing"
    if kind == "extra_forbidden":
        return f"{location}: unknown field"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "input" in error and kind not in ("model_type", "dict_type"):
        given = error["input"]
        shown = json.dumps(given) if isinstance(given, str | int | float | bool) else type(given)
        return f"{location}: {message} (got {shown})"
    return f"{location}: {message}"


def parse_request(data: Any) -> RunRequest:
    """Validate a run request, naming every bad field in one :class:`InvalidRequestError`."""
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"invalid run request: expected a JSON object, got {type(data).__name__}"
        )
    try:
        return RunRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise InvalidRequestError(f"invalid run request: {problems}") from None


def load_request(path: str | Path) -> RunRequest:
    """Read and validate a request file; a file that is not JSON is a request error too."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read request file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"request file {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    return parse_request(data)
