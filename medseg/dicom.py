"""DICOM in, DICOM SEG out: read one CT/MR series (a folder or a zip) into a :class:`medseg.io.Case`, list the
series of a folder, and write a label map back as a DICOM Segmentation object that references the source series.

Geometry follows DICOM PS3.3 C.7.6.2 (Image Plane module): ImageOrientationPatient holds the row direction
cosines ``X`` (the direction in which the column index grows) and the column direction cosines ``Y``; the slice
normal is ``X x Y``; PixelSpacing is (row spacing, column spacing). Slices are sorted by ImagePositionPatient
projected on the normal; the slice spacing comes from consecutive positions (SliceThickness is not the spacing).
Series whose slices do not lie along the normal (gantry tilt) or whose gaps differ (missing or variable slices)
are refused, as are several slices at one position (echoes/phases in one series). Stored values are turned into
modality values with RescaleSlope/RescaleIntercept (PS3.3 C.11.1), per slice.

DICOM patient coordinates are LPS; NIfTI world coordinates are RAS (x and y negated). The array layout equals the
one dcm2niix writes for the same series, so a label map produced from DICOM overlays dcm2niix's NIfTI voxel for
voxel: array axis 0 = column index, axis 1 = row index reversed (last row first), axis 2 = slices in ascending
order along the normal.

The SEG writer builds a BINARY Segmentation IOD (PS3.3 A.51, Segmentation Image module C.8.20.2) with highdicom from
the source datasets: one segment per model class (label = class name, algorithm identification ``convsuite``), each
frame referencing its source slice by SOP instance UID, so a PACS or 3D Slicer shows it on the source series.
"""

from __future__ import annotations

import copy
import io
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from shared_backbones.archives import open_member, open_zip, read_member
from shared_backbones.cliutil import atomic_output
from shared_backbones.errors import InputError, first_line

from .io import Case

#: ImageOrientationPatient of two slices may differ by this much (direction cosines) and still be one volume.
ORIENTATION_TOLERANCE = 1e-4
#: Largest angle (degrees) between the slice direction and the normal before the series counts as tilted.
TILT_TOLERANCE_DEG = 0.1
#: Gaps between consecutive slices may differ by this fraction of the mean gap (DS rounding), at least 0.02 mm.
SPACING_TOLERANCE = 0.01
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------------- sources
class _Source:
    """The files of a folder (recursively) or the members of a zip archive, read as bytes without extracting."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError("file not found", self.path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            self.names = sorted(
                str(p) for p in self.path.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
        else:
            self._zip = open_zip(self.path)
            self.names = sorted(
                i.filename for i in self._zip.infolist()
                if not i.is_dir() and not Path(i.filename).name.startswith(".") and "__MACOSX" not in i.filename
            )

    def display(self, name: str) -> str:
        """How a member is named in messages: the file path, or ``archive.zip:member``."""
        return name if self._zip is None else f"{self.path}:{name}"

    def read(self, name: str, pixels: bool) -> Dataset | None:
        """The member as a pydicom dataset, or None when it is not DICOM."""
        try:
            # a zip member is streamed for the header (a huge non-DICOM member is never inflated whole) and read
            # whole, within a bound, only for its pixels
            raw: IO[bytes] | str
            if self._zip is None:
                raw = name
            elif pixels:
                raw = io.BytesIO(read_member(self._zip, name, "dicom"))
            else:
                raw = open_member(self._zip, name)
            try:
                return pydicom.dcmread(raw, stop_before_pixels=not pixels)
            except InvalidDicomError:
                # no 128-byte preamble: accept raw data sets that start with a group 0008 element
                if isinstance(raw, str):
                    with open(raw, "rb") as fh:
                        head = fh.read(2)
                else:
                    raw.seek(0)
                    head = raw.read(2)
                    raw.seek(0)
                if head != b"\x08\x00":
                    return None
                ds = pydicom.dcmread(raw, stop_before_pixels=not pixels, force=True)
                if "TransferSyntaxUID" not in ds.file_meta:  # say how it was encoded, for the pixel decoder
                    implicit, little = ds.original_encoding
                    explicit = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
                    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else explicit
                return ds
        except InvalidDicomError:
            return None
        except (OSError, zipfile.BadZipFile) as exc:
            raise InputError(f"cannot read ({type(exc).__name__}: {exc})", self.display(name)) from None
        except Exception as exc:  # a truncated or corrupt DICOM file: skipped while listing, an error when needed
            if not pixels:
                return None
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            raise InputError(f"not a readable DICOM file ({why})", self.display(name)) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def own_outputs(folder: str | Path) -> list[Path]:
    """NIfTI files at the top of a series folder that ``medseg predict`` wrote there (``S/S.nii.gz`` and
    ``S/S_probabilities.nii.gz`` after ``medseg predict S/ -o S/``, or any name whose header says it was written
    by ``medseg predict``): they are not inputs, so they do not turn the folder into a folder of NIfTI cases."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    is_own = _own_output_test(folder)
    return sorted(p for p in folder.iterdir() if is_own(p))


