"""Names of environment variables and fixed values, in one place.

Settings resolve as: explicit argument > environment variable > default.
"""

from __future__ import annotations

#: Where run data lives: "s3" (or "s3://") for Amazon S3, otherwise a local directory whose
#: sub-folders play the role of buckets.
ENV_STORAGE = "COSMICAI_STORAGE"
#: ONNX Runtime intra-op threads per worker (Lambda gives about one vCPU per 1,769 MB).
ENV_ORT_THREADS = "COSMICAI_ORT_THREADS"
#: "0" turns ONNX Runtime's CPU memory arena off (on by default: lower peak RSS, same speed).
ENV_ORT_ARENA = "COSMICAI_ORT_ARENA"
#: Configured Lambda memory of the worker, used for the cost estimate when the request omits it.
ENV_WORKER_MEMORY_MB = "COSMICAI_WORKER_MEMORY_MB"
#: Objects larger than this are fetched from S3 with concurrent ranged GETs.
ENV_RANGED_GET_THRESHOLD = "COSMICAI_RANGED_GET_THRESHOLD"

# Set by the SAM template on the Lambda functions: what this deployment may touch, so a request
# outside it fails at Initialize with a clear message instead of AccessDenied in a worker.
#: The deployment's bucket: requests may name no other bucket or data_bucket.
ENV_DEPLOYMENT_BUCKET = "COSMICAI_BUCKET"
#: Prefix that every request's data_prefix must start with ("" allows the whole bucket).
ENV_DATA_PREFIX = "COSMICAI_DATA_PREFIX"
#: Prefix that every request's result_path must start with ("" allows the whole bucket).
ENV_RESULTS_PREFIX = "COSMICAI_RESULTS_PREFIX"
#: Worker architecture, for the cost estimate when the request does not say.
ENV_ARCHITECTURE = "COSMICAI_ARCHITECTURE"
#: The Distributed Map's MaxConcurrency: a communicator needs every rank alive at once.
ENV_MAX_CONCURRENCY = "COSMICAI_MAX_CONCURRENCY"
#: The Distributed Map's child execution type (STANDARD or EXPRESS), for the cost estimate.
ENV_MAP_CHILD_TYPE = "COSMICAI_MAP_CHILD_TYPE"
#: host:port of the rendezvous server workers use to punch direct links (set by the template
#: when RendezvousEnabled, and by the local runner, which starts one).
ENV_RENDEZVOUS = "COSMICAI_RENDEZVOUS"

DEFAULT_RUNS_PREFIX = "runs/"
BUILTIN_MODEL_PREFIX = "builtin:"
DEFAULT_MODEL = "builtin:reference"
#: What `cosmicai demo` runs: AstroMAE, the CosmicAI workload, quantized to INT8 (it passed the
#: accuracy guard of `cosmicai model quantize`; docs/astromae.md).
DEMO_MODEL = "builtin:astromae-int8"

