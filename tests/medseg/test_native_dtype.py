"""``medseg predict`` keeps an unscaled integer image (int16 CT) in its stored type (issue 21: half the memory of a
float32 copy for the whole run) and predicts exactly what it predicts from float32."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from medseg_testutil import make_model_file, write_volume

from medseg.io import read_case
from medseg.predict import load_models, predict_case
from medseg.volume_cli import main


def _int16_ct(path, scaled: bool = False):
    src = nib.load(write_volume(path.with_name("src.nii.gz")))
    data = (np.asanyarray(src.dataobj) * 400 - 1000).astype(np.int16)
    img = nib.Nifti1Image(data, src.affine)
    if scaled:
        img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, str(path))
    return path


def test_native_int16_read_and_predicted_alike(tmp_path):
    ct = _int16_ct(tmp_path / "ct.nii.gz")
    native, f32 = read_case(ct, native=True), read_case(ct)
    assert native.data.dtype == np.int16 and f32.data.dtype == np.float32
    assert np.array_equal(native.data.astype(np.float32), f32.data)
    scaled = read_case(_int16_ct(tmp_path / "scaled.nii.gz", scaled=True), native=True)
    assert scaled.data.dtype == np.float32                                # slope/intercept: float32 as before
    assert np.allclose(scaled.data, f32.data * 0.5 - 3.0)
    models = load_models([make_model_file(tmp_path / "m.pt")], "cpu", "fp32")
    a, b = predict_case(native, models, probabilities=True), predict_case(f32, models, probabilities=True)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.probabilities, b.probabilities)
    out = tmp_path / "seg.nii.gz"
    stats = tmp_path / "s.json"
    assert main(["predict", str(ct), "-m", str(tmp_path / "m.pt"), "-o", str(out), "--stats", str(stats),
                 "--precision", "fp32", "--quiet"]) == 0
    assert np.array_equal(np.asanyarray(nib.load(out).dataobj), b.labels)
