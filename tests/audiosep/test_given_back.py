"""What models give back and what files say about them (issue 22): LibriMix / WHAM! folders as their generators write
them, non-finite model output never written, Asteroid / torchaudio imports that say what they assume or refuse what
they cannot read, and docs that agree with the code."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.cli import _parser, main
from shared_backbones.checkpoint import ModelFile, load_model_file, save_model_file
from shared_backbones.registry import create_model

RATE = 8000
SMALL = dict(enc_num_feats=16, msk_num_feats=8, msk_num_hidden_feats=12, msk_num_layers=2, msk_num_stacks=1)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "audiosep.md"
# LibriSpeech-style mixture IDs (speaker-chapter-utterance of each source, joined by "_"), in the metadata's order
# (not sorted: the CSV gives the order)
IDS = ["6295-244435-0021_3752-4944-0041", "1272-128104-0004_2428-83699-0034", "8842-304647-0007_777-126732-0068",
       "3536-23268-0023_5338-24640-0001"]


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _librimix(top: Path, n_src: int = 2, subset: str = "test", ids: list[str] = IDS, n: int = 1600,
              seed: int = 0) -> Path:
    """``<top>/Libri<n>Mix/wav8k/min/<subset>/`` as LibriMix's ``create_librimix_from_metadata.py`` writes it: ``s1/``
    ... ``s<n>/``, ``mix_clean/``, ``mix_both/``, ``mix_single/``, ``noise/`` (one ``<mixture_ID>.wav`` each), and
    ``wav8k/min/metadata/mixture_<subset>_mix_<type>.csv`` / ``metrics_<subset>_<type>.csv`` with the generator's
    columns and absolute paths. mix_clean = the sources, mix_both = sources + noise, mix_single = s1 + noise."""
    rng = np.random.default_rng(seed)
    mode = top / f"Libri{n_src}Mix" / "wav8k" / "min"
    root, meta = mode / subset, mode / "metadata"
    subdirs = [f"s{k + 1}" for k in range(n_src)] + ["mix_clean", "mix_both", "mix_single", "noise"]
    for d in [*subdirs, "../metadata"]:
        (root / d).mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {t: [] for t in ("mix_clean", "mix_both", "mix_single")}
    t = np.arange(n) / RATE
    for i, mid in enumerate(ids):
        srcs = [(0.2 * np.sin(2 * np.pi * (150 + 90 * k + 13 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * (2 + k) * t)))
                .astype("float32") for k in range(n_src)]
        noise = (0.02 * rng.standard_normal(n)).astype("float32")
        paths = []
        for k, s in enumerate(srcs):
            sf.write(root / f"s{k + 1}" / f"{mid}.wav", s, RATE)
            paths.append(str((root / f"s{k + 1}" / f"{mid}.wav").resolve()))
        sf.write(root / "noise" / f"{mid}.wav", noise, RATE)
        noise_path = str((root / "noise" / f"{mid}.wav").resolve())
        for mtype, parts in (("mix_clean", srcs), ("mix_both", [*srcs, noise]), ("mix_single", [srcs[0], noise])):
            sf.write(root / mtype / f"{mid}.wav", np.sum(parts, axis=0), RATE)
            row = {"mixture_ID": mid, "original_mixture_ID": mid,
                   "mixture_path": str((root / mtype / f"{mid}.wav").resolve())}
            row |= ({"source_1_path": paths[0], "noise_path": noise_path} if mtype == "mix_single" else
                    {f"source_{k + 1}_path": p for k, p in enumerate(paths)}
                    | ({"noise_path": noise_path} if mtype == "mix_both" else {}))
            rows[mtype].append(row | {"length": n})
    for mtype, rs in rows.items():
        with open(meta / f"mixture_{subset}_{mtype}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rs[0]))
            w.writeheader()
            w.writerows(rs)
        with open(meta / f"metrics_{subset}_{mtype}.csv", "w", newline="") as f:
            f.write("mixture_ID,original_mixture_ID,source_1_SNR\n" + "".join(f"{r['mixture_ID']},"
                                                                           f"{r['mixture_ID']},0.0\n" for r in rs))
    return root


def _wham(top: Path, split: str = "tt", n: int = 1200) -> Path:
    """``wham_wav/wav8k/min/<split>/`` as WHAM!'s scripts write it: mix_clean, mix_both, mix_single, s1, s2, noise."""
    root = top / "wham_wav" / "wav8k" / "min" / split
    t = np.arange(n) / RATE
    for i, name in enumerate(["011a0101_1.0_20oc0102_-1.0.wav", "01aa010b_0.9_209a010p_-0.9.wav"]):
        s1, s2 = (0.2 * np.sin(2 * np.pi * f * t).astype("float32") for f in (200 + 10 * i, 530))
        noise = (0.01 * np.cos(2 * np.pi * 1900 * t)).astype("float32")
        for d, a in (("s1", s1), ("s2", s2), ("noise", noise), ("mix_clean", s1 + s2), ("mix_both", s1 + s2 + noise),
                     ("mix_single", s1 + noise)):
            (root / d).mkdir(parents=True, exist_ok=True)
            sf.write(root / d / name, a, RATE)
    return root


