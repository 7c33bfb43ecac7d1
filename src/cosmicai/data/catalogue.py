"""The packaged SDSS Main Galaxy Sample (MGS) catalogue: redshifts and ugriz photometry.

The files live in ``cosmicai/data/sdss_mgs/`` (see the ``README.md`` there for provenance and
licence). Each is whitespace-separated ASCII with one galaxy per line and a ``#`` header line that
is wrong: it omits the ``eu`` column. The true column order, from MLZ's ``SDSS_MGS.inputs``, is::

    zs u g r i z u-g g-r r-i i-z eu eg er ei ez eu-g eg-r er-i ei-z

so the header is ignored and columns are taken by position. Because a silent off-by-one in that
order would shift every error column, the loader cross-checks the redundant colour columns against
the magnitudes (``u-g == u - g`` etc., and ``eu-g == hypot(eu, eg)``) and refuses the file if they
disagree.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(Split)

_DATA_DIR = "sdss_mgs"
_FILENAMES: dict[str, str] = {"train": "SDSS_MGS.train", "test": "SDSS_MGS.test"}

# Copied from sdss_mgs/README.md. Kept in code rather than parsed from the README at run time so
# that an edit to the README cannot quietly re-bless a modified data file.
_EXPECTED_SHA256: dict[str, str] = {
    "train": "f16579e52e5bdafcb7afda2e98353d671cc446216b73068a16d7558ab0e09c04",
    "test": "037f4fa18d298c4d3077bea5665161e2006240413e52e51a7aa7a18509274103",
}

_N_COLUMNS = 19
_COL_Z = 0
_COLS_MAG = slice(1, 6)
_COLS_COLOUR = slice(6, 10)
_COLS_MAG_ERR = slice(10, 15)
_COLS_COLOUR_ERR = slice(15, 19)

# The files print 6 decimals, so a recomputed colour can differ from the stored one by rounding
# of three numbers (≤ 1.5e-6); anything beyond this tolerance means the columns are misread.
_COLUMN_CHECK_TOL = 1e-4


@dataclass(frozen=True)
class Catalogue:
    """One split of the MGS catalogue; arrays are read-only because loads are cached and shared."""

    split: str
    redshift: NDArray[np.float32]  # [N] spectroscopic redshift
    magnitudes: NDArray[np.float32]  # [N, 5] u, g, r, i, z (extinction-corrected model mags)
    magnitude_errors: NDArray[np.float32]  # [N, 5] eu, eg, er, ei, ez

    def __post_init__(self) -> None:
        n = len(self.redshift)
        if self.redshift.shape != (n,):
            raise ValueError(f"redshift must be 1-D, got shape {self.redshift.shape}")
        for name, arr in (
            ("magnitudes", self.magnitudes),
            ("magnitude_errors", self.magnitude_errors),
        ):
            if arr.shape != (n, 5):
                raise ValueError(f"{name} has shape {arr.shape}, expected {(n, 5)}")

    def __len__(self) -> int:
        return len(self.redshift)


def _check_split(split: str) -> str:
    if split not in _FILENAMES:
        raise ValueError(f"unknown catalogue split {split!r}; expected one of {SPLITS}")
    return _FILENAMES[split]


def _read_bytes(split: str) -> tuple[str, bytes]:
    filename = _check_split(split)
    return filename, (files("cosmicai.data") / _DATA_DIR / filename).read_bytes()


# Bounded by the number of splits: unknown splits raise before anything is cached.
@lru_cache(maxsize=len(SPLITS))
def catalogue_sha256(split: Split) -> str:
    """SHA-256 (hex) of the packaged file for ``split``, as it is on disk (not the expected one).

    Callers record this as provenance; :func:`load_catalogue` refuses a file whose digest is not
    the one published in ``sdss_mgs/README.md``, so after a successful load the two agree.
    """
    _, data = _read_bytes(split)
    return hashlib.sha256(data).hexdigest()


def _parse(filename: str, data: bytes) -> NDArray[np.float64]:
    table = np.loadtxt(io.BytesIO(data), comments="#", dtype=np.float64, ndmin=2)
    if table.shape[1] != _N_COLUMNS:
        raise ValueError(f"{filename}: expected {_N_COLUMNS} columns, found {table.shape[1]}")
    mags = table[:, _COLS_MAG]
    errs = table[:, _COLS_MAG_ERR]
    colour_diff = np.abs((mags[:, :-1] - mags[:, 1:]) - table[:, _COLS_COLOUR])
    colour_err_diff = np.abs(np.hypot(errs[:, :-1], errs[:, 1:]) - table[:, _COLS_COLOUR_ERR])
    if colour_diff.max() > _COLUMN_CHECK_TOL or colour_err_diff.max() > _COLUMN_CHECK_TOL:
        raise ValueError(
            f"{filename}: colour columns disagree with the magnitudes; the column order "
            "is not the documented one"
        )
    return table


def _readonly_f32(arr: NDArray[np.float64]) -> NDArray[np.float32]:
    out = np.ascontiguousarray(arr, dtype=np.float32)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=len(SPLITS))
def load_catalogue(split: Split) -> Catalogue:
    """Load and verify one split (``"train"`` or ``"test"``, 5,000 galaxies each).

    Raises ``ValueError`` for an unknown split, a file whose SHA-256 differs from the published
    one, or a file whose columns are not in the documented order.
    """
    filename, data = _read_bytes(split)
    digest = hashlib.sha256(data).hexdigest()
    if digest != _EXPECTED_SHA256[split]:
        raise ValueError(
            f"packaged catalogue file {filename} is corrupt or modified: SHA-256 {digest}, "
            f"expected {_EXPECTED_SHA256[split]}"
        )
    table = _parse(filename, data)
    return Catalogue(
        split=split,
        redshift=_readonly_f32(table[:, _COL_Z]),
        magnitudes=_readonly_f32(table[:, _COLS_MAG]),
        magnitude_errors=_readonly_f32(table[:, _COLS_MAG_ERR]),
    )
