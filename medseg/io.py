"""NIfTI input/output and geometry: reading cases (one or several channel files), moving arrays into the model's
axis convention and back, writing label maps with the input's exact affine and header geometry.

Model axis convention (nnU-Net / STU-Net / TotalSegmentator): the volume is reoriented to the closest canonical
orientation (RAS+ by default, with ``nibabel.orientations``: only axis permutations and flips, never
interpolation) and the nibabel array is transposed (2, 1, 0) to (z, y, x). Spacing is taken from the affine's
column norms, so oblique affines and LPS/RAS files are handled alike. :class:`Geometry` undoes both steps exactly.

A DICOM series (a folder or a zip; :mod:`medseg.dicom`) is read into the same :class:`Case`. Non-finite voxels
(NaN/Inf, e.g. outside the field of view of SPM-resampled images) are set to the channel's minimum finite value
and remembered in ``Case.nonfinite``: prediction leaves them out of the normalisation statistics and labels them
background.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from shared_backbones.cliutil import atomic_output
from shared_backbones.errors import InputError

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})\.nii(\.gz)?$")
# Header fields that carry the geometry; copied verbatim from the input onto every output.
_GEOMETRY_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
)


def is_nifti(path: str | Path) -> bool:
    """True when the name ends in .nii or .nii.gz."""
    name = Path(path).name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def case_name(path: str | Path) -> str:
    """File name without .nii/.nii.gz and without an nnU-Net channel suffix (``case_0000`` -> ``case``)."""
    name = Path(path).name
    m = _CHANNEL_RE.match(name)
    if m:
        return m.group("case")
    return re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)


@dataclass
class Case:
    """One subject: channel data ``[C, X, Y, Z]`` (float32, or the file's integer type when read with
    ``native=True``; nibabel axis order) and the reference image."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    paths: list[Path]
    name: str = ""
    #: voxels ``[X, Y, Z]`` that were NaN/Inf in any channel (filled with the channel's minimum finite value)
    nonfinite: np.ndarray | None = field(default=None, repr=False)
    #: the DICOM series a case was read from (:class:`medseg.dicom.DicomSeries`), for writing a DICOM SEG
    source: Any = field(default=None, repr=False)

    @property
    def nonfinite_count(self) -> int:
        """Number of voxels that were NaN/Inf in the input."""
        return 0 if self.nonfinite is None else int(self.nonfinite.sum())

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[1:])  # type: ignore[return-value]

    @property
    def voxel_sizes(self) -> np.ndarray:
        """Voxel size (mm) along the file's array axes, from the affine's column norms."""
        return voxel_sizes(self.affine)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Spacing (mm) of each array axis: the norm of the affine's first three columns."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI-1/2 image (header only; data stays on disk) with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not a NIfTI file", path)
    if not is_nifti(path):
        raise InputError("not a NIfTI file (expected .nii or .nii.gz)", path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, gzip/zlib/OSError, ValueError on garbage
        raise InputError(
            f"not a readable NIfTI file ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})",
            path,
        ) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"not a NIfTI file ({type(img).__name__})", path)
    return img


#: stored types kept as they are by ``read_case(native=True)`` when the file has no scaling (CT in int16: half the
#: memory of float32, and the values are exact either way)
NATIVE_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16))


def _stored_type(img: nib.Nifti1Image) -> np.dtype | None:
    """The file's integer voxel type when its values need no scaling (slope 1, intercept 0, or unset), else None."""
    dt = np.dtype(img.get_data_dtype())
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    unscaled = (slope is None or np.isnan(slope) or slope == 1) and (inter is None or np.isnan(inter) or inter == 0)
    return dt.newbyteorder("=") if dt.newbyteorder("=") in NATIVE_DTYPES and unscaled else None


