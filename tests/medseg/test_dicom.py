"""DICOM series in (geometry checked against dcm2niix run on the same files), DICOM SEG out (read back with
highdicom and compared voxel for voxel), series selection, zip input and the refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from medseg_testutil import make_model_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medseg.dicom import list_series, seg_frames, write_dicom_seg
from medseg.io import read_case
from medseg.volume_cli import main
from shared_backbones.errors import OutputExistsError

DCM2NIIX = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))

S30, C30 = 0.5, np.sqrt(3) / 2
ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "coronal": (1, 0, 0, 0, 0, -1),
    "oblique": (C30, S30, 0, -S30 * C30, C30 * C30, S30),  # rotated about z, then tilted about the row axis
}


def write_series(folder: Path, iop=ORIENTATIONS["axial"], *, n: int = 5, rows: int = 6, cols: int = 7,
                 spacing=(0.8, 0.7), step: float = 2.5, order: str = "ascending", modality: str = "CT",
                 slope: float = 1.0, intercept: float = -1024.0, origin=(-10.0, 20.0, 30.0), seed: int = 0,
                 series_uid: str | None = None, description: str = "", positions=None, volume=None) -> np.ndarray:
    """Write a single-frame series with pydicom; returns the stored values ``[slice, row, column]`` in position
    order. ``order`` maps positions to file names and instance numbers: ascending, descending or shuffled."""
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(iop, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    rng = np.random.default_rng(seed)
    vol = rng.integers(0, 2000, (n, rows, cols)).astype(np.int16) if volume is None else volume.astype(np.int16)
    index = {"ascending": np.arange(n), "descending": np.arange(n)[::-1], "shuffled": rng.permutation(n)}[order]
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    study, frame, series_uid = generate_uid(), generate_uid(), series_uid or generate_uid()
    for k in range(n):
        sop = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop, modality
        ds.PatientName, ds.PatientID, ds.StudyID = "Phantom^Test", "P1", "1"  # no birth date/sex: anonymised
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "1", ""
        ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "Phantom", 3, int(index[k]) + 1
        ds.SeriesDescription = description
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        pos = np.asarray(origin) + normal * step * k if positions is None else np.asarray(positions[k])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.PixelSpacing = [f"{spacing[0]}", f"{spacing[1]}"]
        ds.SliceThickness = "9.0"  # deliberately not the spacing
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope}", f"{intercept}"
        ds.PixelData = vol[k].tobytes()
        ds.save_as(folder / f"IM{int(index[k]):04d}.dcm", enforce_file_format=True)
    return vol


def dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    if not Path(DCM2NIIX).exists():
        pytest.skip("dcm2niix (peers extra) is not installed")
    out.mkdir()
    subprocess.run([DCM2NIIX, "-f", "ref", "-z", "n", "-o", str(out), str(folder)], check=True, capture_output=True)
    return nib.load(str(out / "ref.nii"))


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medseg: error: "), err
    return err[0]


# ------------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("orientation,modality,order", [
    ("axial", "CT", "ascending"),
    ("axial", "MR", "descending"),
    ("sagittal", "MR", "shuffled"),
    ("coronal", "CT", "descending"),
    ("oblique", "CT", "shuffled"),
    ("oblique", "MR", "ascending"),
])
def test_geometry_and_voxels_equal_dcm2niix(tmp_path, orientation, modality, order):
    slope, intercept = (1.0, -1024.0) if modality == "CT" else (0.5, 10.0)
    vol = write_series(tmp_path / "s", ORIENTATIONS[orientation], order=order, modality=modality, slope=slope,
                       intercept=intercept)
    ref = dcm2niix(tmp_path / "s", tmp_path / "ref")
    case = read_case(tmp_path / "s")
    assert case.data.shape == (1, 7, 6, 5) and case.name == "s"
    np.testing.assert_allclose(case.affine, ref.affine, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(case.data[0], ref.get_fdata())
    # independently of dcm2niix: modality values and PS3.3 C.7.6.2.1.1 positions (LPS -> RAS)
    np.testing.assert_array_equal(case.data[0][:, ::-1, :].transpose(2, 1, 0), vol * slope + intercept)
    iop = np.asarray(ORIENTATIONS[orientation])
    normal = np.cross(iop[:3], iop[3:])
    for k in (0, 4):
        for r, c in ((0, 0), (5, 3)):
            lps = np.array([-10.0, 20.0, 30.0]) + normal * 2.5 * k + iop[:3] * 0.7 * c + iop[3:] * 0.8 * r
            world = case.affine @ [c, 5 - r, k, 1]
            np.testing.assert_allclose(world[:3], lps * [-1, -1, 1], atol=1e-5)
    assert nib.aff2axcodes(case.affine) == nib.aff2axcodes(ref.affine)


def test_zip_is_read_without_extracting_and_equals_the_folder(tmp_path, monkeypatch):
    vol = write_series(tmp_path / "s", ORIENTATIONS["coronal"], order="shuffled")
    raw = tmp_path / "s" / "IM0002.dcm"  # an old-style data set: no preamble, no file meta, implicit VR
    ds = pydicom.dcmread(raw)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(raw, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert raw.read_bytes()[:2] == b"\x08\x00"
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((tmp_path / "s").iterdir()):
            zf.write(p, f"export/DICOM/{p.name}")
        zf.writestr("export/README.txt", "not dicom")

    def no_extract(*args, **kwargs):
        raise AssertionError("extracted to disk")

    monkeypatch.setattr(zipfile.ZipFile, "extract", no_extract)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_extract)
    a, b = read_case(tmp_path / "s"), read_case(archive)
    assert b.name == "study"
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(a.data[0][:, ::-1].transpose(2, 1, 0), vol - 1024.0)


def test_compressed_pixel_data(tmp_path, capsys, model_file):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1, RLELossless

    vol = write_series(tmp_path / "rle", ORIENTATIONS["axial"])
    for p in (tmp_path / "rle").iterdir():  # RLE Lossless: decoded by pydicom itself
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(p)
    assert pydicom.dcmread(next((tmp_path / "rle").iterdir())).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_case(tmp_path / "rle").data[0][:, ::-1].transpose(2, 1, 0), vol - 1024.0)

    write_series(tmp_path / "jpeg", ORIENTATIONS["axial"])
    bad = sorted((tmp_path / "jpeg").iterdir())[2]
    ds = pydicom.dcmread(bad)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(bad)
    out = tmp_path / "o.nii.gz"
    assert main(["predict", str(tmp_path / "jpeg"), "-m", str(model_file), "-o", str(out), "--quiet"]) == 2
    err = _one_error(capsys)
    assert f"{bad}: cannot decode the pixel data (JPEG Lossless, Non-Hierarchical, First-Order Prediction" in err
    assert not out.exists()


def test_several_series_are_listed_and_chosen(tmp_path, capsys, model_file):
    ct_uid, mr_uid = generate_uid(), generate_uid()
    write_series(tmp_path / "study" / "ct", series_uid=ct_uid, description="Abdomen 2.5", n=5)
    write_series(tmp_path / "study" / "mr", ORIENTATIONS["sagittal"], modality="MR", series_uid=mr_uid,
                 description="T1 sag", n=4, seed=1)
    (tmp_path / "study" / "DICOMDIR.txt").write_text("notes")
    found = {s.uid: s for s in list_series(tmp_path / "study")}
    assert set(found) == {ct_uid, mr_uid} and found[mr_uid].slices == 4 and found[ct_uid].modality == "CT"
    out = tmp_path / "o.nii.gz"
    assert main(["predict", str(tmp_path / "study"), "-m", str(model_file), "-o", str(out), "--quiet"]) == 2
    err = _one_error(capsys)
    assert "2 series; choose one with --series UID" in err
    assert f"{ct_uid} (CT, 'Abdomen 2.5', 5 slices)" in err and f"{mr_uid} (MR, 'T1 sag', 4 slices)" in err
    assert not out.exists()
    assert main(["predict", str(tmp_path / "study"), "-m", str(model_file), "-o", str(out), "--series", mr_uid,
                 "--quiet"]) == 0
    assert nib.load(str(out)).shape == (7, 6, 4)
    np.testing.assert_allclose(nib.load(str(out)).affine, read_case(tmp_path / "study", series=mr_uid).affine,
                               atol=1e-5, rtol=0)  # float32 in the NIfTI header
    assert main(["predict", str(tmp_path / "study"), "-m", str(model_file), "-o", str(out), "--series", "1.2.3",
                 "--overwrite", "--quiet"]) == 2
    assert "no series '1.2.3'; found 2" in _one_error(capsys)
    assert main(["predict", str(out), "-m", str(model_file), "-o", str(tmp_path / "x.nii.gz"), "--series", mr_uid,
                 "--quiet"]) == 2
    assert "--series applies to DICOM input" in _one_error(capsys)


def _refused(tmp_path: Path, kind: str) -> tuple[Path, str]:
    folder = tmp_path / kind
    axial = np.array([0.0, 0.0, 1.0])
    if kind == "tilt":  # each slice shifted along y by 0.5 mm per 2.5 mm step: gantry tilt of 11.3 degrees
        write_series(folder, positions=[(0, 0.5 * k, 2.5 * k) for k in range(5)])
        return folder, "gantry tilt 11.31 degrees"
    if kind == "gap":  # the middle slice is missing
        write_series(folder, positions=[axial * z for z in (0, 2.5, 5.0, 10.0, 12.5)])
        return folder, "non-uniform slice spacing: gaps from 2.500 to 5.000 mm"
    if kind == "duplicate":  # two echoes at every position
        write_series(folder, positions=[axial * z for z in (0, 0, 2.5, 2.5, 5.0)])
        return folder, "slices share a position"
    if kind == "single":
        write_series(folder, n=1)
        return folder, "single slice"
    if kind == "truncated":
        write_series(folder)
        last = sorted(folder.iterdir())[3]
        last.write_bytes(last.read_bytes()[:-30])
        return folder, f"{last}: cannot decode the pixel data (Explicit VR Little Endian): The number of bytes"
    if kind == "zip":
        folder = tmp_path / "broken.zip"
        folder.write_bytes(b"PK\x03\x04 truncated")
        return folder, "not a readable zip archive"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["tilt", "gap", "duplicate", "single", "truncated", "zip"])
def test_unusable_series_are_refused_in_one_line(tmp_path, capsys, model_file, kind):
    source, message = _refused(tmp_path, kind)
    out = tmp_path / "o.nii.gz"
    assert main(["predict", str(source), "-m", str(model_file), "-o", str(out), "--quiet"]) == 2
    err = _one_error(capsys)
    assert message in err and str(source) in err and "Traceback" not in err
    assert not out.exists()


def _enhanced(tmp_path: Path, orientation: str, order: str) -> tuple[Path, Path]:
    """The same series twice: single-frame files, and one Legacy Converted Enhanced CT (multi-frame) made from
    them with highdicom."""
    import highdicom as hd

    write_series(tmp_path / "single", ORIENTATIONS[orientation], order=order, n=6)
    legacy = [pydicom.dcmread(p) for p in sorted((tmp_path / "single").iterdir())]
    for ds in legacy:
        ds.PatientBirthDate, ds.PatientSex = "", ""
    (tmp_path / "multi").mkdir()
    hd.legacy.LegacyConvertedEnhancedCTImage(legacy, hd.UID(), 4, hd.UID(), 1).save_as(tmp_path / "multi" / "ct.dcm")
    return tmp_path / "single", tmp_path / "multi"


@pytest.mark.parametrize("orientation,order", [("oblique", "shuffled"), ("sagittal", "descending")])
def test_multiframe_enhanced_series_equals_dcm2niix_and_single_frames(tmp_path, orientation, order):
    single, multi = _enhanced(tmp_path, orientation, order)
    ref = dcm2niix(multi, tmp_path / "ref")
    case, flat = read_case(multi), read_case(single)
    assert case.source.info.multiframe and case.source.info.slices == 6
    np.testing.assert_allclose(case.affine, ref.affine, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(case.data[0], ref.get_fdata())
    np.testing.assert_array_equal(case.data, flat.data)
    np.testing.assert_allclose(case.affine, flat.affine, atol=1e-6, rtol=0)


def _seg_volume_by_position(seg_path: Path, case) -> np.ndarray:
    """Rebuild a label volume from a SEG's own plane positions (what viewers use), through the NIfTI affine."""
    seg = pydicom.dcmread(seg_path)
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    ps = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    out = np.zeros(case.spatial_shape, np.int64)
    inv = np.linalg.inv(case.affine)
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, fg in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        lps = np.array([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for r, c in zip(*np.nonzero(frame)):
            world = (lps + iop[:3] * ps[1] * c + iop[3:] * ps[0] * r) * [-1, -1, 1]
            i, j, k = np.round(inv @ [*world, 1])[:3].astype(int)
            assert out[i, j, k] == 0
            out[i, j, k] = number
    return out


def test_dicom_seg_on_a_multiframe_source(tmp_path):
    _, multi = _enhanced(tmp_path, "oblique", "shuffled")
    case = read_case(multi)
    labels = np.random.default_rng(5).integers(0, 3, case.spatial_shape).astype(np.uint8)
    seg_path = write_dicom_seg(tmp_path / "seg.dcm", labels, case, ["background", "liver", "tumour"])
    np.testing.assert_array_equal(_seg_volume_by_position(seg_path, case), labels)
    seg = pydicom.dcmread(seg_path)
    src = pydicom.dcmread(multi / "ct.dcm", stop_before_pixels=True)
    refs = {
        (item.ReferencedSOPInstanceUID, int(item.ReferencedFrameNumber))
        for fg in seg.PerFrameFunctionalGroupsSequence for item in fg.DerivationImageSequence[0].SourceImageSequence
    }
    assert {uid for uid, _ in refs} == {src.SOPInstanceUID} and {f for _, f in refs} <= set(range(1, 7))


# -------------------------------------------------------------------------------------------------- SEG out
def _seg_volume(seg_path: Path, source: Path, case) -> np.ndarray:
    """Rebuild a label volume on the case's grid from a SEG: each frame goes to the slice of the source image it
    references (found by SOP instance UID), placed with that image's position and the NIfTI affine."""
    seg = pydicom.dcmread(seg_path)
    by_uid = {}
    for p in source.iterdir():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        by_uid[ds.SOPInstanceUID] = ds
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    assert numbers == list(range(1, len(numbers) + 1))
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out = np.zeros(case.spatial_shape, np.int64)
    inv = np.linalg.inv(case.affine)
    for frame, fg in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = by_uid[uid]
        lps = np.array([float(v) for v in src.ImagePositionPatient])
        iop = np.array([float(v) for v in src.ImageOrientationPatient])
        ps = [float(v) for v in src.PixelSpacing]
        for r, c in zip(*np.nonzero(frame)):
            world = (lps + iop[:3] * ps[1] * c + iop[3:] * ps[0] * r) * [-1, -1, 1]
            i, j, k = np.round(inv @ [*world, 1])[:3].astype(int)
            assert out[i, j, k] == 0, "two segments on one voxel"
            out[i, j, k] = number
    return out


def test_dicom_seg_round_trip_voxel_for_voxel(tmp_path):
    import highdicom as hd

    write_series(tmp_path / "s", ORIENTATIONS["oblique"], order="shuffled", n=6, rows=9, cols=8)
    case = read_case(tmp_path / "s")
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, case.spatial_shape).astype(np.uint8)
    labels[..., 2] = 0  # an empty slice
    labels[labels == 3] = 0  # class 3 predicted nowhere: still described
    classes = ["background", "liver", "spleen", "left kidney"]
    seg_path = write_dicom_seg(tmp_path / "seg.dcm", labels, case, classes, model_name="tiny")
    seg = hd.seg.segread(seg_path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == classes[1:]
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "convsuite" and seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    src = pydicom.dcmread(next((tmp_path / "s").iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    np.testing.assert_array_equal(_seg_volume(seg_path, tmp_path / "s", case), labels)
    # highdicom's own reading of the SEG, frame by source instance
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in (tmp_path / "s").iterdir()}
    uids = [ds.SOPInstanceUID for ds in case.source.datasets]
    assert set(uids) == set(by_uid)
    stack = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                              skip_overlap_checks=True)
    np.testing.assert_array_equal(stack, seg_frames(labels, case.source))
    with pytest.raises(OutputExistsError):
        write_dicom_seg(tmp_path / "seg.dcm", labels, case, classes)


def test_predict_on_dicom_equals_predict_on_dcm2niix_nifti_and_writes_seg(tmp_path, capsys):
    model = make_model_file(tmp_path / "tiny.pt", num_classes=3)
    x, y = np.meshgrid(np.arange(14), np.arange(12), indexing="xy")
    blob = ((x - 6) ** 2 + (y - 5) ** 2 < 16).astype(np.int16) * 900
    vol = np.stack([blob + 40 * k for k in range(6)])
    write_series(tmp_path / "series", ORIENTATIONS["sagittal"], n=6, rows=12, cols=14, volume=vol, order="shuffled")
    ref = dcm2niix(tmp_path / "series", tmp_path / "ref")
    seg = tmp_path / "labels.dcm"
    assert main(["predict", str(tmp_path / "series"), "-m", str(model), "--dicom-seg", str(seg), "--quiet"]) == 0
    out = tmp_path / "series_seg.nii.gz"  # default name from the series folder
    lab = nib.load(str(out))
    np.testing.assert_allclose(lab.affine, ref.affine, atol=1e-4, rtol=0)
    assert lab.shape == ref.shape and lab.get_data_dtype() == np.uint8
    assert main(["predict", str(tmp_path / "ref" / "ref.nii"), "-m", str(model), "-o", str(tmp_path / "n.nii.gz"),
                 "--quiet"]) == 0
    np.testing.assert_array_equal(np.asarray(lab.dataobj), np.asarray(nib.load(str(tmp_path / "n.nii.gz")).dataobj))
    case = read_case(tmp_path / "series")
    np.testing.assert_array_equal(_seg_volume(seg, tmp_path / "series", case), np.asarray(lab.dataobj))
    assert [s.SegmentLabel for s in pydicom.dcmread(seg).SegmentSequence] == ["organ", "lesion"]
    # the SEG needs DICOM input, and refuses to overwrite
    nifti = tmp_path / "ref" / "ref.nii"
    assert main(["predict", str(nifti), "-m", str(model), "-o", str(tmp_path / "m.nii.gz"), "--dicom-seg",
                 str(tmp_path / "x.dcm"), "--quiet"]) == 2
    assert "--dicom-seg needs one DICOM input" in _one_error(capsys)
    assert main(["predict", str(tmp_path / "series"), "-m", str(model), "-o", str(tmp_path / "m.nii.gz"),
                 "--dicom-seg", str(seg), "--quiet"]) == 2
    assert "exists" in _one_error(capsys) and not (tmp_path / "m.nii.gz").exists()
