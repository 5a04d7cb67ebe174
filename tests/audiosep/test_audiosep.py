"""audiosep: torchaudio compatibility, metrics, PIT, chunked streaming separation, files, errors, reversible TCN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn as nn

from audiosep.cli import main
from audiosep.evaluate import evaluate_folder
from audiosep.importers import import_convtasnet
from audiosep.metrics import pit_si_snr_loss, reorder, si_snr
from audiosep.models import ConvTasNet
from audiosep.separate import Separator, separate_chunks
from shared_backbones.checkpoint import ModelFile, load_model_file, read_torch_file, save_model_file
from shared_backbones.errors import InputError, ModelFileError
from shared_backbones.precision import PrecisionPolicy
from shared_backbones.registry import create_model

SMALL = dict(enc_num_feats=16, msk_num_feats=8, msk_num_hidden_feats=12, msk_num_layers=3, msk_num_stacks=2)


def test_base_preset_matches_torchaudio_keys_and_parameter_count():
    from torchaudio.models import conv_tasnet_base

    ours, ref = create_model("convtasnet-base"), conv_tasnet_base(num_sources=2)
    assert list(ours.state_dict()) == list(ref.state_dict()) and len(ours.state_dict()) == 343
    assert sum(p.numel() for p in ours.parameters()) == 4_984_881


@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_torchaudio_weights_give_equal_outputs(act):
    from torchaudio.models import ConvTasNet as TA

    torch.manual_seed(0)
    ref = TA(num_sources=3, msk_activate=act, **SMALL).eval()
    ours = ConvTasNet(num_sources=3, msk_activate=act, **SMALL).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    for length in (800, 803, 57):
        x = torch.randn(2, 1, length)
        with torch.no_grad():
            expect = ref(x)
            assert (ours(x) - expect).abs().max() < 1e-5  # the training path
        with torch.inference_mode():
            assert (ours(x) - expect).abs().max() < 1e-5  # the fused CPU inference path


def test_causal_model_inference_path_equals_training_path_and_never_looks_ahead():
    torch.manual_seed(0)
    m = create_model("convtasnet-causal", **SMALL).eval()
    x = torch.randn(1, 1, 480)
    x2 = x.clone()
    x2[..., 300:] += 1.0
    with torch.no_grad():
        y = m(x)
    with torch.inference_mode():
        y_fast, y2 = m(x), m(x2)
    assert torch.allclose(y_fast, y, atol=1e-5)
    # encoder frames are L=16 samples long with hop 8: outputs before the last frame touching sample 300 are equal
    assert torch.allclose(y2[..., :288], y[..., :288], atol=1e-6) and not torch.allclose(y2[..., 300:], y[..., 300:])


def test_skip_channels_sc_separate_from_b():
    m = ConvTasNet(num_sources=2, msk_num_skip_feats=6, **SMALL)
    sd = m.state_dict()
    assert sd["mask_generator.conv_layers.0.skip_out.weight"].shape == (6, 12, 1)
    assert sd["mask_generator.output_conv.weight"].shape == (32, 6, 1)
    assert m(torch.randn(1, 1, 100)).shape == (1, 2, 100)


def test_import_torchaudio_and_asteroid_files(tmp_path):
    from torchaudio.models import ConvTasNet as TA

    torch.manual_seed(0)
    ref = TA(num_sources=2, msk_activate="relu", **SMALL).eval()
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "ta.pt")
    import_convtasnet(tmp_path / "ta.pt", tmp_path / "m.pt", num_layers=3)
    mf = load_model_file(tmp_path / "m.pt", task="audiosep")
    x = torch.randn(1, 1, 640)
    with torch.no_grad():
        assert torch.allclose(mf.build()(x), ref(x), atol=1e-6)
    # an Asteroid package: the same tensors under Asteroid's names (norm affine = gamma/beta, every block with a
    # res_conv, unpadded encoder/decoder), hyperparameters in model_args
    ast = _asteroid_state_dict(ref.state_dict(), n_blocks=6)
    args = {
        "sample_rate": 16000,
        "mask_act": "relu",
        "n_blocks": 3,
        "n_repeats": 2,
        "norm_type": "gLN",
        "fb_name": "free",
        "kernel_size": 16,
        "stride": 8,
        "skip_chan": 8,
    }
    torch.save({"model_name": "ConvTasNet", "state_dict": ast, "model_args": args}, tmp_path / "ast.pth")
    import_convtasnet(tmp_path / "ast.pth", tmp_path / "m2.pt")  # format detected from the keys
    mf2 = load_model_file(tmp_path / "m2.pt")
    assert mf2.preprocessing["sample_rate"] == 16000 and mf2.arch_kwargs["encoder_padding"] is False
    # Asteroid frames the unpadded signal: on x padded by one hop each side it sees torchaudio's frames of x
    with torch.no_grad():
        y = mf2.build()(torch.nn.functional.pad(x, (8, 8)))
        assert y.shape == (1, 2, 656) and torch.allclose(y[..., 8:-8], ref(x), atol=1e-6)
    for bad, msg in (
        ({"norm_type": "BN"}, "norm 'BN'"),
        ({"fb_name": "stft"}, "filterbank 'stft'"),
        ({"mask_act": "softmax"}, "mask activation 'softmax'"),
        ({"skip_chan": 0}, "no skip connections"),
    ):
        torch.save({"state_dict": ast, "model_args": {**args, **bad}}, tmp_path / "bad.pth")
        with pytest.raises(ModelFileError, match=msg):
            import_convtasnet(tmp_path / "bad.pth", tmp_path / "m3.pt", fmt="asteroid")
    with pytest.raises(ModelFileError, match="no encoder weights"):
        import_convtasnet(tmp_path / "ast.pth", tmp_path / "m3.pt", fmt="torchaudio")


def _asteroid_state_dict(sd: dict, n_blocks: int) -> dict:
    """Our/torchaudio's state_dict written the way Asteroid's ConvTasNet names it (built from the key facts)."""
    names = {"encoder.weight": "encoder.filterbank._filters", "decoder.weight": "decoder.filterbank._filters"}
    prefixes = [
        ("mask_generator.input_norm.", "masker.bottleneck.0."),
        ("mask_generator.input_conv.", "masker.bottleneck.1."),
        ("mask_generator.output_prelu.", "masker.mask_net.0."),
        ("mask_generator.output_conv.", "masker.mask_net.1."),
    ]
    out = {}
    for k, v in sd.items():
        k2 = names.get(k, k)
        for a, b in prefixes:
            k2 = b + k2[len(a) :] if k2.startswith(a) else k2
        k2 = (
            k2.replace("mask_generator.conv_layers.", "masker.TCN.")
            .replace(".conv_layers.", ".shared_block.")
            .replace(".res_out.", ".res_conv.")
            .replace(".skip_out.", ".skip_conv.")
        )
        if k2.startswith("masker.bottleneck.0.") or any(f"shared_block.{j}." in k2 for j in (2, 5)):
            k2 = k2.replace(".weight", ".gamma").replace(".bias", ".beta")
        out[k2] = v
    b, h = (
        sd["mask_generator.input_conv.weight"].shape[0],
        sd["mask_generator.conv_layers.0.conv_layers.0.weight"].shape[0],
    )
    out[f"masker.TCN.{n_blocks - 1}.res_conv.weight"] = torch.randn(b, h, 1)  # unused by Asteroid's forward
    out[f"masker.TCN.{n_blocks - 1}.res_conv.bias"] = torch.randn(b)
    return out


def test_si_snr_matches_torchmetrics_and_pit_finds_permutation():
    from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio

    torch.manual_seed(0)
    target = torch.randn(4, 3, 2000)
    est = target + 0.05 * torch.randn_like(target)
    assert torch.allclose(si_snr(est, target), scale_invariant_signal_noise_ratio(est, target), atol=1e-3)
    perm_true = torch.tensor([[2, 0, 1], [1, 2, 0], [0, 1, 2], [2, 1, 0]])
    shuffled = torch.stack([est[b, perm_true[b].argsort()] for b in range(4)])
    loss, perm = pit_si_snr_loss(shuffled, target)
    assert torch.allclose(reorder(shuffled, perm), est)
    # the loss against an independent implementation: torchmetrics' PIT over its own SI-SNR (exhaustive search)
    from torchmetrics.functional.audio import permutation_invariant_training

    tm_best, tm_perm = permutation_invariant_training(shuffled, target, scale_invariant_signal_noise_ratio,
                                                     mode="speaker-wise", eval_func="max")
    assert float(loss) == pytest.approx(-float(tm_best.mean()), abs=1e-3)
    assert torch.allclose(torch.gather(shuffled, 1, tm_perm[..., None].expand_as(shuffled)), est)
    # and a value computed by hand: zero-mean, orthogonal sources t1, t2 and swapped estimates t2 + 0.1 t1,
    # t1 + 0.5 t2: SI-SNR(t1 + 0.5 t2, t1) = 10 log10(|t1|^2 / |0.5 t2|^2) = 10 log10(4) (|t1| = |t2|), and
    # SI-SNR(t2 + 0.1 t1, t2) = 10 log10(100) = 20 dB; the loss is minus their mean, with permutation [1, 0]
    t1, t2 = torch.tensor([1.0, -1, 1, -1]), torch.tensor([1.0, 1, -1, -1])
    loss, perm = pit_si_snr_loss(torch.stack([t2 + 0.1 * t1, t1 + 0.5 * t2])[None].double(),
                                 torch.stack([t1, t2])[None].double())
    assert float(loss) == pytest.approx(-(10 * np.log10(4) + 20) / 2, abs=1e-5)  # eps 1e-8 in SI-SNR: ~2e-6 dB
    assert perm.tolist() == [[1, 0]]


class _FlippingSplitter(nn.Module):
    """A pointwise 'separator' (positive / negative half-waves) that swaps its output order on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        pos, neg = x.clamp_min(0), x.clamp_max(0)
        out = [pos, neg] if self.calls % 2 else [neg, pos]
        return torch.cat(out, 1)