def _channels_of(img: nib.Nifti1Image, path: Path, native: bool = False) -> np.ndarray:
    """The image as ``[C, X, Y, Z]`` float32 (``native``: in its stored integer type when that needs no scaling,
    see :data:`NATIVE_DTYPES`); 4-D files are channel-last (X, Y, Z, C)."""
    shape = tuple(img.shape)
    if len(shape) < 3 or shape[2] == 1:
        raise InputError(f"2-D image (shape {shape}); a 3-D volume is required", path)
    if len(shape) > 4 and any(s != 1 for s in shape[4:]):
        raise InputError(f"{len(shape)}-D image of shape {shape} is not supported (3-D, or 4-D channels last)", path)
    try:
        stored = _stored_type(img) if native else None
        data = np.asarray(img.dataobj, dtype=stored or np.float32)
    except Exception as exc:
        raise InputError(f"cannot read the image data ({type(exc).__name__}; truncated file?)", path) from None
    data = data.reshape(shape[:4]) if data.ndim > 4 else data
    data = data[None] if data.ndim == 3 else np.moveaxis(data, 3, 0)
    return np.ascontiguousarray(data)


def fill_nonfinite(data: np.ndarray, path: str | Path | None = None) -> np.ndarray | None:
    """Set NaN/Inf voxels of ``[C, X, Y, Z]`` (in place) to each channel's minimum finite value, the background
    intensity; return the mask ``[X, Y, Z]`` of voxels non-finite in any channel, or None when all are finite."""
    if data.size == 0 or (np.isfinite(data.min()) and np.isfinite(data.max())):  # NaN propagates: no mask needed
        return None
    finite = np.isfinite(data)
    for c in range(data.shape[0]):
        ok = finite[c]
        if not ok.any():
            raise InputError("image has no finite voxel (all NaN/Inf)" + (f" in channel {c}" if c else ""), path)
        if not ok.all():
            data[c][~ok] = data[c][ok].min()
    return ~finite.all(axis=0)


def is_dicom_input(paths: list[str | Path] | str | Path) -> bool:
    """True when ``paths`` is one DICOM source: a .zip, or a folder of DICOM files without NIfTI files."""
    from .dicom import is_dicom_source

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return len(paths) == 1 and is_dicom_source(paths[0])


def read_case(paths: list[str | Path] | str | Path, name: str | None = None, series: str | None = None, *,
              native: bool = False) -> Case:
    """Read one case from one file (3-D, or 4-D channels-last), several files (one channel set each), or one
    DICOM series folder / zip (``series``: the SeriesInstanceUID when the source holds several). ``native``: keep
    an unscaled integer file's stored type (e.g. int16 CT) instead of float32: prediction converts what it uses,
    a big CT then costs half the memory for the whole run."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise InputError("no input files")
    if is_dicom_input(paths):
        from .dicom import read_dicom_case

        return read_dicom_case(paths[0], series, name)
    if series is not None:
        raise InputError("--series applies to DICOM input (a series folder or zip), not to NIfTI files", paths[0])
    arrays, ref = [], None
    for p in paths:
        img = load_nifti(p)
        arr = _channels_of(img, p, native)
        if ref is None:
            ref = (img, p)
        else:
            if arr.shape[1:] != arrays[0].shape[1:]:
                raise InputError(f"shape {arr.shape[1:]} differs from {ref[1].name}'s {arrays[0].shape[1:]}", p)
            if not np.allclose(img.affine, ref[0].affine, atol=1e-3):
                raise InputError(f"affine differs from {ref[1].name}'s (channels must share one geometry)", p)
        arrays.append(arr)
    img0, p0 = ref  # type: ignore[misc]
    if len({a.dtype for a in arrays}) > 1:           # channels stored in different types: one float32 array
        arrays = [a.astype(np.float32, copy=False) for a in arrays]
    data = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    return Case(
        data=data,
        affine=np.asarray(img0.affine, dtype=np.float64),
        header=img0.header.copy(),
        paths=paths,
        name=name or case_name(p0),
        nonfinite=fill_nonfinite(data, p0),
    )


def check_channels(case: Case, expected: int) -> None:
    """Refuse a case whose channel count differs from the model's."""
    c = case.data.shape[0]
    if c == expected:
        return
    first = case.paths[0]
    if len(case.paths) == 1 and c > 1:
        raise InputError(f"4-D image with {c} channels; the model expects {expected}", first)
    raise InputError(
        f"{c} input channel(s) given ({len(case.paths)} file(s)); the model expects {expected} "
        f"(pass one file per channel, or name them <case>_0000.nii.gz ...)",
        first,
    )


