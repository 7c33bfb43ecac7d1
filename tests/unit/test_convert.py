"""Tests of the CosmicAI ``N.pt`` -> cosmicai partition converter."""

from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cosmicai.data.convert import (
    OBJECT_ID_STRIDE,
    TORCH_REQUIRED_MESSAGE,
    ConvertedPartition,
    convert_pt_file,
    convert_pt_files,
)
from cosmicai.data.format import Partition, decode_partition, partition_key
from cosmicai.exceptions import PartitionFormatError
from cosmicai.storage import Location, parse_location

torch = pytest.importorskip("torch", reason="the converter reads torch files: cosmicai[convert]")
TensorDataset = torch.utils.data.TensorDataset


def _tensors(samples: int, *, seed: int = 0, dtype: Any = None) -> tuple[Any, Any, Any]:
    """Random (images, magnitudes, redshifts) in the CosmicAI layout."""
    generator = torch.Generator().manual_seed(seed)
    dtype = torch.float32 if dtype is None else dtype
    images = torch.rand(samples, 5, 32, 32, generator=generator, dtype=dtype)
    magnitudes = torch.rand(samples, 5, generator=generator, dtype=dtype) * 10 + 15
    redshifts = torch.rand(samples, generator=generator, dtype=dtype)
    return images, magnitudes, redshifts


