"""Errors raised by cosmicai.

The class names become a Lambda ``errorType``, which the state machine's Retry and Catch
clauses match, so they are named for what went wrong, not for where.
"""

from __future__ import annotations


class CosmicAIError(Exception):
    """Base class of every error cosmicai raises on purpose."""


class InvalidRequestError(CosmicAIError, ValueError):
    """The run request (or a stage event) has missing or wrong fields; the message names each."""


class RunExistsError(InvalidRequestError):
    """The request's run id names a run that already exists (resume it, or choose another)."""


class StorageError(CosmicAIError):
    """The object store could not be read or written."""


class ObjectNotFoundError(StorageError):
    """A key that must exist does not."""


class TransientStorageError(StorageError):
    """The object store said "not now" (S3 throttling, a 5xx, a dropped connection) after the
    client's own retries; trying again later may succeed. The state machine retries Initialize
    and Summarize on it."""


class InvalidLocationError(CosmicAIError, ValueError):
    """A storage URI or path could not be understood."""


class PartitionFormatError(CosmicAIError):
    """A partition object is corrupt, truncated or not a cosmicai partition."""


class ModelError(CosmicAIError):
    """The ONNX model could not be loaded or does not have the expected inputs and output."""


class PlanError(CosmicAIError):
    """The run cannot be planned (no partitions, more ranks than partitions, ...)."""


class RankFailedError(CosmicAIError):
    """A worker rank could not finish; its rank result names the cause.

    The subclasses below name causes the state machine treats differently: it retries a rank
    that failed with :class:`StorageUnavailableError` and fails the others at once.
    """


class StorageUnavailableError(RankFailedError):
    """A rank failed on a transient storage error (throttled, 5xx): retrying may succeed."""


class CorruptPartitionError(RankFailedError):
    """A rank failed because one of its partitions is corrupt: retrying cannot help."""


class BadModelError(RankFailedError):
    """A rank failed because the model cannot be loaded or run: retrying cannot help."""


class InvalidRunError(RankFailedError):
    """A rank failed because its work item or the run's plan is wrong: retrying cannot help."""


class RendezvousError(CosmicAIError):
    """The rendezvous server could not be reached, or it refused or failed a request.

    ``code`` is the native protocol's error code when the server sent one (see
    ``docs/rendezvous-protocol.md``), else None.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class RendezvousProtocolError(RendezvousError):
    """A rendezvous peer sent bytes that break the protocol; the message names the fault."""


class RendezvousRefusedError(RendezvousError):
    """The rendezvous server answered a request with an error code."""


class RendezvousAuthError(RendezvousRefusedError):
    """The rendezvous server refused the credentials (wrong secret, clock skew, replay)."""


class RendezvousTimeoutError(RendezvousError):
    """No partner or no complete world arrived before the deadline."""


class WorldIncompleteError(RendezvousRefusedError):
    """The job's deadline passed before every rank of the world had registered."""


class RendezvousConfigError(CosmicAIError, ValueError):
    """The rendezvous server's settings or secret source are wrong; the message names which."""


class DnsRegistrationError(RendezvousError):
    """The rendezvous server could not point its Route 53 record at its own public IP."""


class CommError(CosmicAIError):
    """A collective or point-to-point operation of the communicator failed.

    ``peer`` is the rank the failure involves and ``operation`` the communicator call
    (``allreduce``, ``recv``, ...) when known; both are also in the message.
    """

    def __init__(
        self, message: str, *, peer: int | None = None, operation: str | None = None
    ) -> None:
        super().__init__(message)
        self.peer = peer
        self.operation = operation


class CommTimeoutError(CommError):
    """A communicator operation did not finish before its deadline (a slow or silent peer)."""


class PeerLostError(CommError):
    """A peer closed its link or its process died while this rank still needed it."""


class PeerAuthError(CommError):
    """A peer link failed the mutual authentication handshake (wrong key, rank, or silence)."""


class CommProtocolError(CommError):
    """A peer sent bytes that are not a valid frame or message; the message names the fault."""