# --------------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """How a file's array maps to the model's (z, y, x) array: a reorientation (permutation + flips) to
    ``orientation`` then a (2, 1, 0) transpose. ``spacing`` is in the model's (z, y, x) order (mm)."""

    shape: tuple[int, int, int]
    file_ornt: np.ndarray = field(repr=False)
    orientation: str = "RAS"
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...], orientation: str = "RAS") -> Geometry:
        ornt = io_orientation(np.asarray(affine))
        fwd = ornt_transform(ornt, axcodes2ornt(tuple(orientation)))
        vs = voxel_sizes(affine)
        canon = np.empty(3)
        for i in range(3):
            canon[int(fwd[i, 0])] = vs[i]
        return cls(
            tuple(int(s) for s in shape[:3]),
            ornt,
            orientation,  # type: ignore[arg-type]
            tuple(float(v) for v in canon[::-1]),
        )  # type: ignore[arg-type]

    @property
    def _fwd(self) -> np.ndarray:
        return ornt_transform(self.file_ornt, axcodes2ornt(tuple(self.orientation)))

    @property
    def model_shape(self) -> tuple[int, int, int]:
        out = [0, 0, 0]
        for i, (j, _) in enumerate(self._fwd):
            out[int(j)] = self.shape[i]
        return tuple(out[::-1])  # type: ignore[return-value]

    def forward(self, data: np.ndarray) -> np.ndarray:
        """``[C, X, Y, Z]`` file array -> ``[C, z, y, x]`` model array."""
        canon = apply_orientation(np.moveaxis(data, 0, -1), self._fwd)  # (X', Y', Z', C)
        return np.ascontiguousarray(np.transpose(canon, (3, 2, 1, 0)))

    def backward(self, data: np.ndarray) -> np.ndarray:
        """``[z, y, x]`` or ``[K, z, y, x]`` model array -> ``[X, Y, Z]`` or ``[X, Y, Z, K]`` in the file's order."""
        arr = data.T  # (x, y, z[, K]) canonical, channels last
        inv = ornt_transform(axcodes2ornt(tuple(self.orientation)), self.file_ornt)
        return np.ascontiguousarray(apply_orientation(arr, inv))

    def backward_box(self, box: Sequence[slice]) -> tuple[slice, slice, slice]:
        """Where :meth:`backward` puts the part ``box`` (plain ``(z, y, x)`` slices of :attr:`model_shape`) of a
        model array: the file-space ``(X, Y, Z)`` box that ``backward(part)`` fills."""
        canon = [box[2], box[1], box[0]]                       # (x, y, z) canonical
        sizes = self.model_shape[::-1]
        inv = ornt_transform(axcodes2ornt(tuple(self.orientation)), self.file_ornt)
        out: list[slice] = [slice(0)] * 3
        for i, (ax, flip) in enumerate(inv):
            a, b, _ = canon[i].indices(sizes[i])
            out[int(ax)] = slice(sizes[i] - b, sizes[i] - a) if flip < 0 else slice(a, b)
        return out[0], out[1], out[2]


def model_array(case: Case, orientation: str = "RAS") -> tuple[np.ndarray, Geometry]:
    """The case's channels in the model's (z, y, x) convention and the geometry to undo it."""
    geom = Geometry.from_affine(case.affine, case.spatial_shape, orientation)
    return geom.forward(case.data), geom


# ---------------------------------------------------------------------------------------------------- writing
def label_dtype(max_label: int) -> np.dtype:
    """uint8 up to 255 labels, uint16 above."""
    return np.dtype(np.uint8) if max_label <= 255 else np.dtype(np.uint16)


def like_header(ref: nib.Nifti1Header, dtype: np.dtype, shape: tuple[int, ...]) -> nib.Nifti1Header:
    """A header with ``ref``'s geometry (qform/sform, codes, pixdim, units) for data of ``dtype`` and ``shape``."""
    hdr = ref.copy()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_slope_inter(1.0, 0.0) if np.issubdtype(dtype, np.floating) else hdr.set_slope_inter(None, None)
    hdr["cal_min"], hdr["cal_max"] = 0, 0
    if len(shape) == 3:
        hdr["intent_code"] = 0
        hdr["dim"][4:] = 1
    for k in _GEOMETRY_FIELDS:
        hdr[k] = ref[k]
    hdr["pixdim"][:4] = ref["pixdim"][:4]
    return hdr