def _save(obj: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _location(tmp_path: Path, prefix: str = "") -> Location:
    location = parse_location(str(tmp_path / "bucket"))
    return Location(location.storage, location.bucket, prefix)


def _read(location: Location, key: str) -> Partition:
    return decode_partition(location.storage.get(location.bucket, key), key)


def _create_marker(path: str) -> None:
    """What a hostile pickle would run on load: creates a file we can look for."""
    Path(path).write_text("code from a .pt file was executed")


class _Exploit:
    """Pickles as "call _create_marker(marker)", the shape of any pickle code-execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_create_marker, (str(self.marker),))


def test_converts_tensor_datasets_exactly(tmp_path: Path) -> None:
    # GIVEN two CosmicAI partitions as TensorDataset .pt files, one with unknown redshifts
    first = _tensors(7, seed=1)
    second = _tensors(3, seed=2)
    second[2][1] = float("nan")
    files = [
        _save(TensorDataset(*first), tmp_path / "pt" / "1.pt"),
        _save(TensorDataset(*second), tmp_path / "pt" / "2.pt"),
    ]
    out = _location(tmp_path, prefix="25MB")
    messages: list[str] = []

    # WHEN they are converted
    converted = convert_pt_files(files, out, on_progress=messages.append)

    # THEN each became partition N under the prefix, holding exactly the same values
    assert [c.key for c in converted] == [partition_key("25MB", 1), partition_key("25MB", 2)]
    for source, (images, magnitudes, redshifts), done in zip(
        files, (first, second), converted, strict=True
    ):
        raw = out.storage.get(out.bucket, done.key)
        partition = decode_partition(raw, done.key)
        assert done == ConvertedPartition(
            source=source, number=done.number, key=done.key, samples=len(images), bytes=len(raw)
        )
        np.testing.assert_array_equal(partition.images, images.numpy())
        np.testing.assert_array_equal(partition.magnitudes, magnitudes.numpy())
        assert partition.redshift is not None
        np.testing.assert_array_equal(partition.redshift, redshifts.numpy())
        assert partition.provenance == {
            "source": "cosmicai-pt",
            "file": source.name,
            "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        }
    # AND the unknown redshift stayed NaN, and each file was reported once
    assert np.isnan(_read(out, converted[1].key).redshift[1])  # type: ignore[index]
    assert len(messages) == 2
    assert "1.pt" in messages[0]
    assert converted[0].key in messages[0]


def test_object_ids_encode_partition_and_row(tmp_path: Path) -> None:
    # GIVEN partition 12 of 4 samples
    path = _save(TensorDataset(*_tensors(4)), tmp_path / "12.pt")

    # WHEN it is converted
    partition = convert_pt_file(path)

    # THEN the ids are 12 * stride + row, unique across partitions of the dataset
    expected = 12 * OBJECT_ID_STRIDE + np.arange(4)
    np.testing.assert_array_equal(partition.object_id, expected)
    assert partition.object_id.dtype == np.int64


def test_float64_becomes_float32(tmp_path: Path) -> None:
    # GIVEN a partition saved in float64
    images, magnitudes, redshifts = _tensors(5, dtype=torch.float64)
    path = _save(TensorDataset(images, magnitudes, redshifts), tmp_path / "3.pt")

    # WHEN it is converted and read back
    [done] = convert_pt_files([path], _location(tmp_path))
    partition = _read(_location(tmp_path), done.key)

    # THEN the arrays are float32, equal to the values rounded to float32
    assert partition.images.dtype == np.float32
    assert partition.magnitudes.dtype == np.float32
    np.testing.assert_array_equal(partition.images, images.numpy().astype(np.float32))
    np.testing.assert_array_equal(partition.magnitudes, magnitudes.numpy().astype(np.float32))
    assert partition.redshift is not None
    np.testing.assert_array_equal(partition.redshift, redshifts.numpy().astype(np.float32))


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda t: tuple(t), id="tuple"),
        pytest.param(lambda t: list(t), id="list"),
        pytest.param(lambda t: {"images": t[0], "magnitudes": t[1], "redshift": t[2]}, id="dict"),
        pytest.param(lambda t: {"images": t[0], "magnitudes": t[1], "redshifts": t[2]}, id="dicts"),
    ],
)
def test_plain_containers_are_accepted(tmp_path: Path, layout: Any) -> None:
    # GIVEN the three tensors saved as a plain tuple, list or dict
    tensors = _tensors(2)
    path = _save(layout(tensors), tmp_path / "1.pt")

    # WHEN it is converted
    partition = convert_pt_file(path)

    # THEN it holds the same values as a TensorDataset would have given
    np.testing.assert_array_equal(partition.images, tensors[0].numpy())
    np.testing.assert_array_equal(partition.magnitudes, tensors[1].numpy())
    assert partition.redshift is not None
    np.testing.assert_array_equal(partition.redshift, tensors[2].numpy())


def test_wrong_image_shape_names_file_and_tensor(tmp_path: Path) -> None:
    # GIVEN images with 3 bands instead of 5
    _, magnitudes, redshifts = _tensors(10)
    images = torch.zeros(10, 3, 32, 32)
    path = _save(TensorDataset(images, magnitudes, redshifts), tmp_path / "1.pt")

    # WHEN / THEN converting it fails naming the file, the tensor and both shapes
    with pytest.raises(PartitionFormatError) as raised:
        convert_pt_file(path)
    message = str(raised.value)
    assert str(path) in message
    assert "images has shape (10, 3, 32, 32), expected (N, 5, 32, 32)" in message


def test_sample_count_mismatch_is_refused(tmp_path: Path) -> None:
    # GIVEN redshifts for fewer samples than there are images (as a tuple: TensorDataset
    # itself refuses to be built that way, but a file could still hold one)
    images, magnitudes, redshifts = _tensors(4)
    path = _save((images, magnitudes, redshifts[:3]), tmp_path / "1.pt")

    # WHEN / THEN converting it fails naming the redshifts
    with pytest.raises(PartitionFormatError, match=r"redshifts has shape \(3,\)") as raised:
        convert_pt_file(path)
    assert str(path) in str(raised.value)


def test_integer_tensors_are_refused(tmp_path: Path) -> None:
    # GIVEN magnitudes stored as integers
    images, magnitudes, redshifts = _tensors(2)
    path = _save(TensorDataset(images, magnitudes.to(torch.int64), redshifts), tmp_path / "1.pt")

    # WHEN / THEN the dtype is named
    with pytest.raises(PartitionFormatError, match="magnitudes has dtype int64"):
        convert_pt_file(path)


def test_wrong_number_of_tensors_is_refused(tmp_path: Path) -> None:
    # GIVEN a TensorDataset without redshifts
    images, magnitudes, _ = _tensors(2)
    path = _save(TensorDataset(images, magnitudes), tmp_path / "1.pt")

    # WHEN / THEN converting it names the file and what it found
    with pytest.raises(PartitionFormatError, match="TensorDataset holds 2 item") as raised:
        convert_pt_file(path)
    assert str(path) in str(raised.value)


def test_non_numeric_stem_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # GIVEN a good partition and a file whose name is not a partition number
    good = _save(TensorDataset(*_tensors(2)), tmp_path / "pt" / "1.pt")
    bad = _save(TensorDataset(*_tensors(2)), tmp_path / "pt" / "abc.pt")
    out = _location(tmp_path)

    # WHEN / THEN the whole call fails naming the file, and nothing was written
    with pytest.raises(PartitionFormatError, match=r"abc\.pt"):
        convert_pt_files([good, bad], out)
    assert not out.storage.exists(out.bucket, partition_key("", 1))


@pytest.mark.parametrize("name", ["0.pt", "-1.pt", "1.pth", "1", "².pt"])
def test_other_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    # GIVEN a valid partition under a name that is not N.pt with N >= 1
    path = _save(TensorDataset(*_tensors(1)), tmp_path / name)

    # WHEN / THEN the name is refused
    with pytest.raises(PartitionFormatError, match=r"named N\.pt"):
        convert_pt_file(path)


def test_duplicate_partition_numbers_are_refused(tmp_path: Path) -> None:
    # GIVEN two files that are both partition 1
    a = _save(TensorDataset(*_tensors(2)), tmp_path / "a" / "1.pt")
    b = _save(TensorDataset(*_tensors(2)), tmp_path / "b" / "01.pt")
    out = _location(tmp_path)

    # WHEN / THEN converting them fails up front, as their ids would collide
    with pytest.raises(PartitionFormatError, match="both partition 1"):
        convert_pt_files([a, b], out)
    assert not out.storage.exists(out.bucket, partition_key("", 1))


def test_truncated_file_fails_after_earlier_files_were_written_whole(tmp_path: Path) -> None:
    # GIVEN a good partition 1 and a partition 2 cut off halfway
    good = _save(TensorDataset(*_tensors(3)), tmp_path / "pt" / "1.pt")
    bad = _save(TensorDataset(*_tensors(3)), tmp_path / "pt" / "2.pt")
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    out = _location(tmp_path)

    # WHEN they are converted
    with pytest.raises(PartitionFormatError) as raised:
        convert_pt_files([good, bad], out)

    # THEN the error names the truncated file
    assert str(bad) in str(raised.value)
    # AND partition 1 was written whole and readable, partition 2 not at all
    assert _read(out, partition_key("", 1)).samples == 3
    assert not out.storage.exists(out.bucket, partition_key("", 2))
    assert sorted(p.name for p in (tmp_path / "bucket").iterdir()) == ["1.safetensors"]


def test_pickled_object_is_refused_without_running_it(tmp_path: Path) -> None:
    # GIVEN a .pt file whose pickle would create a marker file when unpickled
    marker = tmp_path / "executed"
    path = _save({"x": _Exploit(marker)}, tmp_path / "1.pt")
    # (a control marker proves the payload is live: plain unpickling does run it)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Exploit(control)))
    assert control.exists()

    # WHEN it is converted
    with pytest.raises(PartitionFormatError) as raised:
        convert_pt_file(path)

    # THEN it is refused, naming the file, and the payload never ran
    assert str(path) in str(raised.value)
    assert "refused" in str(raised.value)
    assert "weights_only=False" not in str(raised.value)
    assert not marker.exists()


def test_unexpected_content_is_named(tmp_path: Path) -> None:
    # GIVEN a .pt holding a single tensor
    path = _save(torch.zeros(3), tmp_path / "1.pt")

    # WHEN / THEN the error says what was found
    with pytest.raises(PartitionFormatError, match=r"found a torch\.Tensor") as raised:
        convert_pt_file(path)
    assert str(path) in str(raised.value)


def test_dict_with_unexpected_keys_is_refused(tmp_path: Path) -> None:
    # GIVEN a dict with an extra tensor that conversion would silently drop
    images, magnitudes, redshifts = _tensors(2)
    layout = {"images": images, "magnitudes": magnitudes, "redshift": redshifts, "ra": redshifts}
    path = _save(layout, tmp_path / "1.pt")

    # WHEN / THEN it is refused, listing the keys
    with pytest.raises(PartitionFormatError, match="'ra'"):
        convert_pt_file(path)


def test_missing_torch_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN torch cannot be imported (None in sys.modules makes "import torch" fail)
    path = _save(TensorDataset(*_tensors(1)), tmp_path / "1.pt")
    monkeypatch.setitem(sys.modules, "torch", None)

    # WHEN / THEN converting says how to install it
    with pytest.raises(ImportError, match=r"pip install 'cosmicai\[convert\]'") as raised:
        convert_pt_file(path)
    assert str(raised.value) == TORCH_REQUIRED_MESSAGE
