"""Per-class probability maps written slab by slab into one 4-D NIfTI file, in memory bounded by the slab.

Format: NIfTI-1 (NIfTI-2 when the reference header is NIfTI-2), single file (``.nii`` or gzip-compressed
``.nii.gz``), float32, shape ``[X, Y, Z, K]`` (K classes, channel-last like :func:`medseg.io.write_like`). The
NIfTI data block is stored in Fortran order: x varies fastest, then y, then z, and the class axis K slowest, so a
full-X/Y slab of Z rows is K contiguous byte runs, one per class.

The header is byte for byte the one :func:`medseg.io.write_like` writes for a float32 array of shape
``ref.spatial_shape + (K,)`` (``like_header`` plus the verbatim geometry fields, NIfTI-2 kept), and the data block
equals what nibabel would write for that array.

How memory stays bounded: :meth:`SlabProbabilityWriter.write` puts each box's values with ``os.pwrite`` into a
raw, uncompressed temporary file next to the output (sparse, created with ``ftruncate``; no ``np.memmap``, whose
touched pages would count in the resident set). Only the boxes' bounds are remembered. :meth:`close` streams the
header and then the raw data in chunks of at most :data:`CHUNK_BYTES` into the final file (gzip level 1 like
nibabel's default for ``.nii.gz``), replacing the voxels no box covered by the class's ``fill`` value, and renames it
onto the output atomically (0644). Peak memory is one written box plus one chunk, whatever the volume size.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import nibabel as nib
import numpy as np
from nibabel.arraywriters import get_slope_inter, make_array_writer

from shared_backbones.cliutil import atomic_output, check_output
from shared_backbones.errors import InputError

from .io import _GEOMETRY_FIELDS, Case, like_header

#: Largest block read from the raw file and written to the output at a time in :meth:`SlabProbabilityWriter.close`.
CHUNK_BYTES = 16 * 2**20
#: gzip level of ``.nii.gz`` outputs: nibabel's default (``nibabel.openers.Opener.default_compresslevel``).
GZIP_LEVEL = 1
_ITEMSIZE = 4  # float32


def probability_header(ref: Case, classes: int, descrip: str | None = None) -> nib.Nifti1Header:
    """The header :func:`medseg.io.write_like` writes for a float32 ``[X, Y, Z, classes]`` array like ``ref``
    (NIfTI-2 when ``ref.header`` is NIfTI-2), finalised as nibabel's ``to_file_map`` finalises it."""
    shape = tuple(int(s) for s in ref.spatial_shape) + (int(classes),)
    hdr = like_header(ref.header, np.dtype(np.float32), shape)
    if descrip is not None:
        hdr["descrip"] = descrip[:79]
    img_cls = nib.Nifti2Image if isinstance(ref.header, nib.Nifti2Header) else nib.Nifti1Image
    # A zero-stride stand-in array: the image object wants data of the right shape, none is allocated.
    img = img_cls(np.broadcast_to(np.float32(0), shape), None, header=hdr)
    for k in _GEOMETRY_FIELDS:
        img.header[k] = ref.header[k]
    img.update_header()
    out = img.header
    # As nibabel's to_file_map: unset (NaN) slope/intercept are replaced by the array writer's. Writing float32 as
    # float32 never scales, whatever the values, so a one-voxel stand-in gives the writer's (1.0, 0.0).
    if out.has_data_slope and out.has_data_intercept:
        slope, inter = out["scl_slope"].item(), out["scl_inter"].item()
        if np.isnan(slope) and np.isnan(inter):
            writer = make_array_writer(np.zeros(1, np.float32), out.get_data_dtype(), True, True)
            out.set_slope_inter(*get_slope_inter(writer))
    return out


