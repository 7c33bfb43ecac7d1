"""Tests for the packaged SDSS Main Galaxy Sample catalogue loader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cosmicai.data import catalogue
from cosmicai.data.catalogue import Catalogue, catalogue_sha256, load_catalogue

# Independent copy of the digests published in src/cosmicai/data/sdss_mgs/README.md.
README_SHA256 = {
    "train": "f16579e52e5bdafcb7afda2e98353d671cc446216b73068a16d7558ab0e09c04",
    "test": "037f4fa18d298c4d3077bea5665161e2006240413e52e51a7aa7a18509274103",
}


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    # Tests that tamper with module state must neither see nor leave behind a cached load.
    load_catalogue.cache_clear()
    yield
    load_catalogue.cache_clear()


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_split_has_5000_galaxies_with_float32_columns(split: Any) -> None:
    # GIVEN / WHEN a split is loaded
    cat = load_catalogue(split)

    # THEN it has the documented size, shapes and dtype
    assert cat.split == split
    assert len(cat) == 5000
    assert cat.redshift.shape == (5000,)
    assert cat.magnitudes.shape == (5000, 5)
    assert cat.magnitude_errors.shape == (5000, 5)
    for arr in (cat.redshift, cat.magnitudes, cat.magnitude_errors):
        assert arr.dtype == np.float32


@pytest.mark.parametrize("split", ["train", "test"])
def test_columns_have_physically_sane_ranges(split: Any) -> None:
    # GIVEN a loaded split
    cat = load_catalogue(split)

    # WHEN its columns are inspected
    z, mags, errs = cat.redshift, cat.magnitudes, cat.magnitude_errors

    # THEN redshifts and r-band magnitudes span the Main Galaxy Sample's ranges
    # (the README's "0.002" is rounded: the smallest is 0.001962)
    assert z.min() > 0.0019
    assert z.max() < 0.3
    assert 0.05 < float(np.median(z)) < 0.15
    assert mags[:, 2].min() > 11.0
    assert mags[:, 2].max() < 18.0
    # AND u is fainter than g, as for real galaxies (would fail if bands were misassigned)
    assert float(np.median(mags[:, 0] - mags[:, 1])) > 0.5
    # AND the errors are the error columns (not colours): positive, small, u the noisiest,
    # which would fail if the header's missing ``eu`` shifted the columns by one
    assert errs.min() > 0
    assert errs.max() < 1.0
    median_err = np.median(errs, axis=0)
    assert median_err[0] == median_err.max()
    assert median_err[0] > 3 * median_err[2]


def test_train_and_test_do_not_share_galaxies() -> None:
    # GIVEN both splits
    train, test = load_catalogue("train"), load_catalogue("test")

    # WHEN galaxies are keyed by redshift and magnitudes
    def keys(cat: Catalogue) -> set[bytes]:
        rows = np.concatenate([cat.redshift[:, None], cat.magnitudes], axis=1)
        return {row.tobytes() for row in rows}

    # THEN no galaxy appears in both
    assert not keys(train) & keys(test)


def test_loads_are_cached_and_read_only() -> None:
    # GIVEN a loaded split
    first = load_catalogue("train")

    # WHEN it is loaded again
    second = load_catalogue("train")

    # THEN the same object comes back, and its arrays cannot be modified by one caller under
    # the feet of another
    assert second is first
    with pytest.raises(ValueError, match="read-only"):
        first.magnitudes[0, 0] = 0.0


@pytest.mark.parametrize("split", ["train", "test"])
def test_sha256_is_the_published_digest(split: Any) -> None:
    # GIVEN / WHEN the digest of the packaged file is computed
    digest = catalogue_sha256(split)

    # THEN it is the one in the data README
    assert digest == README_SHA256[split]


@pytest.mark.parametrize("func", [load_catalogue, catalogue_sha256])
def test_unknown_split_is_rejected_with_the_allowed_ones(func: Any) -> None:
    # GIVEN / WHEN an unknown split is requested
    # THEN the error names the split and the valid choices
    with pytest.raises(ValueError, match=r"'validation'.*'train'.*'test'"):
        func("validation")


@pytest.mark.usefixtures("fresh_cache")
def test_digest_mismatch_is_rejected_naming_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the expected digest of the test split no longer matches the file
    wrong = dict(catalogue._EXPECTED_SHA256, test="0" * 64)
    monkeypatch.setattr(catalogue, "_EXPECTED_SHA256", wrong)

    # WHEN / THEN loading it fails and says which file
    with pytest.raises(ValueError, match=r"SDSS_MGS\.test.*corrupt or modified"):
        load_catalogue("test")


def test_misordered_columns_are_detected() -> None:
    # GIVEN one galaxy written in the documented order, the same with the error columns shifted
    # by one (as if eu were missing), and one with the 18 columns the file header names
    front = ["0.1", "19.0", "18.0", "17.5", "17.2", "17.0", "1.0", "0.5", "0.3", "0.2"]
    errs = ["0.05", "0.01", "0.01", "0.01", "0.02"]  # eu eg er ei ez
    errs += ["0.050990", "0.014142", "0.014142", "0.022361"]  # their hypot in adjacent pairs
    good = ("#h\n" + " ".join(front + errs)).encode()
    shifted = ("#h\n" + " ".join([*front, *errs[1:], "0.0"])).encode()
    as_header = ("#h\n" + " ".join(front + errs[1:])).encode()

    # WHEN the parser reads them
    # THEN only the documented order is accepted
    assert catalogue._parse("good", good).shape == (1, 19)
    with pytest.raises(ValueError, match=r"shifted.*column order"):
        catalogue._parse("shifted", shifted)
    with pytest.raises(ValueError, match=r"as_header.*expected 19 columns, found 18"):
        catalogue._parse("as_header", as_header)


def test_catalogue_rejects_mismatched_shapes() -> None:
    # GIVEN arrays whose lengths disagree
    z = np.zeros(3, np.float32)
    mags = np.zeros((4, 5), np.float32)

    # WHEN / THEN building a Catalogue from them fails
    with pytest.raises(ValueError, match="magnitudes"):
        Catalogue(split="x", redshift=z, magnitudes=mags, magnitude_errors=mags)