#: ``descrip`` of the NIfTI files ``medseg predict`` writes: a series folder that holds them is still a DICOM input
OUTPUT_DESCRIP = "medseg predict"


def is_own_output(path: str | Path) -> bool:
    """True for a NIfTI file written by ``medseg predict`` (its header's ``descrip``; header only, data not read)."""
    try:
        descrip = nib.load(str(path)).header.get("descrip")
        return descrip is not None and bytes(np.asarray(descrip).tobytes()).startswith(OUTPUT_DESCRIP.encode())
    except Exception:  # unreadable: not ours
        return False


def own_output_names(name: str, bare: bool = True) -> list[str]:
    """The file names ``medseg predict`` writes for a case or series ``name`` beside it or in an output folder:
    ``<name>_seg.nii.gz`` (and ``.nii``), the probabilities, and with ``bare`` ``<name>.nii.gz`` (and ``.nii``)."""
    names = [f"{name}_seg.nii.gz", f"{name}_seg.nii", f"{name}_probabilities.nii.gz",
             f"{name}_seg_probabilities.nii.gz"]
    return names + [f"{name}.nii.gz", f"{name}.nii"] if bare else names


def write_like(path: str | Path, data: np.ndarray, ref: Case, overwrite: bool = False,
               descrip: str | None = None) -> Path:
    """Write ``data`` (``[X, Y, Z]`` or ``[X, Y, Z, C]``) atomically with ``ref``'s affine and header geometry
    (``descrip``: the header's description, e.g. :data:`OUTPUT_DESCRIP`)."""
    hdr = like_header(ref.header, data.dtype, data.shape)
    if descrip is not None:
        hdr["descrip"] = descrip[:79]
    img_cls = nib.Nifti2Image if isinstance(ref.header, nib.Nifti2Header) else nib.Nifti1Image
    img = img_cls(data, None, header=hdr)
    for k in _GEOMETRY_FIELDS:
        img.header[k] = ref.header[k]
    with atomic_output(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def write_labels(path: str | Path, labels: np.ndarray, ref: Case, overwrite: bool = False) -> Path:
    """Label map in the file's axis order, uint8 (uint16 above 255 labels), with ``ref``'s geometry; its header's
    description says ``medseg predict labels``."""
    if labels.shape != ref.spatial_shape:
        raise ValueError(f"label shape {labels.shape} != input shape {ref.spatial_shape}")
    dt = label_dtype(int(labels.max()) if labels.size else 0)
    return write_like(path, np.ascontiguousarray(labels.astype(dt, copy=False)), ref, overwrite,
                      descrip=f"{OUTPUT_DESCRIP} labels")


# ---------------------------------------------------------------------------------------------- case discovery
def discover_cases(folder: str | Path) -> list[tuple[str, list[Path]]]:
    """Cases of a folder as (case name, files): nnU-Net channel files (``<case>_0000.nii.gz``, ``<case>_0001...``)
    form one case; every other NIfTI file is a case of its own. Two cases may share a name (``a.nii`` and
    ``a.nii.gz``): the output planner refuses them (they would write one output)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
    if not files:
        raise InputError("no .nii/.nii.gz files (and no DICOM series) in folder", folder)
    groups: OrderedDict[str, list[Path]] = OrderedDict()
    cases: list[tuple[str, list[Path]]] = []
    for p in files:
        if _CHANNEL_RE.match(p.name):
            key = case_name(p)
            if key not in groups:
                groups[key] = []
                cases.append((key, groups[key]))
            groups[key].append(p)
        else:
            cases.append((case_name(p), [p]))
    for key, group in groups.items():
        group.sort(key=lambda f: int(_CHANNEL_RE.match(f.name).group("ch")))  # type: ignore[union-attr]
        ids = [int(_CHANNEL_RE.match(f.name).group("ch")) for f in group]  # type: ignore[union-attr]
        if ids != list(range(len(group))):
            raise InputError(f"case {key!r}: channel files must be numbered _0000.._{len(group) - 1:04d}", group[0])
    return cases
