"""SlabProbabilityWriter: a 4-D probability NIfTI written box by box equals medseg.io.write_like's file byte for byte
(header, extensions, geometry, data), unwritten voxels get the class fill, and memory stays bounded by the chunk."""

from __future__ import annotations

import gzip
import os
import stat
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medseg.probfile as probfile
from medseg.io import Case, read_case, write_like
from medseg.probfile import SlabProbabilityWriter, free_bytes_needed
from medseg.synthetic import oblique_affine
from shared_backbones.errors import InputError, OutputExistsError

DESCRIP = "medseg predict probabilities"


def _ref(tmp_path: Path, kind: str, shape=(7, 6, 9)) -> Case:
    """A case read from a real file: oblique NIfTI-1, LPS-flipped NIfTI-2, or big-endian NIfTI-1 with an extension
    and a qform differing from the sform."""
    rng = np.random.default_rng({"nifti1": 1, "nifti2": 2, "bigendian": 3}[kind])
    aff = oblique_affine((0.8, 0.9, 2.5), rng, flip_lps=kind != "nifti1")
    data = rng.normal(size=shape).astype(np.float32)
    src = tmp_path / f"src_{kind}.nii.gz"
    if kind == "nifti2":
        img = nib.Nifti2Image(data, aff)
    elif kind == "bigendian":
        hdr = nib.Nifti1Header(endianness=">")
        img = nib.Nifti1Image(data, aff, header=hdr)
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"scanner notes 0123456789"))
        img.header.set_qform(np.diag([0.8, 0.9, 2.5, 1.0]), code=1)
    else:
        img = nib.Nifti1Image(data, aff)
        img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(src))
    return read_case(src)


def _plain_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def _assert_like_write_like(out: Path, arr: np.ndarray, ref: Case, tmp_path: Path) -> None:
    """``out`` equals what write_like writes for ``arr``: the uncompressed bytes, and what nibabel reads."""
    expected = tmp_path / ("expected" + ("".join(out.suffixes[-2:]) if out.name.endswith(".gz") else out.suffix))
    write_like(expected, arr, ref, descrip=DESCRIP)
    assert _plain_bytes(out) == _plain_bytes(expected)
    got, want = nib.load(str(out)), nib.load(str(expected))
    assert type(got) is type(want) is (nib.Nifti2Image if isinstance(ref.header, nib.Nifti2Header)
                                       else nib.Nifti1Image)
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), arr)
    assert got.get_data_dtype().newbyteorder("=") == np.float32  # big-endian refs keep their byte order
    np.testing.assert_array_equal(got.affine, want.affine)
    np.testing.assert_array_equal(got.header.get_sform(), ref.header.get_sform())
    np.testing.assert_array_equal(got.header.get_qform(), ref.header.get_qform())
    assert got.header.get_sform(coded=True)[1] == ref.header.get_sform(coded=True)[1]
    assert got.header.get_qform(coded=True)[1] == ref.header.get_qform(coded=True)[1]
    assert got.header["descrip"].tobytes().rstrip(b"\0") == DESCRIP.encode()
    assert got.header.endianness == ref.header.endianness
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize(("kind", "suffix"), [("nifti1", ".nii.gz"), ("nifti2", ".nii"), ("bigendian", ".nii.gz")])
def test_z_slabs_in_scrambled_order_equal_write_like(tmp_path: Path, kind: str, suffix: str) -> None:
    ref = _ref(tmp_path, kind)
    X, Y, Z = ref.spatial_shape
    K = 4
    rng = np.random.default_rng(7)
    arr = rng.random((X, Y, Z, K), dtype=np.float32)
    out = tmp_path / "out" / f"case_probabilities{suffix}"
    bounds = [(0, 2), (2, 3), (3, 7), (7, 9)]
    before = set()
    with SlabProbabilityWriter(out, ref, K, fill=[1.0, 0, 0, 0], descrip=DESCRIP) as w:
        before = {p.name for p in out.parent.iterdir()}
        assert w.raw_path.exists() and w.raw_path.parent == out.parent
        for i in (2, 0, 3, 1):
            z0, z1 = bounds[i]
            w.write((slice(0, X), slice(0, Y), slice(z0, z1)), arr[:, :, z0:z1])
    assert not w.raw_path.exists()
    assert _leftovers(out.parent, set()) == [out.name]
    assert len(before) == 1  # only the raw temporary during writing
    _assert_like_write_like(out, arr, ref, tmp_path)