def _own_output_test(folder: Path) -> Callable[[Path], bool]:
    """``is_own(p)``: ``p`` is a NIfTI file ``medseg predict`` wrote into the series folder (see :func:`own_outputs`);
    the header is read only for a name that is not one of the series' own."""
    from .io import is_own_output, own_output_names

    names = set(own_output_names(folder.name))

    def is_own(p: Path) -> bool:
        return p.is_file() and p.name.lower().endswith(_NIFTI_SUFFIXES) and (p.name in names or is_own_output(p))

    return is_own


def is_dicom_source(path: str | Path) -> bool:
    """True for a .zip file, or a folder that holds at least one DICOM file (a ``.dcm`` name, the ``DICM`` marker
    after the 128-byte preamble (PS3.10 7.1), or a raw data set starting with a group 0008 element) and no NIfTI
    file at its top level other than the series' own outputs (:func:`own_outputs`)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip"
    if not path.is_dir():
        return False
    is_own = _own_output_test(path)  # stops at the first foreign NIfTI file (a folder of cases: one header read)
    if any(p.name.lower().endswith(_NIFTI_SUFFIXES) and not is_own(p) for p in path.iterdir()):
        return False
    for p in path.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() == ".dcm" or p.name == "DICOMDIR":
            return True
        try:
            with p.open("rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM" or head[:2] == b"\x08\x00":
            return True
    return False


def source_name(path: str | Path) -> str:
    """Case name of a DICOM source: the folder's name, or the zip's name without ``.zip``."""
    path = Path(path)
    return path.stem if path.is_file() else path.name


# ------------------------------------------------------------------------------------------------- listing
@dataclass
class SeriesInfo:
    """One series found in a source: its UID, modality, description, number, and one entry per slice: the member
    (file or zip member) holding it, its frame number in a multi-frame object (None for a single-frame file) and its
    Image Plane attributes (no pixel data). ``files`` holds each member's own header."""

    uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    members: list[str] = field(default_factory=list)
    frames: list[int | None] = field(default_factory=list)
    headers: list[Dataset] = field(default_factory=list, repr=False)
    files: dict[str, Dataset] = field(default_factory=dict, repr=False)

    @property
    def slices(self) -> int:
        return len(self.members)

    @property
    def multiframe(self) -> bool:
        return any(f is not None for f in self.frames)

    def summary(self) -> str:
        """``UID (CT, 'Thorax 1.0', 120 slices)``."""
        parts = [self.modality or "?"]
        if self.description:
            parts.append(repr(self.description))
        where = f" in {len(self.files)} multi-frame file(s)" if self.multiframe else ""
        parts.append(f"{self.slices} slices{where}")
        return f"{self.uid} ({', '.join(parts)})"


#: Modalities of objects that are not images of the patient (they are skipped when listing series).
_NOT_IMAGES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "SR", "KO", "REG", "DOC", "PLAN"}