def _estimates(found, out: Path, swap: bool = True) -> Path:
    """Estimates named as ``audiosep separate`` writes them: the references plus a little noise, sources swapped."""
    rng = np.random.default_rng(1)
    out.mkdir(parents=True, exist_ok=True)
    for mix, refs in zip(found.mixtures, found.sources):
        order = refs[::-1] if swap else refs
        for k, r in enumerate(order):
            a = sf.read(r, dtype="float32")[0]
            sf.write(out / f"{mix.stem}_s{k + 1}.wav", a + 0.01 * rng.standard_normal(len(a)).astype("float32"), RATE)
    return out


# ------------------------------------------------------------------------------------------------ LibriMix / WHAM!
def test_librimix_tree_as_generated_read_by_type_with_its_metadata(tmp_path):
    from audiosep.mixtures import find_mixtures

    root = _librimix(tmp_path)
    clean = find_mixtures(root)
    assert clean.layout == "librimix" and clean.metadata.name == "mixture_test_mix_clean.csv"
    assert [m.stem for m in clean.mixtures] == IDS  # the CSV's order, not the folder's
    assert [[s.parent.name for s in ss] for ss in clean.sources] == [["s1", "s2"]] * 4
    assert {m.parent.name for m in clean.mixtures} == {"mix_clean"}
    both, single = find_mixtures(root, "both"), find_mixtures(root, "single")
    assert {m.parent.name for m in both.mixtures} == {"mix_both"} and both.num_sources == 2
    assert {m.parent.name for m in single.mixtures} == {"mix_single"} and single.num_sources == 1
    assert [s[0].parent.name for s in single.sources] == ["s1"] * 4
    # the generator writes absolute paths: a data set moved elsewhere is found by file name in its folders
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "Libri2Mix", moved / "Libri2Mix")
    again = find_mixtures(moved / "Libri2Mix" / "wav8k" / "min" / "test", "both")
    assert [m.stem for m in again.mixtures] == IDS and all(str(m).startswith(str(moved)) for m in again.mixtures)
    # Libri3Mix: s3/ as the third source
    three = find_mixtures(_librimix(tmp_path / "l3", n_src=3, ids=IDS[:2]))
    assert three.num_sources == 3 and [s.parent.name for s in three.sources[0]] == ["s1", "s2", "s3"]
    # without the metadata folder: the file names of mix_<type>/
    shutil.rmtree(tmp_path / "l3" / "Libri3Mix" / "wav8k" / "min" / "metadata")
    plain = find_mixtures(tmp_path / "l3" / "Libri3Mix" / "wav8k" / "min" / "test")
    assert plain.metadata is None and [m.stem for m in plain.mixtures] == sorted(IDS[:2])


