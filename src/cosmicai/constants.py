"""Names of environment variables and fixed values, in one place.

Settings resolve as: explicit argument > environment variable > default.
"""

from __future__ import annotations

#: Where run data lives: "s3" (or "s3://") for Amazon S3, otherwise a local directory whose
#: sub-folders play the role of buckets.
ENV_STORAGE = "COSMICAI_STORAGE"
#: ONNX Runtime intra-op threads per worker (Lambda gives about one vCPU per 1,769 MB).
ENV_ORT_THREADS = "COSMICAI_ORT_THREADS"
#: Configured Lambda memory of the worker, used for the cost estimate when the request omits it.
ENV_WORKER_MEMORY_MB = "COSMICAI_WORKER_MEMORY_MB"
#: Objects larger than this are fetched from S3 with concurrent ranged GETs.
ENV_RANGED_GET_THRESHOLD = "COSMICAI_RANGED_GET_THRESHOLD"

DEFAULT_RUNS_PREFIX = "runs/"
BUILTIN_MODEL_PREFIX = "builtin:"
DEFAULT_MODEL = "builtin:reference"