def header_bytes(hdr: nib.Nifti1Header) -> bytes:
    """The bytes in front of the data block of a single-file NIfTI with header ``hdr``: the header, its extensions
    and the zero padding up to ``vox_offset`` (what nibabel's ``to_file_map`` writes before the array)."""
    buf = io.BytesIO()
    hdr.write_to(buf)
    offset = int(hdr.get_data_offset())
    if buf.tell() < offset:
        buf.write(bytes(offset - buf.tell()))
    return buf.getvalue()


def is_compressed(path: str | Path) -> bool:
    """True for a ``.nii.gz`` (gzip) output name."""
    return str(path).lower().endswith(".gz")


def free_bytes_needed(shape: Sequence[int], classes: int) -> int:
    """Disk space :class:`SlabProbabilityWriter` needs next to its output for a ``shape`` volume with ``classes``
    float32 maps: the raw temporary file (4 bytes x voxels x classes) plus the output while both exist, counted at
    the same size for ``.nii.gz`` too (softmax probabilities of a network barely compress: about 1.05x at gzip
    level 1 measured on random logits)."""
    raw = int(np.prod([int(s) for s in shape], dtype=np.int64)) * int(classes) * _ITEMSIZE
    return 2 * raw


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f}"


def _cleanup(fd: int | None, raw: str) -> None:
    """Close the raw file and remove it (also run by the finaliser of a writer never closed)."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(raw)


class SlabProbabilityWriter:
    """Write a ``[X, Y, Z, K]`` float32 probability image box by box with memory bounded by the box (see the module
    docstring for the format and the method).

    ``path``: the output (``.nii.gz`` or ``.nii``); ``ref``: the case whose affine and header geometry it carries;
    ``classes``: K; ``fill``: one value per class for voxels no box covers (e.g. 1.0 for background, 0.0 for the
    others); ``overwrite``: replace an existing output (refused otherwise, here, before any work); ``descrip``: the
    header's description (as :func:`medseg.io.write_like`'s). Raises :class:`InputError` when the output exists, its
    folder is unusable, or the disk next to it cannot hold :func:`free_bytes_needed`.

    Use as a context manager: the file is finished on success and nothing is left behind on an exception::

        with SlabProbabilityWriter(out, case, K, fill=[1.0] + [0.0] * (K - 1)) as w:
            for z0, z1, probs in slabs:                 # probs: float32 [X, Y, z1 - z0, K]
                w.write((slice(0, X), slice(0, Y), slice(z0, z1)), probs)
    """

    def __init__(self, path: str | Path, ref: Case, classes: int, *, fill: Sequence[float] | np.ndarray,
                 overwrite: bool = False, descrip: str | None = None) -> None:
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        self._fd: int | None = None
        self._done = False
        check_output(self.path, self.overwrite)  # the refusal of an existing output comes before any work
        classes = int(classes)
        if classes < 1:
            raise ValueError(f"classes must be >= 1, got {classes}")
        fill_arr = np.asarray(fill, dtype=np.float64).reshape(-1)
        if fill_arr.shape != (classes,):
            raise ValueError(f"fill needs one value per class ({classes}), got {fill_arr.size}")
        self.classes = classes
        self.shape: tuple[int, int, int, int] = tuple(int(s) for s in ref.spatial_shape) + (classes,)  # type: ignore[assignment]
        self.header = probability_header(ref, classes, descrip)
        self._dtype = np.dtype(self.header.get_data_dtype())  # float32 in the header's byte order
        self._fill = fill_arr.astype(self._dtype)
        self._header_bytes = header_bytes(self.header)
        self.raw_bytes = int(np.prod(self.shape, dtype=np.int64)) * _ITEMSIZE
        need = free_bytes_needed(self.shape[:3], classes)
        free = shutil.disk_usage(self.path.parent).free
        if free < need:
            raise InputError(f"--save-probabilities needs about {_gb(need)} GB of disk next to the output, "
                             f"only {_gb(free)} GB free", self.path)
        fd, raw = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".raw", dir=self.path.parent)
        self._fd, self.raw_path = fd, Path(raw)
        self._finalizer = weakref.finalize(self, _cleanup, fd, raw)
        try:
            os.ftruncate(fd, self.raw_bytes)  # sparse: unwritten ranges take no disk and read back as zeros
        except OSError as exc:
            self.abort()
            raise InputError(f"cannot create the temporary probability file ({exc.strerror or exc})", raw) from None
        self._boxes: list[tuple[int, int, int, int, int, int]] = []  # (x0, x1, y0, y1, z0, z1) per write

    # ------------------------------------------------------------------------------------------------ writing
    def _check_box(self, box: tuple[slice, slice, slice]) -> tuple[int, int, int, int, int, int]:
        if len(box) != 3 or not all(isinstance(s, slice) for s in box):
            raise ValueError(f"box must be three slices (x, y, z), got {box!r}")
        out: list[int] = []
        for s, n, ax in zip(box, self.shape[:3], "xyz"):
            if s.step not in (None, 1):
                raise ValueError(f"box slice {ax} has step {s.step}; only contiguous boxes are written")
            a = 0 if s.start is None else int(s.start)
            b = n if s.stop is None else int(s.stop)
            if not 0 <= a <= b <= n:
                raise ValueError(f"box slice {ax} [{s.start}:{s.stop}] is outside 0..{n} or reversed")
            out += [a, b]
        return tuple(out)  # type: ignore[return-value]

    def _pwrite(self, buf: np.ndarray, offset: int) -> None:
        mv = memoryview(buf).cast("B")
        done = 0
        try:
            while done < len(mv):
                done += os.pwrite(self._fd, mv[done:], offset + done)  # type: ignore[arg-type]
        except OSError as exc:
            raise InputError(f"cannot write the temporary probability file ({exc.strerror or exc})",
                             self.raw_path) from None

    def write(self, box: tuple[slice, slice, slice], data: np.ndarray) -> None:
        """Store ``data`` (``[X', Y', Z', K]``, float32; other float types are converted) for the file-space ``box``
        ``(slice(x0, x1), slice(y0, y1), slice(z0, z1))``. Boxes may come in any order and may overlap (the last
        write wins). A full-X/Y box is K contiguous writes; other boxes are written as contiguous runs."""
        if self._done:
            raise ValueError("write on a closed SlabProbabilityWriter")
        x0, x1, y0, y1, z0, z1 = self._check_box(box)
        expected = (x1 - x0, y1 - y0, z1 - z0, self.classes)
        if tuple(data.shape) != expected:
            raise ValueError(f"data shape {tuple(data.shape)} does not match the box {expected}")
        if not np.issubdtype(data.dtype, np.floating):
            raise ValueError(f"probabilities must be floating point, got {data.dtype}")
        if 0 in expected:
            return
        X, Y, Z, _ = self.shape
        for k in range(self.classes):
            # [Z', Y', X'] in C order = the class's box in the file's Fortran order
            blk = np.ascontiguousarray(data[..., k].transpose(2, 1, 0), dtype=self._dtype)
            base = k * Z * Y * X
            if x0 == 0 and x1 == X and y0 == 0 and y1 == Y:  # one run: the whole slab of this class
                self._pwrite(blk, (base + z0 * Y * X) * _ITEMSIZE)
            elif x0 == 0 and x1 == X:  # one run per z plane
                for j, z in enumerate(range(z0, z1)):
                    self._pwrite(blk[j], (base + (z * Y + y0) * X) * _ITEMSIZE)
            else:  # one run per row
                for j, z in enumerate(range(z0, z1)):
                    for i, y in enumerate(range(y0, y1)):
                        self._pwrite(blk[j, i], (base + (z * Y + y) * X + x0) * _ITEMSIZE)
        self._boxes.append((x0, x1, y0, y1, z0, z1))

    # ------------------------------------------------------------------------------------------------ closing
    def _coverage(self, boxes: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """Which voxels of rows ``r0..r1`` (row = z * Y + y, each X voxels) some box wrote: bool ``[rows, X]``."""
        X, Y = self.shape[0], self.shape[1]
        mask = np.zeros((r1 - r0, X), dtype=bool)
        if not len(boxes):
            return mask
        zlo, zhi = r0 // Y, (r1 - 1) // Y
        cand = boxes[(boxes[:, 4] <= zhi) & (boxes[:, 5] > zlo)]
        if not len(cand):
            return mask
        rows = np.arange(r0, r1)
        zr, yr = rows // Y, rows % Y
        for bx0, bx1, by0, by1, bz0, bz1 in cand:
            sel = (zr >= bz0) & (zr < bz1) & (yr >= by0) & (yr < by1)
            mask[sel, bx0:bx1] = True
        return mask

    def _read_into(self, mv: memoryview, offset: int) -> None:
        got = 0
        while got < len(mv):
            n = os.preadv(self._fd, [mv[got:]], offset + got)  # type: ignore[arg-type]
            if n <= 0:
                raise OSError(f"temporary probability file {self.raw_path} ended early")
            got += n

    def _stream(self, out: io.BufferedIOBase | gzip.GzipFile) -> None:
        """Write the header and the data block (fill applied to uncovered voxels) to ``out`` in bounded chunks."""
        out.write(self._header_bytes)
        X, Y, Z, K = self.shape
        rows = Y * Z
        rows_per_chunk = max(1, CHUNK_BYTES // (X * _ITEMSIZE))
        buf = bytearray(min(rows, rows_per_chunk) * X * _ITEMSIZE)
        view = memoryview(buf)
        boxes = np.asarray(self._boxes, dtype=np.int64).reshape(-1, 6)
        full: dict[int, bool] = {}  # chunk start row -> every voxel written (same for every class)
        advise = getattr(os, "posix_fadvise", None)
        for k in range(K):
            for r0 in range(0, rows, rows_per_chunk):
                r1 = min(rows, r0 + rows_per_chunk)
                n = (r1 - r0) * X * _ITEMSIZE
                offset = (k * rows + r0) * X * _ITEMSIZE
                self._read_into(view[:n], offset)
                if not full.get(r0, False):
                    mask = self._coverage(boxes, r0, r1)
                    full[r0] = bool(mask.all())
                    if not full[r0]:
                        arr = np.frombuffer(buf, dtype=self._dtype, count=(r1 - r0) * X).reshape(r1 - r0, X)
                        arr[~mask] = self._fill[k]
                        del arr
                out.write(view[:n])
                if advise is not None:  # the raw file's pages are not needed again: keep the page cache for others
                    advise(self._fd, offset, n, os.POSIX_FADV_DONTNEED)
        view.release()

    def close(self) -> Path:
        """Finish the output (header, then the data streamed in chunks; gzip for ``.nii.gz``), rename it onto
        ``path`` atomically with mode 0644, remove the raw temporary file and return ``path``."""
        if self._done:
            raise ValueError("SlabProbabilityWriter already closed")
        try:
            with atomic_output(self.path, self.overwrite) as tmp, open(tmp, "wb") as fh:
                if is_compressed(self.path):
                    # as nibabel's DeterministicGzipFile: no file name, mtime 0, level 1
                    with gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=fh, mtime=0) as gz:
                        self._stream(gz)
                else:
                    self._stream(fh)
        except OSError as exc:
            self.abort()
            raise InputError(f"cannot write the probabilities ({exc.strerror or exc})", self.path) from None
        except BaseException:
            self.abort()
            raise
        self._release()
        return self.path

    def _release(self) -> None:
        self._done = True
        fd, self._fd = self._fd, None
        self._finalizer.detach()
        _cleanup(fd, str(self.raw_path))

    def abort(self) -> None:
        """Remove the temporary file and write nothing (an existing output is left as it was)."""
        if self._done or self._fd is None:
            self._done = True
            return
        self._release()

    def __enter__(self) -> SlabProbabilityWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
