"""Object storage: one interface, two backends (Amazon S3 and a local directory).

Both are addressed like S3, by (bucket, key). The local backend maps a bucket to a folder of
its root directory, so a dataset written to ``DIR/cosmicai-data/25MB/`` is the same dataset a
run reads with ``--storage DIR``, ``data_bucket=cosmicai-data`` and ``data_prefix=25MB``.

Promises both backends keep:
- ``put`` never leaves a partial object visible (S3 PUT is atomic; locally a temporary file
  in the same folder is renamed over the target);
- ``list`` returns every key under a prefix, in S3's lexicographic order, however many;
- ``get`` of a missing key raises :class:`ObjectNotFoundError` naming bucket and key.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import urlparse

from cosmicai.constants import ENV_RANGED_GET_THRESHOLD, ENV_STORAGE
from cosmicai.exceptions import (
    InvalidLocationError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Part size of concurrent ranged GETs (S3 serves each connection at roughly 50-100 MB/s, so
#: a 100 MB partition read by 8 connections arrives several times sooner).
RANGE_PART_BYTES = 8 * 1024 * 1024
DEFAULT_RANGED_GET_THRESHOLD = 16 * 1024 * 1024
MAX_RANGE_WORKERS = 8

# Names of local temporary files start with this, so listings never show them.
_TMP_PREFIX = ".cosmicai-tmp-"

#: S3 error codes that say "not now" rather than "never": throttling and server-side faults.
TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "500",
        "502",
        "503",
        "504",
    }
)
#: Attempts botocore makes per S3 call (with exponential backoff and jitter, its "standard"
#: retry mode) before a transient error reaches cosmicai.
S3_MAX_ATTEMPTS = 6


class ObjectInfo(NamedTuple):
    key: str
    size: int


@runtime_checkable
class Storage(Protocol):
    """What cosmicai needs of an object store."""

    #: A short description for logs and errors, e.g. ``s3`` or ``file:///data``.
    description: str
    #: Requests made so far, by S3 request type (GET, HEAD, PUT, LIST, DELETE), for the bill.
    requests: Counter[str]

    def get(self, bucket: str, key: str) -> bytes | bytearray:
        """The whole object. Raises ObjectNotFoundError when it does not exist."""

    def put(self, bucket: str, key: str, data: bytes | bytearray | memoryview) -> None:
        """Write the whole object atomically: readers see the old object or the new one."""

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in lexicographic key order."""

    def exists(self, bucket: str, key: str) -> bool: ...

    def delete(self, bucket: str, key: str) -> None:
        """Remove an object; removing a missing object is not an error (as on S3)."""


