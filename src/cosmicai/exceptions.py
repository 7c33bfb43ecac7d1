"""Errors raised by cosmicai.

The class names become a Lambda ``errorType``, which the state machine's Retry and Catch
clauses match, so they are named for what went wrong, not for where.
"""

from __future__ import annotations


class CosmicAIError(Exception):
    """Base class of every error cosmicai raises on purpose."""


class InvalidRequestError(CosmicAIError, ValueError):
    """The run request (or a stage event) has missing or wrong fields; the message names each."""


class StorageError(CosmicAIError):
    """The object store could not be read or written."""


class ObjectNotFoundError(StorageError):
    """A key that must exist does not."""


class InvalidLocationError(CosmicAIError, ValueError):
    """A storage URI or path could not be understood."""


class PartitionFormatError(CosmicAIError):
    """A partition object is corrupt, truncated or not a cosmicai partition."""


class ModelError(CosmicAIError):
    """The ONNX model could not be loaded or does not have the expected inputs and output."""


class PlanError(CosmicAIError):
    """The run cannot be planned (no partitions, more ranks than partitions, ...)."""


class RankFailedError(CosmicAIError):
    """A worker rank could not finish; its rank result names the cause."""