# The rendezvous server (`cosmicai rendezvous serve`) and its clients. The secret is shared by
# the server and every worker of a deployment; ECS and Lambda inject it from Secrets Manager.
ENV_RENDEZVOUS_HOST = "COSMICAI_RENDEZVOUS_HOST"
ENV_RENDEZVOUS_PORT = "COSMICAI_RENDEZVOUS_PORT"
ENV_RENDEZVOUS_HEALTH_HOST = "COSMICAI_RENDEZVOUS_HEALTH_HOST"
ENV_RENDEZVOUS_HEALTH_PORT = "COSMICAI_RENDEZVOUS_HEALTH_PORT"
ENV_RENDEZVOUS_SECRET = "COSMICAI_RENDEZVOUS_SECRET"
ENV_RENDEZVOUS_SECRET_FILE = "COSMICAI_RENDEZVOUS_SECRET_FILE"
ENV_RENDEZVOUS_SECRET_SSM_PARAMETER = "COSMICAI_RENDEZVOUS_SECRET_SSM_PARAMETER"
ENV_RENDEZVOUS_SECRET_ARN = "COSMICAI_RENDEZVOUS_SECRET_ARN"
ENV_RENDEZVOUS_NO_AUTH = "COSMICAI_RENDEZVOUS_NO_AUTH"
ENV_RENDEZVOUS_TCPUNCH = "COSMICAI_RENDEZVOUS_TCPUNCH"
ENV_RENDEZVOUS_MAX_CONNECTIONS = "COSMICAI_RENDEZVOUS_MAX_CONNECTIONS"
ENV_RENDEZVOUS_MAX_WAITING = "COSMICAI_RENDEZVOUS_MAX_WAITING"
ENV_RENDEZVOUS_MAX_WAITING_PER_ADDRESS = "COSMICAI_RENDEZVOUS_MAX_WAITING_PER_ADDRESS"
ENV_RENDEZVOUS_MAX_CONNECTIONS_PER_ADDRESS = "COSMICAI_RENDEZVOUS_MAX_CONNECTIONS_PER_ADDRESS"
ENV_RENDEZVOUS_MAX_UNAUTHENTICATED = "COSMICAI_RENDEZVOUS_MAX_UNAUTHENTICATED"
ENV_RENDEZVOUS_MAX_UNAUTHENTICATED_PER_ADDRESS = (
    "COSMICAI_RENDEZVOUS_MAX_UNAUTHENTICATED_PER_ADDRESS"
)
ENV_RENDEZVOUS_MAX_TCPUNCH_WAITING = "COSMICAI_RENDEZVOUS_MAX_TCPUNCH_WAITING"
ENV_RENDEZVOUS_MAX_TCPUNCH_WAITING_PER_ADDRESS = (
    "COSMICAI_RENDEZVOUS_MAX_TCPUNCH_WAITING_PER_ADDRESS"
)
ENV_RENDEZVOUS_MAX_WORLD_SIZE = "COSMICAI_RENDEZVOUS_MAX_WORLD_SIZE"
ENV_RENDEZVOUS_MAX_FRAME_BYTES = "COSMICAI_RENDEZVOUS_MAX_FRAME_BYTES"
ENV_RENDEZVOUS_HELLO_TIMEOUT = "COSMICAI_RENDEZVOUS_HELLO_TIMEOUT"
ENV_RENDEZVOUS_IDLE_TIMEOUT = "COSMICAI_RENDEZVOUS_IDLE_TIMEOUT"
ENV_RENDEZVOUS_TCPUNCH_WAIT = "COSMICAI_RENDEZVOUS_TCPUNCH_WAIT"
ENV_RENDEZVOUS_MAX_PAIR_WAIT = "COSMICAI_RENDEZVOUS_MAX_PAIR_WAIT"
ENV_RENDEZVOUS_MAX_WORLD_DEADLINE = "COSMICAI_RENDEZVOUS_MAX_WORLD_DEADLINE"
ENV_RENDEZVOUS_AUTH_WINDOW = "COSMICAI_RENDEZVOUS_AUTH_WINDOW"
ENV_RENDEZVOUS_ROUTE53_ZONE_ID = "COSMICAI_RENDEZVOUS_ROUTE53_ZONE_ID"
ENV_RENDEZVOUS_ROUTE53_RECORD_NAME = "COSMICAI_RENDEZVOUS_ROUTE53_RECORD_NAME"
ENV_RENDEZVOUS_ROUTE53_TTL = "COSMICAI_RENDEZVOUS_ROUTE53_TTL"
ENV_RENDEZVOUS_PUBLIC_IP = "COSMICAI_RENDEZVOUS_PUBLIC_IP"
ENV_RENDEZVOUS_LOG_LEVEL = "COSMICAI_RENDEZVOUS_LOG_LEVEL"
ENV_RENDEZVOUS_EVENT_LOOP = "COSMICAI_RENDEZVOUS_EVENT_LOOP"
#: Injected by ECS into every container (platform 1.4.0+); the task's own network metadata.
ENV_ECS_CONTAINER_METADATA_URI_V4 = "ECS_CONTAINER_METADATA_URI_V4"

DEFAULT_RENDEZVOUS_PORT = 10000
DEFAULT_RENDEZVOUS_HEALTH_PORT = 8080

# The communicator (cosmicai.comm): deadlines of its operations and of direct-link attempts.
#: Seconds one communicator operation (a collective, a send or a receive) may take.
ENV_COMM_DEADLINE = "COSMICAI_COMM_DEADLINE"
#: Seconds a direct link may take to set up before that link falls back to the object store.
ENV_COMM_LINK_DEADLINE = "COSMICAI_COMM_LINK_DEADLINE"
#: Largest frame payload a rank accepts from a peer, in bytes.
ENV_COMM_MAX_FRAME_BYTES = "COSMICAI_COMM_MAX_FRAME_BYTES"
#: Longest pause, in seconds, between two polls of the object store for a peer's message.
ENV_COMM_STORE_POLL_MAX = "COSMICAI_COMM_STORE_POLL_MAX"

DEFAULT_COMM_DEADLINE = 60.0
DEFAULT_COMM_LINK_DEADLINE = 5.0
#: A 2 GB worker survives a frame this large: the receiver holds it once more while decoding.
DEFAULT_COMM_MAX_FRAME_BYTES = 256 * 2**20
DEFAULT_COMM_STORE_POLL_MAX = 0.1