def test_evaluate_librimix_and_wham_as_generated_with_mix_type(tmp_path, capsys):
    from audiosep.mixtures import find_mixtures

    root = _librimix(tmp_path)
    for mtype in ("clean", "both"):
        est = _estimates(find_mixtures(root, mtype), tmp_path / f"est_{mtype}")
        report = tmp_path / f"{mtype}.csv"
        argv = ["evaluate", str(est), str(root), "-o", str(report), "-q"]
        assert main(argv if mtype == "clean" else [*argv, "--mix-type", mtype]) == 0, capsys.readouterr().err
        rows = list(csv.DictReader(report.open()))
        assert [r["file"] for r in rows] == [f"{i}.wav" for i in IDS] + ["mean"]
        assert float(rows[-1]["si_snr"]) > 15  # the swapped order is undone by the best permutation
    # the noisy mixture is further from the speakers: a larger improvement for the same estimates quality
    clean = list(csv.DictReader((tmp_path / "clean.csv").open()))
    both = list(csv.DictReader((tmp_path / "both.csv").open()))
    assert float(both[-1]["si_snri"]) > float(clean[-1]["si_snri"])
    # mix_single: one reference (s1), one estimate
    est = _estimates(find_mixtures(root, "single"), tmp_path / "est_single")
    assert main(["evaluate", str(est), str(root), "--mix-type", "single", "-o", str(tmp_path / "s.json"), "-q"]) == 0
    assert not list(est.glob("*_s2.wav"))
    # WHAM!: tr/cv/tt with the same subfolders, no metadata
    wham = _wham(tmp_path)
    est = _estimates(find_mixtures(wham, "both"), tmp_path / "est_wham")
    assert main(["evaluate", str(est), str(wham), "--mix-type", "both", "-q"]) == 0
    assert "011a0101_1.0_20oc0102_-1.0.wav" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "est_clean"), str(root)]) == 0  # says what it read
    assert "references: 4 mixture(s) of 2 source(s), librimix layout mix_clean/ (metadata mixture_test_mix_clean.csv)" \
        in capsys.readouterr().err