def _separator(model, rate=8000):
    mf = ModelFile(task="audiosep", arch="test", arch_kwargs={"num_sources": 2}, state_dict={},
                   preprocessing={"sample_rate": rate})
    return Separator(None, mf, model, torch.device("cpu"), PrecisionPolicy.resolve("fp32", "cpu"))


def test_chunked_separation_equals_one_shot_and_keeps_speaker_order():
    torch.manual_seed(0)
    x = torch.randn(1, 8000 * 7)
    blocks = []
    separate_chunks(
        lambda s, n: x[:, s : s + n],
        x.shape[1],
        8000,
        _separator(_FlippingSplitter()),
        chunk=8000,
        overlap=800,
        channels=1,
        write=blocks.append,
    )
    y = torch.cat(blocks, -1)
    assert y.shape == (1, 2, x.shape[1])
    assert torch.allclose(y[0, 0], x[0].clamp_min(0), atol=1e-6)
    assert torch.allclose(y[0, 1], x[0].clamp_max(0), atol=1e-6)


def test_chunked_real_model_matches_one_shot_away_from_seams():
    torch.manual_seed(0)
    model = ConvTasNet(num_sources=2, **SMALL).eval()
    x = torch.randn(1, 8000 * 3)
    with torch.no_grad():
        ref = model(x[None])[0]
    blocks = []
    separate_chunks(
        lambda s, n: x[:, s : s + n],
        x.shape[1],
        8000,
        _separator(model),
        chunk=8000,
        overlap=2000,
        channels=1,
        write=blocks.append,
    )
    y = torch.cat(blocks, -1)[0]
    # gLN normalises over the whole input, so a chunk is not bit-equal to the one-shot pass; away from the seams
    # the two must agree closely (and in the same speaker order)
    mid = slice(2500, 5500)
    agreement = si_snr(y[:, mid].double(), ref[:, mid].double())
    assert agreement.min() > 25, agreement


