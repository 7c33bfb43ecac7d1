"""Fault matrix, storage: a listing never leaves its root; objects are ordinary files
(issue 11, items 4 and 6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosmicai.data.format import BYTES_PER_SAMPLE
from cosmicai.data.synth import synthesize
from cosmicai.exceptions import InvalidLocationError
from cosmicai.storage import LocalStorage, parse_location


@pytest.mark.parametrize("prefix", ["../", "../../", "a/../../", "/etc/", "x\x00/"])
def test_local_listing_never_leaves_its_root(tmp_path: Path, prefix: str) -> None:
    # GIVEN a store whose root has a sibling folder holding an object
    (tmp_path / "root" / "bucket").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "1.safetensors").write_bytes(b"secret")
    storage = LocalStorage(tmp_path / "root")
    # WHEN asked to list a prefix that climbs out / THEN it refuses, naming the prefix
    with pytest.raises(InvalidLocationError, match="prefix"):
        list(storage.list("bucket", prefix))


def test_synthesized_files_get_the_umask_mode(tmp_path: Path) -> None:
    # GIVEN the usual umask
    old = os.umask(0o022)
    try:
        # WHEN a dataset is synthesized into a local folder
        synthesize(
            parse_location(str(tmp_path / "data")),
            size_bytes=4 * BYTES_PER_SAMPLE,
            partition_bytes=2 * BYTES_PER_SAMPLE,
            processes=1,
        )
    finally:
        os.umask(old)
    # THEN its files are readable as any file written there would be (not 0600)
    files = sorted((tmp_path / "data").iterdir())
    assert files
    assert {f.stat().st_mode & 0o777 for f in files} == {0o644}
