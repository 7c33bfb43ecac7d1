"""Initialize against moto S3: complete numeric listings and runs that never collide."""

from __future__ import annotations

from typing import Any

import pytest

from cosmicai.exceptions import PlanError
from cosmicai.pipeline import initialize, load_plan, make_plan, plan_ranks
from cosmicai.request import parse_request
from cosmicai.run_types import PartitionRef
from cosmicai.storage import S3Storage, Storage
from harness.data import BUCKET


def _put_partitions(storage: Storage, prefix: str, count: int) -> None:
    for n in range(1, count + 1):
        storage.put(BUCKET, f"{prefix}{n}.safetensors", b"x" * (n % 7 + 1))


@pytest.mark.slow
def test_2500_partitions_are_planned_in_numeric_order(s3_storage: S3Storage) -> None:
    # GIVEN 2,500 partitions (more than one S3 LIST page) and some other objects
    _put_partitions(s3_storage, "25MB/", 2500)
    s3_storage.put(BUCKET, "25MB/_index.json", b"{}")
    s3_storage.put(BUCKET, "25MB/notes.txt", b"x")
    s3_storage.put(BUCKET, "25MB/old/3.safetensors", b"x")
    s3_storage.put(BUCKET, "25MB-copy/1.safetensors", b"x")
    request = parse_request({"bucket": BUCKET, "data_prefix": "25MB", "world_size": 7})
    # WHEN the run is initialized
    pointer = initialize(request, s3_storage)
    plan = load_plan(s3_storage, BUCKET, pointer.run_prefix)
    # THEN every partition is planned once, in numeric order, in contiguous balanced blocks
    numbers = [p.number for r in plan.ranks for p in r.partitions]
    assert numbers == list(range(1, 2501))
    assert [len(r.partitions) for r in plan.ranks] == [358] * 1 + [357] * 6
    assert plan.bytes == sum(n % 7 + 1 for n in range(1, 2501))
    assert pointer.world_size == 7
    assert pointer.partitions == 2500
    # and the manifest has one small item per rank, for the Map's ItemReader
    import json

    items = json.loads(s3_storage.get(BUCKET, pointer.manifest_key))
    assert [i["rank"] for i in items] == list(range(7))
    assert all(i["run_prefix"] == pointer.run_prefix for i in items)


def test_default_world_size_is_one_rank_per_partition(storage: Storage) -> None:
    _put_partitions(storage, "p/", 12)
    plan = make_plan(parse_request({"bucket": BUCKET, "data_prefix": "p"}), storage)
    assert plan.world_size == 12
    assert [r.partitions[0].number for r in plan.ranks] == list(range(1, 13))


def test_file_limit_takes_the_first_partitions_in_numeric_order(storage: Storage) -> None:
    _put_partitions(storage, "p/", 12)
    plan = make_plan(
        parse_request({"bucket": BUCKET, "data_prefix": "p", "file_limit": "3"}), storage
    )
    assert [p.number for r in plan.ranks for p in r.partitions] == [1, 2, 3]


def test_two_runs_in_one_bucket_never_touch_each_others_files(s3_storage: S3Storage) -> None:
    # GIVEN two runs of the same payload in one bucket
    _put_partitions(s3_storage, "p/", 4)
    first = initialize(parse_request({"bucket": BUCKET, "data_prefix": "p"}), s3_storage)
    before = {o.key: s3_storage.get(BUCKET, o.key) for o in s3_storage.list(BUCKET, "runs/")}
    second = initialize(
        parse_request({"bucket": BUCKET, "data_prefix": "p", "world_size": 2}), s3_storage
    )
    # THEN the second wrote only below its own prefix and the first's files are unchanged
    assert first.run_prefix != second.run_prefix
    for key, body in before.items():
        assert s3_storage.get(BUCKET, key) == body
    new_keys = {o.key for o in s3_storage.list(BUCKET, "runs/")} - set(before)
    assert new_keys
    assert all(k.startswith(second.run_prefix) for k in new_keys)


def test_impossible_plans_are_explained(storage: Storage) -> None:
    with pytest.raises(PlanError, match="no partitions"):
        make_plan(parse_request({"bucket": BUCKET, "data_prefix": "empty"}), storage)
    _put_partitions(storage, "p/", 3)
    with pytest.raises(PlanError, match="world_size 4 is larger than the number of partitions"):
        make_plan(parse_request({"bucket": BUCKET, "data_prefix": "p", "world_size": 4}), storage)


@pytest.mark.parametrize(("count", "ranks"), [(10, 3), (5, 5), (1, 1), (100, 7)])
def test_blocks_differ_by_at_most_one(count: int, ranks: int) -> None:
    refs = [PartitionRef(key=f"{n}.safetensors", number=n, bytes=1) for n in range(1, count + 1)]
    sizes = [len(r.partitions) for r in plan_ranks(refs, ranks)]
    assert sum(sizes) == count
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_missing_bucket_is_named(s3_client: Any) -> None:
    from cosmicai.exceptions import ObjectNotFoundError

    with pytest.raises(ObjectNotFoundError, match="no-such-bucket"):
        make_plan(parse_request({"bucket": "no-such-bucket"}), S3Storage(s3_client))


def test_communicator_needs_every_rank_alive_at_once(storage: Storage) -> None:
    # GIVEN 4 partitions and a deployment that runs at most 3 workers at once
    _put_partitions(storage, "p/", 4)
    base = {"bucket": BUCKET, "data_prefix": "p", "world_size": 4, "max_concurrency": 3}
    # WHEN a run asks for the communicator over 4 ranks
    # THEN Initialize refuses, naming both numbers
    with pytest.raises(PlanError, match="needs all 4 ranks running at once, but at most 3"):
        make_plan(parse_request({**base, "communicator": "direct"}), storage)
    # and without the communicator the same run is fine (ranks may queue)
    assert make_plan(parse_request(base), storage).world_size == 4