def _model_file(tmp_path, rate=8000):
    torch.manual_seed(0)
    m = create_model("convtasnet-small", **SMALL)
    return save_model_file(
        tmp_path / "sep.pt",
        ModelFile.from_model(
            m,
            task="audiosep",
            arch="convtasnet-small",
            arch_kwargs={"num_sources": 2, **SMALL},
            preprocessing={"sample_rate": rate},
        ),
    )


@pytest.mark.parametrize(
    "rate,channels,fmt,subtype",
    [(16000, 2, "FLAC", "PCM_24"), (44100, 1, "WAV", "PCM_16"), (8000, 3, "WAV", "PCM_32"), (22050, 1, "WAV", "FLOAT")],
)
def test_files_keep_rate_length_subtype_and_never_clip(tmp_path, rate, channels, fmt, subtype):
    model = _model_file(tmp_path)
    ext = ".flac" if fmt == "FLAC" else ".wav"
    src = tmp_path / f"mix{ext}"
    n = int(rate * 2.3) + 7
    sf.write(
        src,
        (0.9 * np.sin(np.arange(n)[:, None] * 0.05 * (1 + np.arange(channels)))).astype("float32"),
        rate,
        subtype=subtype,
        format=fmt,
    )
    before = src.read_bytes()
    args = [str(src), "-m", str(model), "--quiet", "--chunk-seconds", "1", "--overlap-seconds", "0.25"]
    assert main(["separate", *args, "--per-channel"]) == 0
    for k in (1, 2):
        info = sf.info(tmp_path / f"mix_s{k}.wav")
        assert (info.samplerate, info.frames, info.channels) == (rate, n, channels)
        assert info.subtype == subtype
        assert np.abs(sf.read(tmp_path / f"mix_s{k}.wav")[0]).max() <= 1.0
    assert src.read_bytes() == before
    assert main(["separate", *args, "-o", str(tmp_path / "down")]) == 0
    assert sf.info(tmp_path / "down" / "mix_s1.wav").channels == 1