def _is_enhanced(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def _is_image(ds: Dataset) -> bool:
    if str(ds.get("Modality", "")).upper() in _NOT_IMAGES:
        return False
    return "Rows" in ds and "Columns" in ds and "SeriesInstanceUID" in ds and (
        "ImageOrientationPatient" in ds or _is_enhanced(ds)
    )


def _frame_headers(ds: Dataset) -> list[Dataset]:
    """Per-frame Image Plane attributes of a multi-frame (enhanced) image, from its Per-frame and Shared Functional
    Groups (PS3.3 C.7.6.16: Plane Position, Plane Orientation, Pixel Measures, Pixel Value Transformation)."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else Dataset()
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    wanted = (
        ("PlanePositionSequence", "ImagePositionPatient"),
        ("PlaneOrientationSequence", "ImageOrientationPatient"),
        ("PixelMeasuresSequence", "PixelSpacing"),
        ("PixelValueTransformationSequence", "RescaleSlope"),
        ("PixelValueTransformationSequence", "RescaleIntercept"),
    )
    out = []
    for i in range(n):
        frame = Dataset()
        frame.Rows, frame.Columns = ds.Rows, ds.Columns
        for macro, keyword in wanted:
            for group in ((per[i],) if i < len(per) else ()) + (shared,):
                items = group.get(macro)
                if items and keyword in items[0]:
                    setattr(frame, keyword, items[0][keyword].value)
                    break
            else:
                if keyword in ds:
                    setattr(frame, keyword, ds[keyword].value)
        out.append(frame)
    return out


def _scan(src: _Source) -> list[SeriesInfo]:
    series: dict[str, SeriesInfo] = {}
    for name in src.names:
        ds = src.read(name, pixels=False)
        if ds is None or not _is_image(ds):
            continue
        uid = str(ds.SeriesInstanceUID)
        info = series.get(uid)
        if info is None:
            number = ds.get("SeriesNumber")
            info = series[uid] = SeriesInfo(
                uid,
                str(ds.get("Modality", "")),
                str(ds.get("SeriesDescription", "")).strip(),
                int(number) if number not in (None, "") else None,
            )
        info.files[name] = ds
        if _is_enhanced(ds):
            frames = _frame_headers(ds)
            info.members += [name] * len(frames)
            info.frames += list(range(len(frames)))
            info.headers += frames
        else:
            info.members.append(name)
            info.frames.append(None)
            info.headers.append(ds)
    return sorted(series.values(), key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))


def list_series(path: str | Path) -> list[SeriesInfo]:
    """The image series in a folder (searched recursively) or zip archive, ordered by SeriesNumber. Files that are
    not DICOM, and DICOM objects without an image plane (DICOMDIR, SR, SEG, presentation states), are skipped."""
    src = _Source(path)
    try:
        return _scan(src)
    finally:
        src.close()


def choose_series(found: Sequence[SeriesInfo], uid: str | None, path: str | Path) -> SeriesInfo:
    """The series named by ``uid``, or the only one; several without ``uid`` is a one-line error listing them."""
    if not found:
        raise InputError("no DICOM image series found (no file with an image plane and pixel data)", path)
    if uid is not None:
        for s in found:
            if s.uid == uid:
                return s
        raise InputError(
            f"no series {uid!r}; found {len(found)}: " + "; ".join(s.summary() for s in found), path
        )
    if len(found) > 1:
        raise InputError(
            f"{len(found)} series; choose one with --series UID: " + "; ".join(s.summary() for s in found), path
        )
    return found[0]


# ------------------------------------------------------------------------------------------------- reading
@dataclass
class DicomSeries:
    """A series read as a volume: modality values ``[X, Y, Z]`` (float32, dcm2niix's layout), the RAS affine, and
    for each volume slice the index of its entry in ``info`` (member, frame, header), for a SEG that references it."""

    data: np.ndarray
    affine: np.ndarray
    order: list[int]
    info: SeriesInfo
    source: Path

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def datasets(self) -> list[Dataset]:
        """The source files' headers (no pixel data): one per slice in volume order, or the multi-frame file(s)."""
        if self.info.multiframe:
            return list(self.info.files.values())
        return [self.info.files[self.info.members[i]] for i in self.order]


def _vec(ds: Dataset, key: str, n: int, where: str) -> np.ndarray:
    value = ds.get(key)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise InputError(f"missing or invalid {key} ({value!r})", where)
    return arr


def _pixels(ds: Dataset, where: str) -> np.ndarray:
    """Stored values of a file: ``[rows, columns]`` or ``[frames, rows, columns]``."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"colour image ({ds.get('PhotometricInterpretation')}); a grey-scale CT/MR is required", where)
    try:
        return ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts))
        if ts is not None and ts.is_compressed and not _decoder_available(ts):
            raise InputError(
                f"cannot decode the pixel data ({ts_name}): no decoder installed; pip install python-gdcm "
                "(or convsuite[dicom])",
                where,
            ) from None
        raise InputError(f"cannot decode the pixel data ({ts_name}): {first_line(exc, 120)}", where) from None


def _decoder_available(ts: pydicom.uid.UID) -> bool:
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(ts).is_available)
    except Exception:  # no pixel decoder framework for this transfer syntax
        return False


def _modality_values(pix: np.ndarray, header: Dataset, where: str) -> np.ndarray:
    """One slice as float32 modality values: RescaleSlope * stored + RescaleIntercept (PS3.3 C.11.1.1.2)."""
    if pix.ndim != 2 or pix.shape != (int(header.Rows), int(header.Columns)):
        raise InputError(f"pixel data of shape {pix.shape} does not match Rows x Columns", where)
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    out = pix.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _geometry(datasets: list[Dataset], names: list[str]) -> tuple[list[int], np.ndarray]:
    """Slice order (ascending along the normal) and the LPS affine of the first sorted slice, checked per
    PS3.3 C.7.6.2: one orientation, one pixel spacing, one matrix size, slices along the normal, even gaps."""
    first = names[0]
    iop = _vec(datasets[0], "ImageOrientationPatient", 6, first)
    ps = _vec(datasets[0], "PixelSpacing", 2, first)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(row_dir @ col_dir) > 1e-3:
        raise InputError(f"ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors", first)
    positions = []
    for ds, name in zip(datasets, names):
        if np.abs(_vec(ds, "ImageOrientationPatient", 6, name) - iop).max() > ORIENTATION_TOLERANCE:
            raise InputError("orientation differs from the other slices' (several stacks in one series?)", name)
        if np.abs(_vec(ds, "PixelSpacing", 2, name) - ps).max() > 1e-4:
            raise InputError("PixelSpacing differs from the other slices'", name)
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(f"matrix {ds.Rows}x{ds.Columns} differs from the other slices' {rows}x{cols}", name)
        positions.append(_vec(ds, "ImagePositionPatient", 3, name))
    pos = np.array(positions)
    dist = pos @ normal
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    dist = dist[order]
    gaps = np.diff(dist)
    if (gaps < 1e-3).any():
        k = int(np.argmax(gaps < 1e-3))
        n_dup = int((gaps < 1e-3).sum())
        raise InputError(
            f"{n_dup + 1} slices share a position (e.g. {Path(names[order[k]]).name} and "
            f"{Path(names[order[k + 1]]).name}): several echoes, phases or stacks in one series are not supported",
            names[0],
        )
    step = (pos[order[-1]] - pos[order[0]]) / (len(order) - 1)
    spacing = float(np.linalg.norm(step))
    tilt = float(np.degrees(np.arccos(min(1.0, abs(step @ normal) / spacing))))
    if tilt > TILT_TOLERANCE_DEG:
        raise InputError(
            f"slices are not stacked along their normal (gantry tilt {tilt:.2f} degrees); resample the series "
            "first (e.g. dcm2niix corrects tilt)",
            first,
        )
    deviation = np.abs(gaps - spacing)
    if deviation.max() > max(SPACING_TOLERANCE * spacing, 0.02):
        k = int(np.argmax(deviation))
        raise InputError(
            f"non-uniform slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (mean {spacing:.3f}; "
            f"e.g. {gaps[k]:.3f} mm after slice {k + 1} of {len(order)}): missing slices or a variable-spacing "
            "protocol; a volume needs even spacing",
            first,
        )
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]
    lps[:3, 1] = col_dir * ps[0]
    lps[:3, 2] = step
    lps[:3, 3] = pos[order[0]]
    return order, lps


def read_series(path: str | Path, series_uid: str | None = None) -> DicomSeries:
    """Read one CT/MR series from a folder or zip archive (members read in memory, never extracted).

    With several series in the source, ``series_uid`` chooses one (otherwise a one-line error lists them).
    """
    path = Path(path)
    src = _Source(path)
    try:
        info = choose_series(_scan(src), series_uid, path)
        if info.slices < 2:
            raise InputError(f"series {info.uid} has a single slice; a 3-D volume is required", path)
        names = [src.display(m) + ("" if f is None else f" frame {f + 1}") for m, f in zip(info.members, info.frames)]
        order, lps = _geometry(info.headers, names)  # checked on the headers before any pixel is decoded
        rows, cols = int(info.headers[0].Rows), int(info.headers[0].Columns)
        slabs = np.empty((len(order), rows, cols), dtype=np.float32)  # written slice by slice, contiguously
        targets: dict[str, list[tuple[int, int]]] = {}
        for k, i in enumerate(order):
            targets.setdefault(info.members[i], []).append((k, i))
        for member, slots in targets.items():  # one file's pixel data in memory at a time
            ds = src.read(member, pixels=True)
            if ds is None or ds.get("SOPInstanceUID") != info.files[member].get("SOPInstanceUID"):  # replaced
                raise InputError("changed while being read", src.display(member))
            pix = _pixels(ds, src.display(member))
            del ds
            for k, i in slots:
                frame = info.frames[i]
                one = pix if frame is None or pix.ndim == 2 else pix[frame]
                slabs[k] = _modality_values(one, info.headers[i], names[i])[::-1]
    finally:
        src.close()
    # dcm2niix's layout: the row axis reversed, so the affine starts at the last row of the first slice
    flip = np.eye(4)
    flip[1, 1] = -1
    flip[1, 3] = rows - 1
    affine = _LPS_TO_RAS @ lps @ flip
    return DicomSeries(slabs.transpose(2, 1, 0), affine, order, info, path)  # [X, Y, Z] view, no copy


def nifti_header(affine: np.ndarray, shape: Sequence[int]) -> nib.Nifti1Header:
    """A NIfTI-1 header for ``affine`` (qform and sform, code 1 = scanner) and float32 data of ``shape``."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(tuple(int(s) for s in shape))
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    return hdr


def read_dicom_case(path: str | Path, series_uid: str | None = None, name: str | None = None) -> Case:
    """A DICOM series as the same :class:`~medseg.io.Case` a NIfTI file gives (one channel); the series is kept
    in ``case.source`` for :func:`write_dicom_seg`."""
    from .io import fill_nonfinite

    series = read_series(path, series_uid)
    data = series.data[None]
    mask = fill_nonfinite(data, Path(path))
    return Case(
        data=data,
        affine=series.affine,
        header=nifti_header(series.affine, series.data.shape),
        paths=[Path(path)],
        name=name or source_name(path),
        nonfinite=mask,
        source=series,
    )


# ------------------------------------------------------------------------------------------------- writing
def segment_descriptions(classes: Sequence[str], software: str = "") -> list:
    """One highdicom ``SegmentDescription`` per foreground class (segment number = label value), AUTOMATIC, with
    the algorithm identification ``convsuite`` (PS3.3 C.8.20.2 Segment Description macro)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="convsuite", version=software or "unknown", family=codes.cid7162.ArtificialIntelligence
    )
    out = []
    for number, label in enumerate(classes[1:], start=1):
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(label)[:64],
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    return out


#: Patient/study attributes of type 2 (present, possibly empty) that the SEG copies from its source; anonymised
#: exports often drop them.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName")


def _conformant(ds: Dataset, keyword: str) -> bool:
    if keyword not in ds:
        return False
    value = ds[keyword].value
    parse = {"DA": DA, "TM": TM}.get(ds[keyword].VR)
    if parse is None or value in (None, ""):
        return True
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _with_type2_attributes(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the source datasets where type 2 patient/study attributes that are missing, or dates/times that do
    not conform to their VR, are empty (PS3.5 7.4.3: a type 2 attribute may be empty)."""
    out = []
    for ds in datasets:
        bad = [k for k in _TYPE2 if not _conformant(ds, k)]
        if bad:
            ds = copy.deepcopy(ds)
            for k in bad:
                if k in ds:
                    del ds[k]
                setattr(ds, k, "")
        out.append(ds)
    return out


def seg_frames(labels: np.ndarray, series: DicomSeries) -> np.ndarray:
    """Label map ``[X, Y, Z]`` in the reader's layout -> ``[slices, rows, columns]`` in volume slice order (ascending
    along the normal; ``series.order`` maps them to the source slices)."""
    if labels.shape != series.data.shape:
        raise ValueError(f"label shape {labels.shape} != series shape {series.data.shape}")
    return np.ascontiguousarray(np.transpose(labels[:, ::-1, :], (2, 1, 0)))


def write_dicom_seg(path: str | Path, labels: np.ndarray, case: Case, classes: Sequence[str], *,
                    model_name: str = "", segments: Sequence[int] | None = None, overwrite: bool = False) -> Path:
    """Write ``labels`` (the case's ``[X, Y, Z]`` label map) as a BINARY DICOM SEG (Segmentation IOD, PS3.3 A.51)
    referencing the source series of a case read with :func:`read_dicom_case`; one segment per model class.

    ``segments``: the label values that are classes (a merged task's table, :mod:`medseg.tasks`, may skip values);
    each becomes a segment with its class name, numbered 1, 2, ... in this order (segment numbers start at 1 and
    have no gaps, PS3.3 C.8.20.2); other values must not occur. Default: every value 1 .. len(classes) - 1."""
    series = case.source
    if not isinstance(series, DicomSeries):
        raise InputError("--dicom-seg needs a DICOM input (a series folder or zip)", case.paths[0])
    if segments is not None and list(segments) != list(range(1, len(classes))):
        values = [int(v) for v in segments]
        lut = np.zeros(max([len(classes), *[v + 1 for v in values]]), dtype=np.uint16)
        lut[values] = np.arange(1, len(values) + 1)
        if int(labels.max(initial=0)) >= len(lut) or (np.isin(np.unique(labels), [0, *values], invert=True)).any():
            raise ValueError("labels hold a value that is not one of the segments")
        labels = lut[labels]
        classes = ["background", *[classes[v] for v in values]]
    if len(classes) < 2:
        raise ValueError("a segmentation needs at least one foreground class")
    if int(labels.max(initial=0)) >= len(classes):
        raise ValueError(f"label {int(labels.max())} has no class name ({len(classes)} classes)")
    frames = seg_frames(labels, series).astype(np.uint8 if len(classes) <= 256 else np.uint16)
    if series.info.multiframe:  # frames in the source's frame order (highdicom maps frame i to source frame i)
        _check_multiframe_files(series.info, case.paths[0])
        by_frame = np.empty_like(frames)
        by_frame[[series.info.frames[i] for i in series.order]] = frames
        frames = by_frame
    seg = _segmentation(series, frames, classes, model_name, case.paths[0])
    with atomic_output(path, overwrite) as tmp:
        seg.save_as(str(tmp))
    return Path(path)


def check_seg_source(path: str | Path, series_uid: str | None = None) -> None:
    """Refuse, before any work, a source on which :func:`write_dicom_seg` could not write a SEG: the series' headers
    (no pixel data) go through the same highdicom construction with an almost empty label map (a missing
    FrameOfReferenceUID, study or SOP attributes, several multi-frame files ...)."""
    path = Path(path)
    info = choose_series(list_series(path), series_uid, path)
    if info.multiframe:
        _check_multiframe_files(info, path)
    rows, cols = int(info.headers[0].Rows), int(info.headers[0].Columns)
    frames = np.zeros((info.slices, rows, cols), dtype=np.uint8)  # untouched pages: no memory taken
    frames[0, 0, 0] = 1
    series = DicomSeries(np.zeros((0, 0, 0), np.float32), np.eye(4), list(range(info.slices)), info, path)
    _segmentation(series, frames, ["background", "check"], "", path, prefix="--dicom-seg: ")


def _check_multiframe_files(info: SeriesInfo, path: str | Path) -> None:
    """A SEG references one multi-frame source file (or single-frame slices), never several multi-frame files."""
    if len(info.files) != 1:
        raise InputError(f"a DICOM SEG on a series of {len(info.files)} multi-frame files is not supported (one "
                         "multi-frame file, or single-frame slices, are)", path)


def _segmentation(series: DicomSeries, frames: np.ndarray, classes: Sequence[str], model_name: str,
                  path: str | Path, prefix: str = "") -> Any:
    """The highdicom Segmentation (BINARY; frames ``[n, rows, columns]`` of segment numbers in source order); a
    source attribute highdicom refuses is one line about ``path`` (after ``prefix``)."""
    import highdicom as hd

    from shared_backbones.cliutil import package_version

    version = package_version()
    try:
        return hd.seg.Segmentation(
            source_images=_with_type2_attributes(series.datasets),
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(classes, version),
            series_instance_uid=hd.UID(),
            series_number=int(series.info.number or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="convsuite",
            manufacturer_model_name=(model_name or "medseg")[:64],
            software_versions=version or "unknown",
            device_serial_number="none",
            series_description=f"medseg {model_name}".strip()[:64],
            omit_empty_frames=bool(frames.any()),  # all frames of an empty result: a SEG needs at least one
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom refusing a source attribute
        raise InputError(
            f"{prefix}cannot build a DICOM SEG on this series ({type(exc).__name__}: "
            f"{first_line(exc, 160)})", path) from None