class S3Storage:
    """Amazon S3 (or anything that speaks its API) through boto3.

    The client is injected so tests hand in a moto-backed one; built from the default
    session otherwise, which honours ``AWS_ENDPOINT_URL`` and the usual credential chain.
    """

    description = "s3"

    def __init__(self, client: S3Client | None = None, ranged_get_threshold: int | None = None):
        if client is None:
            import boto3
            from botocore.config import Config

            # AWS_MAX_ATTEMPTS, the SDKs' own setting, still wins when it is set.
            attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", S3_MAX_ATTEMPTS))
            client = boto3.client(
                "s3", config=Config(retries={"mode": "standard", "max_attempts": attempts})
            )
        self.client = client
        if ranged_get_threshold is None:
            ranged_get_threshold = int(
                os.environ.get(ENV_RANGED_GET_THRESHOLD, DEFAULT_RANGED_GET_THRESHOLD)
            )
        self.ranged_get_threshold = ranged_get_threshold
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.requests[kind] += n

    def _error(self, exc: Exception, bucket: str, key: str, action: str) -> StorageError:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFoundError(f"s3://{bucket}/{key} does not exist")
            if code == "NoSuchBucket":
                return ObjectNotFoundError(f"bucket {bucket!r} does not exist")
            if code in TRANSIENT_S3_CODES or status >= 500:
                return TransientStorageError(
                    f"could not {action} s3://{bucket}/{key} (S3 {code or status}, still "
                    f"failing after the client's retries): {exc}"
                )
        if isinstance(exc, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
            return TransientStorageError(f"could not {action} s3://{bucket}/{key}: {exc}")
        return StorageError(f"could not {action} s3://{bucket}/{key}: {exc}")

    def get(self, bucket: str, key: str) -> bytes | bytearray:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._count("HEAD")
            head = self.client.head_object(Bucket=bucket, Key=key)
            size = head["ContentLength"]
            if size <= self.ranged_get_threshold:
                self._count("GET")
                body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
                return body
            return self._get_ranges(bucket, key, size, head["ETag"])
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, bucket, key, "read") from exc

    def _get_ranges(self, bucket: str, key: str, size: int, etag: str) -> bytearray:
        """Fetch parts concurrently straight into one buffer (a single copy of the object).

        ``IfMatch`` pins every part to the version we sized, so an object replaced midway
        fails the read instead of splicing two versions together.
        """
        buffer = bytearray(size)
        view = memoryview(buffer)

        def fetch(start: int) -> None:
            self._count("GET")
            end = min(start + RANGE_PART_BYTES, size) - 1
            response = self.client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes={start}-{end}", IfMatch=etag
            )
            stream = response["Body"]
            position = start
            while position <= end:
                chunk = stream.read(min(1 << 20, end + 1 - position))
                if not chunk:
                    raise StorageError(
                        f"s3://{bucket}/{key}: range {start}-{end} ended early at {position}"
                    )
                view[position : position + len(chunk)] = chunk
                position += len(chunk)

        starts = range(0, size, RANGE_PART_BYTES)
        with ThreadPoolExecutor(max_workers=min(MAX_RANGE_WORKERS, len(starts))) as pool:
            for future in [pool.submit(fetch, s) for s in starts]:
                future.result()
        return buffer

    def put(self, bucket: str, key: str, data: bytes | bytearray | memoryview) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self._count("PUT")
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, bucket, key, "write") from exc

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        # The paginator follows continuation tokens: a single list_objects_v2 call stops at
        # 1,000 keys, which is how the reference implementation lost most of its large runs.
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                self._count("LIST")
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"], item["Size"])
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, bucket, prefix, "list") from exc

    def exists(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        self._count("HEAD")
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, bucket, key, "check")
            if isinstance(error, ObjectNotFoundError):
                return False
            raise error from exc

    def delete(self, bucket: str, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self._count("DELETE")
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, bucket, key, "delete") from exc