def test_folder_without_a_known_layout_is_one_line_naming_the_layouts(tmp_path, capsys):
    (tmp_path / "est").mkdir()
    odd = tmp_path / "odd"
    for d in ("mixtures", "s1", "s2"):
        (odd / d).mkdir(parents=True)
    assert main(["evaluate", str(tmp_path / "est"), str(odd)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert str(odd) in err and "mix/" in err and "mix_clean/" in err and "mix_both/" in err and "mix_single/" in err
    # a LibriMix subset generated with mix_clean only (--types mix_clean) asked for mix_both: says what it has
    root = _librimix(tmp_path / "lm")
    shutil.rmtree(root / "mix_both")
    assert main(["evaluate", str(tmp_path / "est"), str(root), "--mix-type", "both"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "no mix_both/" in err and "mix_clean/" in err and "--mix-type" in err


def test_pipelines_dataset_reads_librimix_as_generated(tmp_path):
    from pipelines.audiosep import AudiosepDataModule, LibriMixDataset

    root = _librimix(tmp_path / "l2", n=1600)
    ds = LibriMixDataset(root, RATE, segment=0.1, mix_type="both")
    mix, srcs = ds[0]
    assert mix.shape == (1, 800) and srcs.shape == (2, 800)
    full = LibriMixDataset(root, RATE, segment=None, train=False, mix_type="both")
    mix, srcs = full[0]
    noise = torch.from_numpy(sf.read(root / "noise" / f"{IDS[0]}.wav", dtype="float32")[0])
    assert torch.allclose(mix[0], srcs.sum(0) + noise, atol=1e-4)  # mix_both = the speakers + noise
    single = LibriMixDataset(root, RATE, segment=None, train=False, mix_type="single")
    mix, srcs = single[0]
    assert srcs.shape == (1, 1600) and torch.allclose(mix[0], srcs[0] + noise, atol=1e-4)
    three = LibriMixDataset(_librimix(tmp_path / "l3", n_src=3, ids=IDS[:2]), RATE, segment=None, train=False)
    assert three[0][1].shape[0] == 3
    dm = AudiosepDataModule(str(root), fold=0, folds=2, mix_type="single")
    dm.setup("fit")
    assert dm.num_sources() == 1 and len(dm.train_set) + len(dm.val_set) == 4


def test_train_on_librimix_as_generated(tmp_path, capsys):
    top = tmp_path / "data"
    train = _librimix(top, subset="train-100", ids=IDS)
    dev = _librimix(top, subset="dev", ids=IDS[:2], seed=1)
    out = tmp_path / "m.pt"
    argv = ["train", str(train), "--val-dir", str(dev), "-o", str(out), "--segment", "0.1", "--batch-size", "2",
            "--max-steps", "2", "--device", "cpu", "-q"]
    assert main(argv) == 0, capsys.readouterr().err
    assert load_model_file(out).classes == ["s1", "s2"]
    # mix_single: speaker 1 from speaker 1 + noise, a one-source model
    assert main([*argv, "--mix-type", "single", "--overwrite"]) == 0, capsys.readouterr().err
    assert load_model_file(out).classes == ["s1"]
    capsys.readouterr()
    assert main([*argv, "--sources", "3", "--overwrite"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "--sources 3" in err and "2 source(s)" in err


# ------------------------------------------------------------------------------------------------ NaN output
def test_model_giving_nan_is_refused_for_float_and_pcm16_inputs_and_writes_nothing(tmp_path, capsys):
    torch.manual_seed(0)
    net = create_model("convtasnet-small", **SMALL)
    sd = net.state_dict()
    sd["mask_generator.output_conv.weight"][0, 0, 0] = float("nan")  # one NaN weight
    net.load_state_dict(sd)
    mf = ModelFile.from_model(net, task="audiosep", arch="convtasnet-small", arch_kwargs={"num_sources": 2, **SMALL},
                              preprocessing={"sample_rate": RATE})
    model = save_model_file(tmp_path / "nan.pt", mf)
    x = (0.3 * np.sin(np.arange(4000) * 0.05)).astype("float32")
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "float.wav", x, RATE, subtype="FLOAT")
    sf.write(folder / "pcm.wav", x, RATE, subtype="PCM_16")
    for name in ("float.wav", "pcm.wav"):  # one input: one line, exit 2, naming the model file and the input
        assert main(["separate", str(folder / name), "-m", str(model), "-o", str(tmp_path / "out"), "-q"]) == 2
        err = _one_line(capsys.readouterr().err)
        assert str(folder / name) in err and str(model) in err and "non-finite" in err
    # a batch goes on and lists both failures (each naming its input once)
    assert main(["separate", str(folder), "-m", str(model), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "audiosep: 2 of 2 inputs failed:" in err
    listed = [ln for ln in err if ln.startswith("  ")]
    assert [ln.split(": ")[0].strip() for ln in listed] == [str(folder / "float.wav"), str(folder / "pcm.wav")]
    assert all(ln.count(str(folder)) == 1 and str(model) in ln for ln in listed)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.wav"))
    # evaluate (which runs no model) refuses non-finite estimates the same way
    root = tmp_path / "data"
    for d in ("mix", "s1", "s2"):
        (root / d).mkdir(parents=True)
        sf.write(root / d / "a.wav", x, RATE)
    est = tmp_path / "est"
    est.mkdir()
    sf.write(est / "a_s1.wav", np.full_like(x, np.nan), RATE, subtype="FLOAT")
    sf.write(est / "a_s2.wav", x, RATE)
    assert main(["evaluate", str(est), str(root), "-q"]) == 2
    assert "non-finite" in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------ imports
@pytest.fixture(scope="module")
def torchaudio_sd(tmp_path_factory) -> Path:
    from torchaudio.models import ConvTasNet as TA

    torch.manual_seed(0)
    kw = dict(enc_kernel_size=16, enc_num_feats=16, msk_kernel_size=3, msk_num_feats=8, msk_num_hidden_feats=12,
              msk_num_layers=2, msk_num_stacks=1)
    path = tmp_path_factory.mktemp("ta") / "my_convtasnet.pt"
    torch.save(TA(num_sources=2, msk_activate="relu", **kw).state_dict(), path)
    return path


def test_torchaudio_state_dict_as_asteroid_refused_and_assumptions_said(tmp_path, torchaudio_sd, capsys):
    out = tmp_path / "m.pt"
    assert main(["import", str(torchaudio_sd), "-o", str(out), "--format", "asteroid"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert str(torchaudio_sd) in err and "not an Asteroid model file" in err and "model_args" in err
    assert not out.exists()
    assert main(["import", str(torchaudio_sd), "-o", str(out), "--layers", "2"]) == 0
    line = _one_line(capsys.readouterr().err)
    assert "relu mask assumed" in line and "conv_tasnet_base" in line and "--mask sigmoid" in line
    assert "8000 Hz assumed" in line and "--sample-rate" in line
    assert load_model_file(out).arch_kwargs["msk_activate"] == "relu"
    argv = ["import", str(torchaudio_sd), "-o", str(out), "--layers", "2", "--mask", "sigmoid", "--sample-rate",
            "16000", "--overwrite"]
    assert main(argv) == 0
    line = _one_line(capsys.readouterr().err)
    assert "assumed" not in line and "sigmoid mask" in line and "16000 Hz" in line
    mf = load_model_file(out)
    assert mf.arch_kwargs["msk_activate"] == "sigmoid" and mf.preprocessing["sample_rate"] == 16000


def _asteroid_convtasnet(**kw):
    from asteroid.models import ConvTasNet

    torch.manual_seed(0)
    return ConvTasNet(n_src=2, n_filters=16, kernel_size=16, stride=8, n_blocks=2, n_repeats=1, bn_chan=8,
                      hid_chan=12, skip_chan=8, **kw)


@pytest.mark.parametrize("arch", ["DPRNNTasNet", "DCUNet"])
def test_other_asteroid_architectures_refused_by_name(tmp_path, capsys, arch):
    import asteroid.models as am

    model = (am.DPRNNTasNet(n_src=2, n_filters=16, kernel_size=16, bn_chan=8, hid_size=8, chunk_size=10,
                            n_repeats=1) if arch == "DPRNNTasNet" else am.DCUNet("DCUNet-10"))
    path = tmp_path / "pytorch_model.bin"
    torch.save(model.serialize(), path)
    for fmt in ("auto", "asteroid"):
        assert main(["import", str(path), "-o", str(tmp_path / "m.pt"), "--format", fmt]) == 2
        err = _one_line(capsys.readouterr().err)
        assert f"Asteroid architecture {arch}" in err and "only Conv-TasNet" in err, err
    assert not (tmp_path / "m.pt").exists()


def test_asteroid_file_without_sample_rate_says_8000_is_assumed(tmp_path, capsys):
    package = _asteroid_convtasnet(sample_rate=16000).serialize()
    torch.save(package, tmp_path / "with_rate.bin")
    assert main(["import", str(tmp_path / "with_rate.bin"), "-o", str(tmp_path / "a.pt")]) == 0
    line = _one_line(capsys.readouterr().err)
    assert "16000 Hz" in line and "assumed" not in line
    assert main(["import", str(tmp_path / "with_rate.bin"), "-o", str(tmp_path / "b.pt"), "--sample-rate", "8000"]) == 2
    assert "16000 Hz" in _one_line(capsys.readouterr().err)  # the file's own rate is not silently overridden
    del package["model_args"]["sample_rate"]  # as older Asteroid versions wrote it
    torch.save(package, tmp_path / "no_rate.bin")
    assert main(["import", str(tmp_path / "no_rate.bin"), "-o", str(tmp_path / "c.pt")]) == 0
    line = _one_line(capsys.readouterr().err)
    assert "8000 Hz assumed" in line and "--sample-rate" in line
    assert load_model_file(tmp_path / "c.pt").preprocessing["sample_rate"] == 8000
    assert main(["import", str(tmp_path / "no_rate.bin"), "-o", str(tmp_path / "d.pt"), "--sample-rate", "16000"]) == 0
    assert "assumed" not in _one_line(capsys.readouterr().err)
    assert load_model_file(tmp_path / "d.pt").preprocessing["sample_rate"] == 16000


# ------------------------------------------------------------------------------------------------ docs and lines
def _separate_parser():
    p = _parser()
    sub = next(a for a in p._actions if a.dest == "command")
    return sub.choices["separate"]


def test_docs_chunk_default_and_folder_suffixes_match_the_code():
    from audiosep.separate import AUDIO_SUFFIXES, separate_file

    text = DOCS.read_text()
    default = _separate_parser().get_default("chunk_seconds")
    assert default == separate_file.__kwdefaults__["chunk_seconds"]
    assert re.findall(r"\[--chunk-seconds (\d+)\]", text) == [f"{default:g}"]
    assert re.findall(r"--chunk-seconds` \(default (\d+) s\)", text) == [f"{default:g}"]
    listed = re.search(r"a folder contributes its files with an audio extension: `([^`]+)`", text.replace("\n  ", " "))
    assert set(listed.group(1).split()) == AUDIO_SUFFIXES


def test_batch_failure_lines_name_the_path_once(tmp_path, capsys):
    torch.manual_seed(0)
    net = create_model("convtasnet-small", **SMALL)
    mf = ModelFile.from_model(net, task="audiosep", arch="convtasnet-small", arch_kwargs={"num_sources": 2, **SMALL},
                              preprocessing={"sample_rate": RATE})
    model = save_model_file(tmp_path / "m.pt", mf)
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", (0.3 * np.sin(np.arange(2400) * 0.05)).astype("float32"), RATE)
    (folder / "b.wav").write_bytes(b"not audio at all")
    assert main(["separate", str(folder), "-m", str(model), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == "audiosep: 1 of 2 inputs failed:"
    assert re.fullmatch(re.escape(f"  {folder / 'b.wav'}: not a readable audio file (") + r"[^:]*\)", err[-1]), err[-1]
