from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from cosmicai.exceptions import InvalidLocationError, ObjectNotFoundError
from cosmicai.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    open_storage,
    parse_location,
)
from harness.data import BUCKET


def test_put_get_list_delete(storage: Storage) -> None:
    # GIVEN objects written under two prefixes
    storage.put(BUCKET, "runs/1/a.json", b"a")
    storage.put(BUCKET, "runs/10/b.json", b"bb")
    storage.put(BUCKET, "data/x", b"xyz")
    # WHEN listed by prefix
    keys = [(o.key, o.size) for o in storage.list(BUCKET, "runs/1")]
    # THEN the prefix is a string prefix (as on S3), in lexicographic order, with sizes
    assert keys == [("runs/1/a.json", 1), ("runs/10/b.json", 2)]
    assert [o.key for o in storage.list(BUCKET, "runs/1/")] == ["runs/1/a.json"]
    assert storage.get(BUCKET, "data/x") == b"xyz"
    assert storage.exists(BUCKET, "data/x")
    storage.delete(BUCKET, "data/x")
    storage.delete(BUCKET, "data/x")  # deleting twice is fine, as on S3
    assert not storage.exists(BUCKET, "data/x")


def test_missing_object_is_named(storage: Storage) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"nope/missing\.bin"):
        storage.get(BUCKET, "nope/missing.bin")


@pytest.mark.slow
def test_listing_is_complete_past_1000_keys(storage: Storage) -> None:
    # GIVEN more keys than one S3 LIST page returns
    for i in range(1, 1206):
        storage.put(BUCKET, f"many/{i}.safetensors", b"")
    # WHEN listed
    keys = [o.key for o in storage.list(BUCKET, "many/")]
    # THEN every key is there, and S3 was asked for more than one page
    assert len(keys) == 1205
    assert storage.requests["LIST"] >= 2


def test_overwrite_replaces_whole_object(storage: Storage) -> None:
    storage.put(BUCKET, "k", b"old" * 1000)
    storage.put(BUCKET, "k", b"new")
    assert storage.get(BUCKET, "k") == b"new"


@pytest.mark.slow
def test_large_object_is_read_with_ranged_gets(s3_client: Any) -> None:
    # GIVEN an object above the ranged-read threshold
    storage = S3Storage(s3_client, ranged_get_threshold=1024)
    data = os.urandom(3 * 8 * 1024 * 1024 + 12345)
    storage.put(BUCKET, "big.bin", data)
    # WHEN read
    got = storage.get(BUCKET, "big.bin")
    # THEN it arrives whole, in 4 ranged GETs
    assert bytes(got) == data
    assert storage.requests["GET"] == 4


def test_s3_client_is_built_from_the_environment(aws_env: None) -> None:
    # boto3 honours AWS_ENDPOINT_URL itself; we must not build a client that ignores it.
    os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    try:
        storage = S3Storage()
        assert storage.client.meta.endpoint_url == "http://127.0.0.1:9"
    finally:
        del os.environ["AWS_ENDPOINT_URL"]


def test_local_put_never_shows_a_partial_file(tmp_path: Path) -> None:
    # GIVEN a reader polling an object while a writer keeps replacing it with large bodies
    storage = LocalStorage(tmp_path)
    bodies = [bytes([i]) * 2_000_000 for i in range(5)]
    storage.put("b", "obj", bodies[0])
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = storage.get("b", "obj")
            assert len(data) == 2_000_000
            assert data.count(data[:1]) == len(data)
            seen.add(data[0])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for body in bodies * 3:
            storage.put("b", "obj", body)
    finally:
        stop.set()
        reader.join()
    # THEN every read saw one whole body, and listings never show temporary files
    assert seen
    assert [o.key for o in storage.list("b")] == ["obj"]


def test_local_refuses_escaping_names(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for bucket, key in [("b", "../x"), ("b", "/etc/passwd"), ("..", "x"), ("a/b", "x")]:
        with pytest.raises(InvalidLocationError):
            storage.put(bucket, key, b"")


def test_open_storage_and_locations(tmp_path: Path, aws_env: None) -> None:
    assert isinstance(open_storage("s3"), S3Storage)
    local = open_storage(f"file://{tmp_path}")
    assert isinstance(local, LocalStorage)
    assert local.root == tmp_path
    s3 = parse_location("s3://my-bucket/some/prefix")
    assert (s3.bucket, s3.prefix) == ("my-bucket", "some/prefix")
    path = parse_location(str(tmp_path / "bucket"))
    assert isinstance(path.storage, LocalStorage)
    assert (path.storage.root, path.bucket, path.prefix) == (tmp_path, "bucket", "")
    with pytest.raises(InvalidLocationError, match="unknown storage scheme"):
        parse_location("gs://x/y")
    with pytest.raises(InvalidLocationError, match="names no bucket"):
        parse_location("s3:///x")