def test_irregular_overlapping_boxes_and_small_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Boxes of every shape (partial X, partial Y, single voxels), overlapping (last write wins), with a chunk of
    a few rows so the assembly crosses z planes and classes in several pieces."""
    monkeypatch.setattr(probfile, "CHUNK_BYTES", 7 * 4 * 4)  # 4 rows of X=7 voxels
    ref = _ref(tmp_path, "nifti2")
    X, Y, Z = ref.spatial_shape
    K = 3
    rng = np.random.default_rng(11)
    arr = rng.random((X, Y, Z, K), dtype=np.float32)
    out = tmp_path / "p.nii.gz"
    with SlabProbabilityWriter(out, ref, K, fill=np.zeros(K), descrip=DESCRIP) as w:
        # garbage first, overwritten later by the true values
        w.write((slice(1, 5), slice(0, Y), slice(2, 6)), np.full((4, Y, 4, K), 9.0, np.float32))
        w.write((slice(0, X), slice(1, 4), slice(0, 3)), np.full((X, 3, 3, K), -3.0, np.float64))
        for _ in range(40):
            lo = [int(rng.integers(0, n)) for n in (X, Y, Z)]
            hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, (X, Y, Z))]
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            w.write(box, arr[box])
        for z in range(Z):  # cover everything: x-runs, partial-y planes, single voxels
            w.write((slice(0, 3), slice(0, Y), slice(z, z + 1)), arr[0:3, :, z:z + 1])
            w.write((slice(3, X), slice(0, 2), slice(z, z + 1)), arr[3:X, 0:2, z:z + 1])
            w.write((slice(0, X), slice(2, Y), slice(z, z + 1)), arr[:, 2:Y, z:z + 1])
        w.write((slice(4, 5), slice(3, 4), slice(8, 9)), arr[4:5, 3:4, 8:9])
    _assert_like_write_like(out, arr, ref, tmp_path)


def test_unwritten_voxels_get_the_class_fill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probfile, "CHUNK_BYTES", 7 * 4 * 5)
    ref = _ref(tmp_path, "nifti1")
    X, Y, Z = ref.spatial_shape
    K = 3
    fill = np.array([1.0, 0.0, 0.25], np.float32)
    expected = np.broadcast_to(fill, (X, Y, Z, K)).copy()
    rng = np.random.default_rng(5)
    boxes = [(slice(0, X), slice(0, Y), slice(6, 8)), (slice(2, 5), slice(1, 6), slice(0, 2)),
             (slice(0, 1), slice(5, 6), slice(8, 9)), (slice(1, 7), slice(0, 3), slice(4, 5))]
    out = tmp_path / "fill.nii"
    with SlabProbabilityWriter(out, ref, K, fill=fill, descrip=DESCRIP) as w:
        for box in boxes:
            vals = rng.random(expected[box].shape, dtype=np.float32)
            expected[box] = vals
            w.write(box, vals)
    _assert_like_write_like(out, expected, ref, tmp_path)
    # nothing written at all: the fill everywhere
    empty = tmp_path / "empty.nii.gz"
    with SlabProbabilityWriter(empty, ref, K, fill=fill, descrip=DESCRIP):
        pass
    _assert_like_write_like(empty, np.broadcast_to(fill, (X, Y, Z, K)).copy(), ref, tmp_path)


def test_abort_and_exception_leave_nothing(tmp_path: Path) -> None:
    ref = _ref(tmp_path, "nifti1")
    X, Y, Z = ref.spatial_shape
    out = tmp_path / "o" / "p.nii.gz"
    w = SlabProbabilityWriter(out, ref, 2, fill=[1, 0])
    w.write((slice(0, X), slice(0, Y), slice(0, 1)), np.zeros((X, Y, 1, 2), np.float32))
    assert w.raw_path.exists()
    w.abort()
    assert _leftovers(out.parent, set()) == []
    with pytest.raises(ValueError, match="closed"):
        w.write((slice(0, X), slice(0, Y), slice(0, 1)), np.zeros((X, Y, 1, 2), np.float32))
    with pytest.raises(RuntimeError, match="boom"), SlabProbabilityWriter(out, ref, 2, fill=[1, 0]) as w2:
        w2.write((slice(0, X), slice(0, Y), slice(0, 1)), np.zeros((X, Y, 1, 2), np.float32))
        raise RuntimeError("boom")
    assert _leftovers(out.parent, set()) == []


def test_existing_output_refused_before_any_work_and_overwrite(tmp_path: Path) -> None:
    ref = _ref(tmp_path, "nifti1")
    X, Y, Z = ref.spatial_shape
    out = tmp_path / "o" / "p.nii.gz"
    out.parent.mkdir()
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        SlabProbabilityWriter(out, ref, 2, fill=[1, 0])
    assert _leftovers(out.parent, {out.name}) == [] and out.read_bytes() == b"old"
    arr = np.random.default_rng(0).random((X, Y, Z, 2), dtype=np.float32)
    with SlabProbabilityWriter(out, ref, 2, fill=[1, 0], overwrite=True, descrip=DESCRIP) as w:
        w.write((slice(0, X), slice(0, Y), slice(0, Z)), arr)
    _assert_like_write_like(out, arr, ref, tmp_path)
    assert _leftovers(out.parent, {out.name}) == []


def test_not_enough_disk_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _ref(tmp_path, "nifti1")
    X, Y, Z = ref.spatial_shape
    need = free_bytes_needed((X, Y, Z), 118)
    assert need == X * Y * Z * 118 * 4 * 2  # the raw temporary and the output side by side
    assert free_bytes_needed((512, 512, 800), 118) == 2 * 512 * 512 * 800 * 118 * 4
    real = probfile.shutil.disk_usage
    monkeypatch.setattr(probfile.shutil, "disk_usage", lambda p: real(p)._replace(free=need - 1))
    out = tmp_path / "o" / "p.nii.gz"
    with pytest.raises(InputError, match=r"needs about [0-9.]+ GB of disk next to the output, only [0-9.]+ GB free"):
        SlabProbabilityWriter(out, ref, 118, fill=np.zeros(118))
    assert _leftovers(out.parent, set()) == []
    monkeypatch.setattr(probfile.shutil, "disk_usage", lambda p: real(p)._replace(free=need))
    SlabProbabilityWriter(out, ref, 118, fill=np.zeros(118)).abort()


def test_bad_boxes_and_arguments(tmp_path: Path) -> None:
    ref = _ref(tmp_path, "nifti1")
    X, Y, Z = ref.spatial_shape
    out = tmp_path / "p.nii"
    with pytest.raises(ValueError, match="one value per class"):
        SlabProbabilityWriter(out, ref, 3, fill=[1, 0])
    with SlabProbabilityWriter(out, ref, 2, fill=[1, 0]) as w:
        z = np.zeros((X, Y, 1, 2), np.float32)
        for box in [(slice(0, X), slice(0, Y), slice(Z, Z + 1)), (slice(-1, X), slice(0, Y), slice(0, 1)),
                    (slice(0, X, 2), slice(0, Y), slice(0, 1)), (slice(3, 1), slice(0, Y), slice(0, 1))]:
            with pytest.raises(ValueError, match="box slice"):
                w.write(box, z)
        with pytest.raises(ValueError, match="does not match the box"):
            w.write((slice(0, X), slice(0, Y), slice(0, 2)), z)
        with pytest.raises(ValueError, match="floating point"):
            w.write((slice(0, X), slice(0, Y), slice(0, 1)), z.astype(np.int32))
    assert out.exists()


def test_memory_of_close_is_bounded_by_the_chunk_not_the_volume(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """8 MB of probabilities written slab by slab and assembled with 64 KB chunks: the Python-visible peak
    (numpy buffers included) stays far below the volume's size."""
    monkeypatch.setattr(probfile, "CHUNK_BYTES", 64 * 1024)
    ref = _ref(tmp_path, "nifti1", shape=(64, 64, 64))
    K = 8
    out = tmp_path / "big.nii.gz"
    slab = np.random.default_rng(3).random((64, 64, 4, K), dtype=np.float32)  # 512 KB per slab
    w = SlabProbabilityWriter(out, ref, K, fill=np.eye(K)[0])
    tracemalloc.start()
    try:
        for z0 in range(60, -1, -4):
            w.write((slice(0, 64), slice(0, 64), slice(z0, z0 + 4)), slab)
        w.write((slice(3, 9), slice(10, 40), slice(5, 50)), slab[:6, :30, :1].repeat(45, axis=2))
        tracemalloc.reset_peak()
        w.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raw = 64**3 * K * 4
    assert peak < raw / 8, (peak, raw)
    got = np.asanyarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(got[:, :, 0:4], slab)
    np.testing.assert_array_equal(got[3:9, 10:40, 5:50], slab[:6, :30, :1].repeat(45, axis=2))
