"""`cosmicai data synth / partition` against real storage backends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cosmicai.data.format import BYTES_PER_SAMPLE, decode_partition
from cosmicai.data.partitioner import (
    parse_size,
    read_partitions,
    repartition,
    samples_per_partition,
)
from cosmicai.data.synth import synthesize
from cosmicai.storage import Location, S3Storage, parse_location
from harness.data import BUCKET


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_gives_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    # GIVEN the same dataset rendered twice with one process and once with two
    size = parse_size("1MB")
    for name, processes in (("a", 1), ("b", 2)):
        synthesize(
            parse_location(str(tmp_path / name)),
            size_bytes=size,
            seed=7,
            partition_bytes=parse_size("300KB"),
            processes=processes,
        )
    synthesize(
        parse_location(str(tmp_path / "c")),
        size_bytes=size,
        seed=8,
        partition_bytes=parse_size("300KB"),
        processes=1,
    )
    # THEN the bytes are identical for the same seed, whatever the parallelism
    a, b, c = (_digests(tmp_path / n) for n in "abc")
    assert a == b
    assert a["1.safetensors"] != c["1.safetensors"]
    assert set(a) == {
        "1.safetensors",
        "2.safetensors",
        "3.safetensors",
        "4.safetensors",
        "_index.json",
    }


@pytest.mark.slow
def test_splits_never_share_a_galaxy(tmp_path: Path) -> None:
    # GIVEN both splits, larger than the catalogue so realizations repeat
    size = 5200 * BYTES_PER_SAMPLE
    ids = {}
    redshifts = {}
    for split in ("train", "test"):
        out = parse_location(str(tmp_path / split))
        synthesize(out, size_bytes=size, split=split, partition_bytes=size, processes=2)
        (partition,) = list(read_partitions(out))
        ids[split] = set(partition.object_id.tolist())
        redshifts[split] = partition.redshift
        assert partition.samples == 5200 == len(ids[split])  # ids unique within a split
    # THEN no object id is in both, and each is rendered from its own catalogue
    assert not ids["train"] & ids["test"]
    from cosmicai.data.catalogue import load_catalogue

    for split in ("train", "test"):
        catalogue = load_catalogue(split)
        z = redshifts[split]
        assert z is not None
        assert np.array_equal(z[:5000], catalogue.redshift)
        assert np.array_equal(z[5000:], catalogue.redshift[:200])  # a new realization


@pytest.mark.parametrize(("size", "samples"), [("25MB", 1278), ("10MB", 511), ("100MB", 5112)])
def test_partition_sizes_follow_the_cosmicai_split(size: str, samples: int) -> None:
    assert samples_per_partition(parse_size(size)) == samples


def test_repartition_keeps_every_sample_in_order(s3_storage: S3Storage, tmp_path: Path) -> None:
    # GIVEN a synthetic dataset in a local folder
    source = parse_location(str(tmp_path / "src"))
    synthesize(
        source,
        size_bytes=300 * BYTES_PER_SAMPLE,
        partition_bytes=120 * BYTES_PER_SAMPLE,
        processes=1,
    )
    # WHEN re-cut into partitions of 70 samples on S3
    out = Location(s3_storage, BUCKET, "70/")
    written = repartition(read_partitions(source), out, 70 * BYTES_PER_SAMPLE + 100)
    # THEN partitions 1..5 hold 70, 70, 70, 70, 20 samples, in the original order
    assert [w.samples for w in written] == [70, 70, 70, 70, 20]
    assert [w.key for w in written] == [f"70/{n}.safetensors" for n in range(1, 6)]
    before = np.concatenate([p.object_id for p in read_partitions(source)])
    after = np.concatenate(
        [decode_partition(s3_storage.get(BUCKET, w.key)).object_id for w in written]
    )
    assert np.array_equal(before, after)
    index = json.loads(s3_storage.get(BUCKET, "70/_index.json"))
    assert index["samples"] == 300
    assert len(index["partitions"]) == 5


def test_sizes_are_parsed_or_refused() -> None:
    assert parse_size("25MB") == 25 * 2**20
    assert parse_size("1.5 GiB") == int(1.5 * 2**30)
    assert parse_size("512") == 512
    with pytest.raises(ValueError, match="not a size"):
        parse_size("25 parsecs")
    with pytest.raises(ValueError, match="cannot hold one sample"):
        samples_per_partition(100)