def test_error_paths_one_line_exit_2(tmp_path, capsys):
    model = _model_file(tmp_path)
    (tmp_path / "text.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), dtype="float32"), 8000)
    sf.write(tmp_path / "ok.wav", np.zeros(800, dtype="float32"), 8000)
    other = tmp_path / "other.pt"
    torch.save({**torch.load(model, weights_only=True), "task": "medseg"}, other)
    cases = [
        (["separate", str(tmp_path / "missing.wav"), "-m", str(model)], "missing.wav: file not found"),
        (["separate", str(tmp_path / "text.wav"), "-m", str(model)], "text.wav: not a readable audio file"),
        (["separate", str(tmp_path / "empty.wav"), "-m", str(model)], "empty.wav: audio is empty"),
        (["separate", str(tmp_path / "ok.wav"), "-m", str(other)], "model file is for task 'medseg'"),
        (["separate", str(tmp_path / "ok.wav"), "-m", str(tmp_path / "ok.wav")], "ok.wav:"),
        (["separate", str(tmp_path / "nowhere"), "-m", str(model)], "nowhere: file not found"),
    ]
    for argv, msg in cases:
        assert main(argv + ["--quiet"]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["separate", str(tmp_path / "ok.wav")])
    assert exc.value.code == 2 and "the following arguments are required: -m/--model" in capsys.readouterr().err
    assert main(["separate", str(tmp_path / "ok.wav"), "-m", str(model), "--quiet"]) == 0
    assert main(["separate", str(tmp_path / "ok.wav"), "-m", str(model), "--quiet"]) == 2
    assert "output exists" in capsys.readouterr().err


def test_reversible_tcn_gradients_equal_plain():
    torch.manual_seed(0)
    m = ConvTasNet(num_sources=2, reversible=True, **SMALL).double()
    x = torch.randn(2, 1, 400, dtype=torch.float64)
    grads = []
    for rev in (True, False):
        m.mask_generator.conv_layers.reversible = rev
        m.zero_grad()
        m(x).square().mean().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_evaluate_folder_and_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    s1, s2 = rng.standard_normal(4000).astype("float32") * 0.2, rng.standard_normal(4000).astype("float32") * 0.2
    for d, a in (("mix", s1 + s2), ("s1", s1), ("s2", s2)):
        (tmp_path / "data" / d).mkdir(parents=True)
        sf.write(tmp_path / "data" / d / "u1.wav", a, 8000, subtype="FLOAT")
    est = tmp_path / "est"
    est.mkdir()
    sf.write(est / "u1_s1.wav", s2 + 0.01 * s1, 8000, subtype="FLOAT")  # swapped order: PIT must fix it
    sf.write(est / "u1_s2.wav", s1 + 0.02 * s2, 8000, subtype="FLOAT")
    rows = evaluate_folder(est, tmp_path / "data")
    expect_si = (
        si_snr(torch.tensor(np.stack([s1 + 0.02 * s2, s2 + 0.01 * s1])), torch.tensor(np.stack([s1, s2]))).mean()
        - si_snr(torch.tensor(np.stack([s1 + s2] * 2)), torch.tensor(np.stack([s1, s2]))).mean()
    )
    assert rows[0]["si_snri"] == pytest.approx(float(expect_si), abs=1e-3)
    from torchmetrics.functional.audio import signal_distortion_ratio as tm_sdr

    def tm_mean(estimates, refs):  # torchmetrics pair by pair: its batched MKL solve fails once a test changed threads
        pairs = zip(estimates, refs)
        return np.mean([float(tm_sdr(torch.tensor(e).double(), torch.tensor(r).double())) for e, r in pairs])

    expect_sdri = tm_mean([s1 + 0.02 * s2, s2 + 0.01 * s1], [s1, s2]) - tm_mean([s1 + s2] * 2, [s1, s2])
    assert rows[0]["sdri"] == pytest.approx(float(expect_sdri), abs=1e-2)
    assert main(["evaluate", str(est), str(tmp_path / "data"), "-o", str(tmp_path / "r.csv"), "-q"]) == 0
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "file,si_snr,si_snri,sdr,sdri" and lines[-1].startswith("mean,")
    assert float(lines[-1].split(",")[2]) == pytest.approx(rows[0]["si_snri"], abs=1e-4)
    assert main(["evaluate", str(est), str(tmp_path / "data"), "-o", str(tmp_path / "r.json"), "-q"]) == 0
    assert main(["evaluate", str(est), str(tmp_path)]) == 2
    capsys.readouterr()
    # pairs that would be scored wrongly are refused, naming the pair: another rate, a length off by > one stride
    sf.write(est / "u1_s1.wav", s2, 16000, subtype="FLOAT")
    assert main(["evaluate", str(est), str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "u1_s1.wav: sample rate 16000 Hz but its reference" in err and "u1.wav is 8000 Hz" in err
    sf.write(est / "u1_s1.wav", s2[:3000], 8000, subtype="FLOAT")
    assert main(["evaluate", str(est), str(tmp_path / "data")]) == 2
    assert "u1_s1.wav: 3000 samples but its reference" in capsys.readouterr().err
    sf.write(est / "u1_s1.wav", s2[:3992], 8000, subtype="FLOAT")  # one stride (8 samples) short: scored
    assert main(["evaluate", str(est), str(tmp_path / "data"), "-q"]) == 0


def _speech_mixtures(folder, n, seed):
    """``n`` two-voice eSpeak NG mixtures (LibriMix layout) of 4 random voices."""
    from audiosep.speech import make_speakers, write_mixtures

    rng = np.random.default_rng(seed)
    return write_mixtures(folder, make_speakers(4, rng), n, rng)[0]


def test_train_cli_exports_a_model_that_separates(tmp_path, capsys):
    data = _speech_mixtures(tmp_path / "data", 10, seed=0)
    out = tmp_path / "m.pt"
    argv = ["train", str(data), "-o", str(out), "--segment", "0.5", "--batch-size", "4", "--epochs", "1",
            "--device", "cpu", "--seed", "1", "--quiet"]
    assert main(argv) == 0
    mf = load_model_file(out, task="audiosep")
    assert mf.preprocessing["sample_rate"] == 8000 and mf.classes == ["s1", "s2"]
    # the real validation SI-SNR (dB, higher is better) and SI-SNRi, not a loss
    assert mf.metrics["best_val_si_snr"] == pytest.approx(mf.metrics["val_si_snr"], abs=1e-4)
    assert mf.metrics["val_si_snri"] != mf.metrics["val_si_snr"]
    assert (
        main(["separate", str(data / "mix" / "mix0000.wav"), "-m", str(out), "-o", str(tmp_path / "o"), "--quiet"]) == 0
    )
    assert sf.info(tmp_path / "o" / "mix0000_s2.wav").frames == sf.info(data / "mix" / "mix0000.wav").frames
    capsys.readouterr()
    assert main(argv) == 2 and "output exists" in capsys.readouterr().err
    # 10 mixtures, 5 folds: 8 train (2 steps of 4 per epoch), 2 validation; one epoch = epoch 0, step 2
    first = mf.metrics
    assert (first["epoch"], first["global_step"]) == (0, 2)
    # --resume without a value continues from the run folder's last.ckpt: exactly one more epoch (epoch 1, steps
    # 3..4), not a new run from step 0
    assert main([*argv[:-1], "--epochs", "2", "--resume", "--overwrite"]) == 0
    last = read_torch_file(tmp_path / "m_run" / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (1, 4)
    logs = sorted((tmp_path / "m_run").rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    import csv

    resumed = list(csv.DictReader(logs[-1].open()))  # the resumed run's log: its epochs only
    assert resumed and {int(r["epoch"]) for r in resumed} == {1}
    val1 = float(next(r["val_si_snr"] for r in resumed if r.get("val_si_snr")))
    # the model file is the best of the two epochs' validation SI-SNR, with that epoch's position
    second = load_model_file(out).metrics
    expect = (1, 4, val1) if val1 > first["val_si_snr"] else (0, 2, first["val_si_snr"])
    assert (second["epoch"], second["global_step"]) == expect[:2]
    assert second["best_val_si_snr"] == pytest.approx(expect[2], abs=1e-5)


def _val_si_snr_one_process(model_file, val_dir):
    """Mean SI-SNR (best permutation) of a model over a LibriMix folder, in this one process."""
    m = load_model_file(model_file).build()
    vals = []
    for f in sorted((val_dir / "mix").iterdir()):
        mix = torch.from_numpy(sf.read(f, dtype="float32")[0])[None, None]
        refs = torch.stack([torch.from_numpy(sf.read(val_dir / f"s{k}" / f.name, dtype="float32")[0]) for k in (1, 2)])
        with torch.no_grad():
            est = m(mix)
        _, perm = pit_si_snr_loss(est, refs[None])
        vals.append(si_snr(reorder(est, perm).double(), refs[None].double()))
    return float(torch.cat(vals).mean())


def test_train_ddp_two_cpu_processes_syncs_validation(tmp_path):
    import os
    import subprocess
    import sys

    data = _speech_mixtures(tmp_path / "train", 4, seed=0)
    val = _speech_mixtures(tmp_path / "val", 3, seed=1)  # odd: one rank scores 2, the other 1
    out = tmp_path / "m.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "audiosep.cli", "train", str(data), "--val-dir", str(val), "-o", str(out),
           "--devices", "2", "--device", "cpu", "--epochs", "1", "--segment", "0.25", "--batch-size", "2", "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in tmp_path.glob("*.pt")] == ["m.pt"]
    mf = load_model_file(out)
    assert mf.metrics["val_si_snr"] == pytest.approx(_val_si_snr_one_process(out, val), abs=1e-4)


def test_dynamic_mixing_dataset_mixes_random_crops(tmp_path):
    from audiosep.synthetic import speech_like
    from pipelines.audiosep import DynamicMixDataset

    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(tmp_path / f"spk{i}.wav", speech_like(1.5, 8000, rng), 8000)
    ds = DynamicMixDataset(tmp_path, segment=1.0, num_sources=2, length=5, seed=3)
    mix, srcs = ds[0]
    assert mix.shape == (1, 8000) and srcs.shape == (2, 8000)
    assert torch.allclose(mix[0], srcs.sum(0), atol=1e-6)
    assert torch.equal(ds[0][1], srcs) and not torch.equal(ds[1][1], srcs)  # seeded per item
    from shared_backbones.errors import InputError

    with pytest.raises(InputError, match="at least 4"):
        DynamicMixDataset(tmp_path, num_sources=4)


def test_dynamic_mixing_picks_different_speakers_at_relative_levels(tmp_path):
    from pipelines.audiosep import DynamicMixDataset

    t = np.arange(12000) / 8000
    freqs = (200, 450, 900)  # speaker k: every file a tone at freqs[k], so a source tells its speaker
    for k, f in enumerate(freqs):
        (tmp_path / f"spk{k}").mkdir()
        for j in range(2):
            sf.write(tmp_path / f"spk{k}" / f"u{j}.wav", (0.3 * np.sin(2 * np.pi * f * t + j)).astype("float32"), 8000)
    ds = DynamicMixDataset(tmp_path, segment=1.0, num_sources=2, length=30, seed=0)
    assert ds.speakers is not None and len(ds.speakers) == 3
    for i in range(30):
        _, srcs = ds[i]
        peaks = [int(np.abs(np.fft.rfft(s.numpy())).argmax()) for s in srcs]  # 1 Hz bins over 1 s
        assert peaks[0] != peaks[1] and set(peaks) <= set(freqs)
        rms = srcs.square().mean(-1).sqrt()
        assert rms[0] == pytest.approx(0.05, rel=1e-3)
        assert -5.01 <= 20 * torch.log10(rms[1] / rms[0]) <= 5.01


ASTEROID_CONFIGS = {
    "8k-sigmoid": {},
    "8k-relu": {"mask_act": "relu"},
    "16k-relu": {"sample_rate": 16000, "mask_act": "relu"},
    "causal-cLN": {"causal": True, "norm_type": "cLN"},
    "causal-cgLN": {"causal": True, "norm_type": "cgLN"},
}


@pytest.mark.parametrize("name", list(ASTEROID_CONFIGS))
def test_asteroid_serialized_files_import_as_saved(tmp_path, name, capsys):
    asteroid = pytest.importorskip("asteroid.models")
    torch.manual_seed(0)
    ref = asteroid.ConvTasNet(
        n_src=2, n_blocks=3, n_repeats=2, bn_chan=8, hid_chan=12, skip_chan=8, n_filters=16, kernel_size=16, stride=8,
        **{"sample_rate": 8000, **ASTEROID_CONFIGS[name]},
    ).eval()
    with torch.no_grad():  # random norm affines and PReLU slopes, not the identity defaults
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "pytorch_model.bin"  # the Hugging Face name Asteroid publishes under
    torch.save(ref.serialize(), path)  # holds a TorchVersion object and fb_name 'FreeFB'
    assert main(["import", str(path), "-o", str(tmp_path / "m.pt")]) == 0
    line = capsys.readouterr().err.strip()
    rate = ASTEROID_CONFIGS[name].get("sample_rate", 8000)
    assert line.startswith("asteroid: Conv-TasNet N=16 L=16 B=8 H=12 X=3 R=2") and f"{rate} Hz, 2 sources" in line
    assert ("non-causal" not in line) == ("causal" in name)
    mf = load_model_file(tmp_path / "m.pt", task="audiosep")
    assert mf.preprocessing["sample_rate"] == rate
    model = mf.build()
    x = torch.randn(2, 1, 1603)
    with torch.no_grad():
        expect = ref(x[:, 0])
        assert (model(x) - expect).abs().max() < 1e-4
    with torch.inference_mode():
        assert (model(x) - expect).abs().max() < 1e-4


def test_torchaudio_libri2mix_bundle_file_imports_with_its_rate(tmp_path, capsys):
    from torchaudio.models import conv_tasnet_base
    from torchaudio.pipelines import CONVTASNET_BASE_LIBRI2MIX

    torch.manual_seed(0)
    ref = conv_tasnet_base(num_sources=2).eval()
    path = tmp_path / Path(CONVTASNET_BASE_LIBRI2MIX._model_path).name  # conv_tasnet_base_libri2mix.pt
    torch.save(ref.state_dict(), path)
    assert main(["import", str(path), "-o", str(tmp_path / "m.pt")]) == 0
    assert "torchaudio: Conv-TasNet N=512 L=16 B=128 H=512 X=8 R=3 relu mask" in capsys.readouterr().err
    mf = load_model_file(tmp_path / "m.pt")
    assert mf.preprocessing["sample_rate"] == CONVTASNET_BASE_LIBRI2MIX.sample_rate == 8000
    x = torch.randn(1, 1, 4000)
    with torch.inference_mode():
        assert (mf.build()(x) - ref(x)).abs().max() < 1e-5
    assert main(["import", str(path), "-o", str(tmp_path / "m.pt")]) == 2  # exists, no --overwrite


def test_nan_samples_are_repaired_or_refused_never_written(tmp_path, capsys):
    model = _model_file(tmp_path)
    x = (0.3 * np.sin(np.arange(12000) * 0.05)).astype("float32")
    x[100], x[7000] = np.nan, np.inf
    sf.write(tmp_path / "spiky.wav", x, 8000, subtype="FLOAT")
    assert main(["separate", str(tmp_path / "spiky.wav"), "-m", str(model), "-o", str(tmp_path / "o"), "-q"]) == 0
    assert "2 isolated non-finite (NaN/inf) sample(s) set to 0" in capsys.readouterr().err
    for k in (1, 2):
        y = sf.read(tmp_path / "o" / f"spiky_s{k}.wav")[0]
        assert len(y) == 12000 and np.isfinite(y).all() and np.abs(y).max() > 0
    x[2000:2400] = np.nan
    sf.write(tmp_path / "broken.wav", x, 8000, subtype="FLOAT")
    assert main(["separate", str(tmp_path / "broken.wav"), "-m", str(model), "-o", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "broken.wav: a run of 400 non-finite samples (NaN/inf) from 0.250 s; refusing" in err
    assert err.count("\n") == 1 and not list((tmp_path / "o").glob("broken*"))


def test_mp3_in_pcm16_wav_out(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3")
    model = _model_file(tmp_path)
    sf.write(tmp_path / "talk.mp3", (0.3 * np.sin(np.arange(16000 * 2) * 0.05)).astype("float32"), 16000)
    assert sf.info(tmp_path / "talk.mp3").subtype == "MPEG_LAYER_III"
    assert main(["separate", str(tmp_path / "talk.mp3"), "-m", str(model), "-q"]) == 0
    info = sf.info(tmp_path / "talk_s1.wav")
    assert (info.format, info.subtype, info.samplerate, info.frames) == ("WAV", "PCM_16", 16000, 32000)


def test_batch_goes_on_past_a_bad_file_and_lists_it(tmp_path, capsys):
    model = _model_file(tmp_path)
    (tmp_path / "in").mkdir()
    for name in ("a.wav", "c.wav"):
        sf.write(tmp_path / "in" / name, np.zeros(4000, dtype="float32") + 0.1, 8000)
    (tmp_path / "in" / "b.wav").write_text("not audio")
    assert main(["separate", str(tmp_path / "in"), "-m", str(model), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "1 of 3 inputs failed" in err and "b.wav: not a readable audio file" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_s1.wav", "a_s2.wav", "c_s1.wav", "c_s2.wav"]
    # a rerun skips the finished inputs and retries the bad one; --out-dir is the deprecated -o
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert main(["separate", str(tmp_path / "in"), "-m", str(model), "--out-dir", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--out-dir is deprecated" in err and "b.wav: not a readable audio file" in err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before
    # preflight: an input with some of its outputs (not all) stops the batch before any work
    (tmp_path / "out" / "c_s2.wav").unlink()
    (tmp_path / "in" / "b.wav").unlink()
    assert main(["separate", str(tmp_path / "in"), "-m", str(model), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "some outputs exist and others do not" in err and err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_s1.wav", "a_s2.wav", "c_s1.wav"]


def test_every_command_has_version_examples_and_help_on_every_option(capsys):
    from audiosep.cli import _parser
    from shared_backbones.cliutil import iter_subparsers

    for path, parser in iter_subparsers(_parser()):
        for action in parser._actions:
            if action.option_strings and action.help != "==SUPPRESS==":
                assert action.help, (path, action.option_strings)
        if path:
            assert parser.epilog and parser.epilog.count("audiosep ") >= 2, path
            assert any("-q" in a.option_strings for a in parser._actions), path
    with pytest.raises(SystemExit):
        main(["evaluate", "--version"])
    assert "(convsuite)" in capsys.readouterr().out


def test_speech_corpus_has_held_out_voices_and_sentences(tmp_path):
    pytest.importorskip("espeakng_loader")
    from audiosep.speech import Espeak, Speaker, write_corpus

    paths = write_corpus(tmp_path, train_speakers=3, per_speaker=2, val_mixtures=2, test_mixtures=2)
    meta = __import__("json").loads((tmp_path / "corpus.json").read_text())
    train_v = {s["variant"] for s in meta["train_speakers"]}
    assert train_v and train_v.isdisjoint(s["variant"] for s in meta["test_speakers"])
    assert len(list(paths["train"].iterdir())) == 3 and len(list(paths["train"].rglob("*.wav"))) == 6
    for name in ("mix0000.wav", "mix0001.wav"):
        mix, rate = sf.read(paths["test"] / "mix" / name)
        s1, s2 = sf.read(paths["test"] / "s1" / name)[0], sf.read(paths["test"] / "s2" / name)[0]
        assert rate == 8000 and len(mix) == len(s1) == len(s2) > 8000  # a sentence lasts more than a second
        assert np.allclose(mix, s1 + s2, atol=1e-6)
        rel = 10 * np.log10(np.mean(s2**2) / np.mean(s1**2))
        assert -5.5 < rel < 5.5  # within -5..5 dB (zero padding moves it a little)
    # speech, not tones: voiced energy concentrated below 1 kHz, and the same text differs between two voices
    es = Espeak.get()
    a = es.synth("Hello world", Speaker("en-us", "m3", 30, 50, 160))
    b = es.synth("Hello world", Speaker("en-us", "f2", 80, 50, 160))
    assert es.rate == 22050 and 0.5 < len(a) / es.rate < 2.0 and len(a) != len(b)
    spec = np.abs(np.fft.rfft(a))
    freqs = np.fft.rfftfreq(len(a), 1 / es.rate)
    assert spec[freqs < 1000].sum() > spec[freqs > 4000].sum()
    assert write_corpus(tmp_path, train_speakers=3, per_speaker=2, val_mixtures=2, test_mixtures=2) == paths  # cached


def test_dynamic_mixing_speed_perturbation_moves_pitch_within_range(tmp_path):
    from pipelines.audiosep import DynamicMixDataset

    t = np.arange(16000) / 8000
    for k in range(2):
        (tmp_path / f"spk{k}").mkdir()
        sf.write(tmp_path / f"spk{k}" / "u0.wav", (0.3 * np.sin(2 * np.pi * 400 * t)).astype("float32"), 8000)
    plain = DynamicMixDataset(tmp_path, segment=1.0, length=20, seed=0)
    fast = DynamicMixDataset(tmp_path, segment=1.0, length=20, seed=0, speed_perturb=0.2)
    peaks = []
    for i in range(20):
        mix, srcs = fast[i]
        assert mix.shape == (1, 8000) and srcs.shape == (2, 8000)
        assert torch.allclose(mix[0], srcs.sum(0), atol=1e-6)
        assert torch.equal(fast[i][1], srcs)  # seeded per item
        peaks += [int(np.abs(np.fft.rfft(s.numpy())).argmax()) for s in srcs]  # 1 Hz bins over 1 s
        assert [int(np.abs(np.fft.rfft(s.numpy())).argmax()) for s in plain[i][1]] == [400, 400]
    assert all(318 <= p <= 482 for p in peaks)  # a tone played at speed f sounds at 400 f Hz, f in [0.8, 1.2]
    assert max(peaks) - min(peaks) > 80  # and the speeds differ between sources


def test_speech_corpus_all_variants_keep_test_families_out_of_training():
    pytest.importorskip("espeakng_loader")
    from audiosep.speech import FEMALE, MALE, shipped_variants, split_variants, variant_family

    shipped = shipped_variants()
    assert set(MALE + FEMALE) <= set(shipped) and len(shipped) > 80 and "fast" not in shipped
    assert shipped["m3"] == "male" and shipped["f2"] == "female" and shipped["whisperf"] == "female"
    assert variant_family("klatt3") == variant_family("klatt") == "klatt" and variant_family("mike2") == "mike"
    assert variant_family("m3") == "m3"
    narrow = split_variants(np.random.default_rng(0))
    wide = split_variants(np.random.default_rng(0), all_variants=True)
    assert narrow[1] == wide[1]  # the same test voices either way
    assert len(wide[0]) > 2 * len(narrow[0])
    for train, test in (narrow, wide):
        assert {variant_family(v) for v in train}.isdisjoint(variant_family(v) for v in test)
        assert any(v in MALE for v in test) and any(v in FEMALE for v in test)


def test_evaluate_cli_scores_the_good_mixtures_and_lists_the_bad(tmp_path, capsys):
    rng = np.random.default_rng(1)
    est = tmp_path / "est"
    est.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        s1, s2 = (rng.standard_normal(4000).astype("float32") * 0.2 for _ in range(2))
        for d, x in (("mix", s1 + s2), ("s1", s1), ("s2", s2)):
            (tmp_path / "data" / d).mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "data" / d / name, x, 8000, subtype="FLOAT")
        if name != "b.wav":  # b has no estimates
            sf.write(est / f"{Path(name).stem}_s1.wav", s1 + 0.1 * s2, 8000, subtype="FLOAT")
            sf.write(est / f"{Path(name).stem}_s2.wav", s2 + 0.1 * s1, 8000, subtype="FLOAT")
    out = tmp_path / "r.csv"
    assert main(["evaluate", str(est), str(tmp_path / "data"), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "1 of 3 inputs failed" in err and "b_s1.wav: file not found" in err
    lines = out.read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["file", "a.wav", "c.wav", "mean"]
    with pytest.raises(InputError, match="b_s1.wav"):  # the library call still stops at the first bad mixture
        evaluate_folder(est, tmp_path / "data")


def test_sdr_survives_a_thread_count_change():
    """torch's MKL linalg.solve fails after set_num_threads(1) then (2); sdr (used by evaluate) must not."""
    from audiosep.metrics import sdr

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 2, 4000, generator=g, dtype=torch.float64)
    est = ref + 0.1 * torch.randn(1, 2, 4000, generator=g, dtype=torch.float64)
    before = sdr(est, ref)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.set_num_threads(2)
        after = sdr(est, ref)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(before, after, atol=1e-9) and (before > 15).all()


def test_train_refuses_speed_perturbation_it_would_ignore(tmp_path, capsys):
    data = tmp_path / "data"
    for d in ("mix", "s1", "s2"):
        (data / d).mkdir(parents=True)
        sf.write(data / d / "a.wav", np.zeros(800, "float32"), 8000)
    base = ["train", str(data), "-o", str(tmp_path / "m.pt"), "-q"]
    assert main([*base, "--speed-perturb", "0.1"]) == 2  # LibriMix folder: nothing to perturb
    assert "--speed-perturb needs --dynamic-mixing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # out of range: argparse's usage error (exit 2) naming the option
        main([*base, "--dynamic-mixing", "--val-dir", str(data), "--speed-perturb", "1.5"])
    assert exc.value.code == 2
    assert "argument --speed-perturb: expected a number in [0, 1), got '1.5'" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_train_threads_auto_times_both_counts_and_says_which(tmp_path, capsys):
    data = _speech_mixtures(tmp_path / "data", 6, seed=3)
    out = tmp_path / "m.pt"
    before = torch.get_num_threads()
    argv = ["train", str(data), "-o", str(out), "--segment", "0.25", "--batch-size", "2", "--max-steps", "2",
            "--device", "cpu", "--threads", "auto"]
    assert main(argv) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("threads auto: "))
    chosen = int(line.split()[2])
    assert chosen in (1, before) and "a training step took 1: " in line
    assert torch.get_num_threads() == before
    for bad in ("0", "two", "nan", "5000"):
        with pytest.raises(SystemExit) as exc:  # argparse's usage error: exit 2, one line naming the option
            main([*argv[:-1], bad, "--overwrite"])
        assert exc.value.code == 2
        assert f"--threads: expected a whole number in [1, 4096] or auto, got '{bad}'" in capsys.readouterr().err
