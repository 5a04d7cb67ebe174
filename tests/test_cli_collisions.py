"""Output planning attacked as a class: for every command that writes files, input sets with colliding stems, outputs
that are (or lie among) inputs, and one path for two outputs. Each must be refused before any work, in one line with
exit 2: nothing is written, no input changes.

The scenarios are generated per command from a few builders (small real inputs: NIfTI volumes, a DICOM series, WAV
and FLAC files, feature arrays, GeoTIFF stacks, and a tiny model file per task); every command of every CLI that
writes a file must appear in ``WRITERS`` (checked against the parsers).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent / "medseg"))

from shared_backbones.checkpoint import ModelFile, save_model_file  # noqa: E402
from shared_backbones.cliutil import iter_subparsers  # noqa: E402
from shared_backbones.registry import create_model  # noqa: E402


# ------------------------------------------------------------------------------------------------ inputs
def _wav(path: Path, seconds: float = 0.2, rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 220 * t)).astype("float32"), rate)
    return path


def _audiosep_model(root: Path) -> Path:
    small = {"enc_kernel_size": 16, "enc_num_feats": 16, "msk_kernel_size": 3, "msk_num_feats": 8,
             "msk_num_hidden_feats": 16, "msk_num_layers": 2, "msk_num_stacks": 1}
    torch.manual_seed(0)
    m = create_model("convtasnet-small", **small)
    return save_model_file(root / "sep.pt", ModelFile.from_model(
        m, task="audiosep", arch="convtasnet-small", arch_kwargs={"num_sources": 2, **small},
        preprocessing={"sample_rate": 8000}))


def _medseg_model(root: Path) -> Path:
    from medseg_testutil import make_model_file

    return make_model_file(root / "unet.pt")


def _volume(path: Path) -> Path:
    from medseg_testutil import write_volume

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_volume(path, shape=(12, 10, 8))


def _series(folder: Path) -> Path:
    from test_dicom import write_series

    write_series(folder, n=4)
    return folder


def _phases_model(root: Path) -> Path:
    from medseg.phases.models import COLON_CLASSES, ColonTCN

    torch.manual_seed(0)
    m = ColonTCN(in_features=16, num_blocks=2)
    return save_model_file(root / "tcn.pt", ModelFile.from_model(
        m, task="phases", arch="colontcn", arch_kwargs={"in_features": 16, "num_blocks": 2}, classes=COLON_CLASSES,
        preprocessing={"fps": 5.0}))


def _features(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(0).standard_normal((40, 16)).astype("float32"))
    return path


def _stack(path: Path) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full((4, 16, 16), 1200, "uint16")
    with rasterio.open(path, "w", driver="GTiff", height=16, width=16, count=4, dtype="uint16", crs="EPSG:32632",
                       transform=from_origin(600000, 5300000, 10, 10)) as dst:
        dst.write(data)
        for i, b in enumerate(["B02", "B03", "B04", "B08"], 1):
            dst.set_band_description(i, b)
    return path


# ------------------------------------------------------------------------------------------------ scenarios
# each builder makes its inputs under ``root`` and returns (cli main, argv, what the refusal must say)
Scenario = Callable[[Path], tuple[Callable, list[str], str]]


def _audiosep_main():
    from audiosep.cli import main

    return main


def _medseg_main():
    from medseg.volume_cli import main

    return main


def _phases_main():
    from medseg.phases.cli import main

    return main


def _remote_main():
    from remote.cli import main

    return main


def sep_colliding_stems(root):
    _wav(root / "in" / "a.wav"), _wav(root / "in" / "a.flac")
    return _audiosep_main(), ["separate", str(root / "in"), "-m", str(_audiosep_model(root)), "-o",
                              str(root / "out"), "--overwrite"], "two inputs map to this output"


def sep_same_stem_two_folders(root):
    a, b = _wav(root / "d1" / "x.wav"), _wav(root / "d2" / "x.wav")
    return _audiosep_main(), ["separate", str(a), str(b), "-m", str(_audiosep_model(root)), "-o",
                              str(root / "out")], "two inputs map to this output"


def sep_output_is_an_input(root):
    a, b = _wav(root / "m.wav"), _wav(root / "m_s1.wav")
    return _audiosep_main(), ["separate", str(a), str(b), "-m", str(_audiosep_model(root)), "--overwrite"], \
        "one of the inputs"


def sep_previews_of_two_inputs_one_png(root):
    a, b = _wav(root / "d1" / "x.wav"), _wav(root / "d2" / "x.flac")
    return _audiosep_main(), ["separate", str(a), str(b), "-m", str(_audiosep_model(root)), "--preview",
                              str(root / "prev")], "two inputs map to this output"


def stream_output_onto_the_model(root):
    a, m = _wav(root / "m.wav"), root / "m_s1.wav"
    (root / "models").mkdir()
    m.write_bytes(_audiosep_model(root / "models").read_bytes())
    return _audiosep_main(), ["stream", str(a), "-m", str(m), "--overwrite"], "one of the inputs"


def stream_preview_onto_the_input(root):
    a = _wav(root / "p" / "m.wav").rename(root / "p" / "m.png")  # audio under another ending: the preview's name
    return _audiosep_main(), ["stream", str(a), "-m", str(_audiosep_model(root)), "-o", str(root / "out"),
                              "--preview", str(root / "p"), "--overwrite"], "one of the inputs"


def stream_output_folder_is_a_file(root):
    a = _wav(root / "m.wav")
    return _audiosep_main(), ["stream", str(a), "-m", str(_audiosep_model(root)), "-o", str(a)], "must be a folder"


def sep_eval_report_is_an_estimate(root):
    est = _wav(root / "est" / "m_s1.wav")
    _wav(root / "est" / "m_s2.wav")
    for d in ("mix", "s1", "s2"):
        _wav(root / "data" / d / "m.wav")
    return _audiosep_main(), ["evaluate", str(root / "est"), str(root / "data"), "-o", str(est), "--overwrite"], \
        "output"


def sep_import_onto_weights(root):
    w = _audiosep_model(root)
    return _audiosep_main(), ["import", str(w), "-o", str(w), "--overwrite"], "one of the inputs"


def med_nii_and_niigz(root):
    _volume(root / "cases" / "a.nii.gz"), _volume(root / "cases" / "a.nii")
    return _medseg_main(), ["predict", str(root / "cases"), "-m", str(_medseg_model(root)), "-o", str(root / "out"),
                            "--overwrite"], "two inputs map to this output"


def med_seg_into_series(root):
    s = _series(root / "S")
    first = sorted(p for p in s.iterdir() if p.is_file())[1]
    return _medseg_main(), ["predict", str(s), "-m", str(_medseg_model(root)), "--dicom-seg", str(first),
                            "--overwrite"], "one of the inputs"


def med_two_outputs_one_path(root):
    s = _series(root / "S")
    x = root / "x.nii.gz"
    return _medseg_main(), ["predict", str(s), "-m", str(_medseg_model(root)), "-o", str(x), "--dicom-seg", str(x),
                            "--overwrite"], "same path"


def med_unwritable_kind(root):
    v = _volume(root / "ct.nii.gz")
    return _medseg_main(), ["predict", str(v), "-m", str(_medseg_model(root)), "-o", str(root / "seg.dcm")], \
        "--dicom-seg"


def med_output_is_the_input(root):
    v = _volume(root / "ct.nii.gz")
    return _medseg_main(), ["predict", str(v), "-m", str(_medseg_model(root)), "-o", str(v), "--overwrite"], \
        "one of the inputs"


def med_import_onto_checkpoint(root):
    m = _medseg_model(root)
    return _medseg_main(), ["import-stunet", str(m), "-o", str(m), "--overwrite"], "one of the inputs"


def med_evaluate_report_is_a_reference(root):
    _volume(root / "pred" / "a.nii.gz")
    _volume(root / "ref" / "a.nii.gz")
    return _medseg_main(), ["evaluate", str(root / "pred"), str(root / "ref"), "-o", str(root / "ref" / "a.nii.gz"),
                            "--overwrite"], "cannot write a '.nii.gz' file"


def phases_same_stem_two_folders(root):
    a, b = _features(root / "d1" / "v.npy"), _features(root / "d2" / "v.npy")
    return _phases_main(), ["predict", str(a), str(b), "-m", str(_phases_model(root)), "-o", str(root / "out")], \
        "two inputs map to this output"


def phases_extract_onto_a_frame(root):
    from PIL import Image

    (root / "frames").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(root / "frames" / f"f{i}.png")
    return _phases_main(), ["extract", str(root / "frames"), "-o", str(root / "frames" / "f0.png"), "--overwrite"], \
        "output"


def phases_evaluate_report_onto_the_model(root):
    m = _phases_model(root)
    _features(root / "data" / "features" / "v.npy")
    (root / "data" / "labels").mkdir(parents=True)
    (root / "data" / "labels" / "v.txt").write_text("\n".join(["cecum"] * 40))
    return _phases_main(), ["evaluate", str(root / "data"), "-m", str(m), "-o", str(m), "--overwrite"], \
        "cannot write a '.pt' file"


def remote_predict_onto_the_input(root):
    from remote.models import CLASSES, FFDNN

    torch.manual_seed(0)
    kw = {"channels": 8, "depth": 1, "n_modes": 4}
    net = FFDNN(**kw).eval()
    model = save_model_file(root / "ffdnn.pt", ModelFile.from_model(
        net, task="remote", arch="ffdnn", arch_kwargs=kw, classes=list(CLASSES),
        preprocessing={"bands": list(net.bands), "dates": ["2024-05-01"], "scl_invalid": [0, 1, 3, 8, 9, 10]}))
    a = _stack(root / "s.tif")
    return _remote_main(), ["predict", str(a), "-m", str(model), "-o", str(a), "--dates", "2024-05-01",
                            "--overwrite"], "one of the inputs"


def remote_each_same_name(root):
    a, b = _stack(root / "d1" / "site.tif"), _stack(root / "d2" / "site.tif")
    return _remote_main(), ["indices", str(a), str(b), "--each", "-o", str(root / "maps"), "--dates", "2024-05-01"], \
        "two inputs"


def remote_indices_onto_input(root):
    a = _stack(root / "s.tif")
    return _remote_main(), ["indices", str(a), "-o", str(a), "--dates", "2024-05-01", "--overwrite"], \
        "one of the inputs"


def remote_evaluate_twice_one_report(root):
    a = _stack(root / "p.tif")
    r = root / "r.csv"
    return _remote_main(), ["evaluate", str(a), str(a), "-o", str(r), "-o", str(r)], "same path"


def _two_parts(root: Path) -> list[Path]:
    """Two row blocks of one grid (what ``remote indices --num-parts 2`` writes), as plain GeoTIFFs."""
    import rasterio
    from rasterio.transform import from_origin

    out = []
    for k in range(2):
        p = root / f"map.part-{k}-of-2.tif"
        with rasterio.open(p, "w", driver="GTiff", height=16, width=16, count=1, dtype="float32", crs="EPSG:32632",
                           transform=from_origin(600000, 5300000 - 160 * k, 10, 10)) as dst:
            dst.write(np.full((1, 16, 16), 0.5 + k, "float32"))
        out.append(p)
    return out


def remote_mosaic_onto_a_part(root):
    parts = _two_parts(root)
    return _remote_main(), ["mosaic", *map(str, parts), "-o", str(parts[0]), "--overwrite"], "one of the inputs"


def remote_mosaic_preview_onto_the_output(root):
    parts = _two_parts(root)
    out = root / "map.tif"
    return _remote_main(), ["mosaic", *map(str, parts), "-o", str(out), "--preview", str(out)], \
        "--preview cannot write a '.tif' file"


SCENARIOS: dict[str, list[Scenario]] = {
    "audiosep separate": [sep_colliding_stems, sep_same_stem_two_folders, sep_output_is_an_input,
                          sep_previews_of_two_inputs_one_png],
    "audiosep stream": [stream_output_onto_the_model, stream_preview_onto_the_input, stream_output_folder_is_a_file],
    "audiosep evaluate": [sep_eval_report_is_an_estimate],
    "audiosep import": [sep_import_onto_weights],
    "medseg predict": [med_nii_and_niigz, med_seg_into_series, med_two_outputs_one_path, med_unwritable_kind,
                       med_output_is_the_input],
    "medseg import-stunet": [med_import_onto_checkpoint],
    "medseg evaluate": [med_evaluate_report_is_a_reference],
    "medseg phases predict": [phases_same_stem_two_folders],
    "medseg phases extract": [phases_extract_onto_a_frame],
    "medseg phases evaluate": [phases_evaluate_report_onto_the_model],
    "remote predict": [remote_predict_onto_the_input],
    "remote indices": [remote_each_same_name, remote_indices_onto_input],
    "remote evaluate": [remote_evaluate_twice_one_report],
    "remote mosaic": [remote_mosaic_onto_a_part, remote_mosaic_preview_onto_the_output],
}
CASES = [(cmd, s) for cmd, ss in SCENARIOS.items() for s in ss]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command,scenario", CASES, ids=[f"{c}: {s.__name__}" for c, s in CASES])
def test_collisions_are_refused_before_any_work(tmp_path, capsys, monkeypatch, command, scenario):
    monkeypatch.chdir(tmp_path)
    main, argv, says = scenario(tmp_path)
    before = _snapshot(tmp_path)
    dirs_before = sorted(str(p) for p in tmp_path.rglob("*") if p.is_dir())
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if ": error:" in line]
    assert rc == 2, (rc, err)
    assert len(errors) == 1 and errors[-1] == err[-1], err
    assert says in errors[0], errors[0]
    assert "Traceback" not in "\n".join(err)
    assert _snapshot(tmp_path) == before, "a refused run wrote or changed files"
    assert sorted(str(p) for p in tmp_path.rglob("*") if p.is_dir()) == dirs_before, "a refused run made folders"


def _writing_commands() -> set[str]:
    """Every leaf command whose parser has an output option or an output positional."""
    import importlib

    roots = {"medseg": "medseg.volume_cli", "medseg phases": "medseg.phases.cli", "audiosep": "audiosep.cli",
             "remote": "remote.cli"}
    found = set()
    for prog, module in roots.items():
        for path, parser in iter_subparsers(importlib.import_module(module)._parser()):
            if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions) or not path:
                continue
            dests = {a.dest for a in parser._actions}
            if dests & {"output", "out_dir", "dicom_seg"}:
                found.add(f"{prog} {' '.join(path)}")
    return found


#: writing commands whose collisions are covered elsewhere (training: tests/pipelines; synthetic data: a folder)
COVERED_ELSEWHERE = {"medseg train", "medseg phases train", "audiosep train", "remote train", "medseg synth",
                     "remote synth", "medseg import-nnunet"}


def test_every_writing_command_has_collision_scenarios():
    missing = _writing_commands() - set(SCENARIOS) - COVERED_ELSEWHERE
    assert not missing, f"writing commands without collision scenarios: {sorted(missing)}"