class LocalStorage:
    """A directory whose sub-folders are buckets and whose files are objects."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).absolute()
        self.description = f"file://{self.root}"
        # Counted as the S3 requests the same calls would make, so a local run's bill
        # estimate has the same request terms as a cloud run's.
        self.requests: Counter[str] = Counter()

    def path(self, bucket: str, key: str) -> Path:
        """The file of an object; refuses names that would escape the bucket's folder."""
        for name, value in (("bucket", bucket), ("key", key)):
            parts = value.split("/")
            if not value or value.startswith("/") or ".." in parts or "\x00" in value:
                raise InvalidLocationError(f"{name} {value!r} is not a valid object name")
        if "/" in bucket:
            raise InvalidLocationError(f"bucket {bucket!r} must not contain '/'")
        return self.root / bucket / key

    def get(self, bucket: str, key: str) -> bytes | bytearray:
        path = self.path(bucket, key)
        self.requests["GET"] += 1
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"{self.description}/{bucket}/{key} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"could not read {path}: {exc}") from exc

    def put(self, bucket: str, key: str, data: bytes | bytearray | memoryview) -> None:
        path = self.path(bucket, key)
        self.requests["PUT"] += 1
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
            try:
                # mkstemp makes the file 0600; an object is an ordinary file, so it gets the
                # mode open() would give it (0666 less the umask).
                os.fchmod(fd, 0o666 & ~_umask())
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"could not write {path}: {exc}") from exc

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        bucket_dir = self.path(bucket, "x").parent
        if not bucket_dir.is_dir():
            raise ObjectNotFoundError(f"bucket {bucket!r} does not exist in {self.description}")
        # Walk only the folder the prefix points into, then filter by the full prefix: an S3
        # prefix is a string prefix, not a folder ("runs/1" matches "runs/10/x").
        folder = prefix.rpartition("/")[0]
        parts = folder.split("/")
        if "\x00" in prefix or folder.startswith("/") or ".." in parts:
            # Whatever a caller hands in, a listing never leaves its bucket's folder.
            raise InvalidLocationError(f"prefix {prefix!r} is not a valid key prefix")
        start = bucket_dir / folder if folder else bucket_dir
        if not start.resolve().is_relative_to(bucket_dir.resolve()):
            raise InvalidLocationError(f"prefix {prefix!r} leads outside bucket {bucket!r}")
        keys: list[ObjectInfo] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            for filename in filenames:
                if filename.startswith(_TMP_PREFIX):
                    continue
                full = Path(dirpath) / filename
                key = full.relative_to(bucket_dir).as_posix()
                if key.startswith(prefix):
                    keys.append(ObjectInfo(key, full.stat().st_size))
        keys.sort()
        # S3 returns at most 1,000 keys per LIST request.
        self.requests["LIST"] += max(1, -(-len(keys) // 1000))
        yield from keys

    def exists(self, bucket: str, key: str) -> bool:
        self.requests["HEAD"] += 1
        return self.path(bucket, key).is_file()

    def delete(self, bucket: str, key: str) -> None:
        self.requests["DELETE"] += 1
        self.path(bucket, key).unlink(missing_ok=True)


_umask_lock = threading.Lock()


def _umask() -> int:
    # Linux reports it without changing it; elsewhere the only way is to set it and put it
    # back (a thread creating a file in between would see 022 for that moment).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def open_storage(spec: str | None = None, *, s3_client: Any = None) -> Storage:
    """The backend named by ``spec``: ``s3`` / ``s3://`` for S3, else a local root directory.

    ``None`` reads ``COSMICAI_STORAGE`` and defaults to S3, which is what Lambda uses.
    """
    if spec is None:
        spec = os.environ.get(ENV_STORAGE, "s3")
    if spec in ("s3", "s3://"):
        return S3Storage(s3_client)
    if spec.startswith("s3://"):
        raise InvalidLocationError(
            f"storage {spec!r}: give 's3' for S3; buckets and prefixes come from the request"
        )
    return LocalStorage(_local_path(spec))


def _local_path(spec: str) -> str:
    if spec.startswith("file://"):
        parsed = urlparse(spec)
        if parsed.netloc not in ("", "localhost"):
            raise InvalidLocationError(f"{spec!r}: file URIs name a local path (file:///path)")
        return parsed.path
    if "://" in spec:
        raise InvalidLocationError(
            f"{spec!r}: unknown storage scheme; use s3://bucket/prefix, file:///path or a path"
        )
    return spec


def join_key(prefix: str, name: str) -> str:
    """Join an object-store prefix and a name with exactly one slash between them."""
    if not prefix:
        return name
    return f"{prefix.rstrip('/')}/{name}"


def as_prefix(value: str) -> str:
    """An object-store prefix with no leading slash and exactly one trailing slash ("" stays
    "": the bucket's top)."""
    value = value.strip("/")
    return f"{value}/" if value else ""


@dataclass(frozen=True)
class Location:
    """A place to read or write objects: a backend, a bucket and a key prefix."""

    storage: Storage
    bucket: str
    prefix: str

    def key(self, name: str) -> str:
        return join_key(self.prefix, name)

    def __str__(self) -> str:
        if isinstance(self.storage, S3Storage):
            return f"s3://{self.bucket}/{self.prefix}"
        return f"{self.storage.description}/{self.bucket}/{self.prefix}".rstrip("/")


def parse_location(uri: str, *, s3_client: Any = None) -> Location:
    """``s3://bucket/prefix``, ``file:///dir`` or a plain directory path.

    A local directory ``a/b/c`` is read as root ``a/b``, bucket ``c``, no prefix: the same
    files as ``--storage a/b`` with bucket ``c``.
    """
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise InvalidLocationError(f"{uri!r} names no bucket (expected s3://bucket/prefix)")
        return Location(S3Storage(s3_client), parsed.netloc, parsed.path.lstrip("/"))
    path = Path(_local_path(uri)).absolute()
    if path == path.parent:
        raise InvalidLocationError(f"{uri!r}: the file-system root cannot hold a dataset")
    return Location(LocalStorage(path.parent), path.name, "")
