"""Import Conv-TasNet weights from torchaudio or Asteroid into the suite's model file."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from shared_backbones.checkpoint import ModelFile, read_torch_file, save_model_file
from shared_backbones.errors import ModelFileError
from shared_backbones.planning import plan_outputs

from .models import ConvTasNet


def _infer_kwargs(sd: dict[str, torch.Tensor], num_layers: int) -> dict:
    """Hyperparameters from a torchaudio-keyed state_dict's shapes. The split of the blocks into repeats <R> of
    <X> blocks (which sets their dilations) is not visible in the weights, so <X> is given."""
    enc = sd["encoder.weight"]  # [N, 1, L]
    n = enc.shape[0]
    n_blocks = len({k.split(".")[2] for k in sd if k.startswith("mask_generator.conv_layers.")})
    if n_blocks % num_layers:
        raise ModelFileError(f"{n_blocks} TCN blocks cannot form repeats of X={num_layers} blocks (give --layers)")
    b = sd["mask_generator.input_conv.weight"].shape[0]
    sc = sd["mask_generator.conv_layers.0.skip_out.weight"].shape[0]
    return {
        "num_sources": sd["mask_generator.output_conv.weight"].shape[0] // n,
        "enc_kernel_size": enc.shape[-1],
        "enc_num_feats": n,
        "msk_kernel_size": sd["mask_generator.conv_layers.0.conv_layers.3.weight"].shape[-1],
        "msk_num_feats": b,
        "msk_num_hidden_feats": sd["mask_generator.conv_layers.0.conv_layers.0.weight"].shape[0],
        **({} if sc == b else {"msk_num_skip_feats": sc}),
        "msk_num_layers": num_layers,
        "msk_num_stacks": n_blocks // num_layers,
    }


# Asteroid ConvTasNet (asteroid.models.ConvTasNet: FreeFB encoder/decoder, masker = TDConvNet) -> ours.
# Asteroid's layer norms name their affine parameters gamma/beta; every Asteroid block has a res_conv, the last
# block's output residual is never used (the masks come from the summed skips), so that one is dropped.
_ASTEROID_KEYS = [
    (r"^encoder\.filterbank\._filters$", "encoder.weight"),
    (r"^decoder\.filterbank\._filters$", "decoder.weight"),
    (r"^masker\.bottleneck\.0\.", "mask_generator.input_norm."),
    (r"^masker\.bottleneck\.1\.", "mask_generator.input_conv."),
    (r"^masker\.TCN\.(\d+)\.shared_block\.3\.0\.", r"mask_generator.conv_layers.\1.conv_layers.3."),  # causal
    (r"^masker\.TCN\.(\d+)\.shared_block\.(\d)\.", r"mask_generator.conv_layers.\1.conv_layers.\2."),
    (r"^masker\.TCN\.(\d+)\.res_conv\.", r"mask_generator.conv_layers.\1.res_out."),
    (r"^masker\.TCN\.(\d+)\.skip_conv\.", r"mask_generator.conv_layers.\1.skip_out."),
    (r"^masker\.mask_net\.0\.", "mask_generator.output_prelu."),
    (r"^masker\.mask_net\.1\.", "mask_generator.output_conv."),
    (r"\.gamma$", ".weight"),
    (r"\.beta$", ".bias"),
]


def asteroid_to_torchaudio(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an Asteroid ConvTasNet state_dict to torchaudio's (= our) keys; norm parameters become 1-D and the
    unused residual output of the last block is dropped."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for pattern, repl in _ASTEROID_KEYS:
            k = re.sub(pattern, repl, k)
        out[k] = v.reshape(-1) if re.search(r"(input_norm|conv_layers\.[25])\.(weight|bias)$", k) else v
    blocks = [int(k.split(".")[2]) for k in out if k.startswith("mask_generator.conv_layers.")]
    if blocks:
        last = f"mask_generator.conv_layers.{max(blocks)}.res_out."
        out = {k: v for k, v in out.items() if not k.startswith(last)}
    return out


ASTEROID_NORMS = {"gLN": "gln", "cgLN": "cln", "cLN": "chanln"}
# torchaudio's bundles: file name -> sample rate (``torchaudio.pipelines.CONVTASNET_BASE_LIBRI2MIX``)
TORCHAUDIO_BUNDLES = {"conv_tasnet_base_libri2mix.pt": 8000}


def _asteroid_args(args: dict, path: Path) -> None:
    """Refuse Asteroid configurations our Conv-TasNet does not implement (one-line error)."""
    fb = str(args.get("fb_name", "free"))
    checks = [
        (fb.lower() in ("free", "freefb"), f"filterbank {fb!r} (only 'free' / 'FreeFB')"),
        (
            args.get("norm_type", "gLN") in ASTEROID_NORMS,
            f"norm {args.get('norm_type')!r} (only {', '.join(map(repr, ASTEROID_NORMS))})",
        ),
        (args.get("skip_chan", 1) not in (0, None), "no skip connections (skip_chan=0)"),
        (args.get("encoder_activation") in (None, "linear"), f"encoder activation {args.get('encoder_activation')!r}"),
        (args.get("mask_act", "relu") in ("relu", "sigmoid"), f"mask activation {args.get('mask_act')!r}"),
        (args.get("out_chan") in (None, args.get("n_filters")), f"out_chan {args.get('out_chan')} != n_filters"),
    ]
    stride, kernel = args.get("stride"), args.get("kernel_size")
    checks.append((stride is None or kernel is None or stride * 2 == kernel, f"stride {stride} != kernel_size/2"))
    for ok, what in checks:
        if not ok:
            raise ModelFileError(f"unsupported Asteroid ConvTasNet: {what}", path)


def read_foreign(path: Path) -> object:
    """``torch.load(weights_only=True)``, with Asteroid's ``infos.software_versions`` (a ``TorchVersion``, a str
    subclass) as the one extra allowed type; nothing pickled is executed."""
    from torch.torch_version import TorchVersion

    with torch.serialization.safe_globals([TorchVersion]):
        return read_torch_file(path)


def detect_format(obj: dict, sd: dict[str, torch.Tensor]) -> str | None:
    """``asteroid`` (``model_args`` or ``masker.*`` keys), ``torchaudio`` (``encoder.weight``) or None."""
    if "model_args" in obj or any(k.startswith("masker.") for k in sd):
        return "asteroid"
    if "encoder.weight" in sd:
        return "torchaudio"
    return None


#: the Asteroid architecture this importer reads (``model_name`` of ``model.serialize()``)
ASTEROID_CONVTASNET = "ConvTasNet"


def _asteroid_config(obj: dict, sd: dict[str, torch.Tensor], path: Path) -> dict:
    """The ``model_args`` of an Asteroid ``model.serialize()`` file, after checking it is one of a Conv-TasNet: a
    file without ``model_args`` is not an Asteroid model file, another architecture (``model_name`` DPRNNTasNet,
    DCUNet, ...) is refused by name (one-line :class:`ModelFileError`)."""
    args = obj.get("model_args")
    if not isinstance(args, dict):
        what = ("an Asteroid state_dict without its model_args (mask activation, blocks, norm and rate are not "
                "stored; save the model with torch.save(model.serialize(), path))"
                if any(k.startswith("masker.") for k in sd) else
                "a torchaudio-style state_dict (use --format torchaudio or auto)" if "encoder.weight" in sd else
                "something else")
        raise ModelFileError(f"not an Asteroid model file: no model_args (Asteroid's model.serialize() has them); "
                             f"this is {what}", path)
    name = obj.get("model_name")
    if name is not None and str(name) != ASTEROID_CONVTASNET:
        raise ModelFileError(f"Asteroid architecture {name}: only Conv-TasNet (model_name {ASTEROID_CONVTASNET}) is "
                             "supported", path)
    return args


def describe(mf: ModelFile) -> str:
    """One line: architecture, sizes, sample rate, sources, causal."""
    kw = mf.arch_kwargs
    norm = kw.get("norm", "gln")
    return (
        f"Conv-TasNet N={kw['enc_num_feats']} L={kw['enc_kernel_size']} B={kw['msk_num_feats']} "
        f"H={kw['msk_num_hidden_feats']} X={kw['msk_num_layers']} R={kw['msk_num_stacks']} "
        f"{kw.get('msk_activate', 'sigmoid')} mask, {norm}, {'causal' if kw.get('causal') else 'non-causal'}; "
        f"{mf.preprocessing['sample_rate']} Hz, {kw['num_sources']} sources"
    )


def import_convtasnet(
    path: str | Path,
    out: str | Path,
    fmt: str = "auto",
    sample_rate: int | None = None,
    msk_activate: str | None = None,
    num_layers: int = 8,
    overwrite: bool = False,
) -> ModelFile:
    """Import Conv-TasNet weights into the suite's model file ``out``; returns the written :class:`ModelFile`, whose
    ``extra["assumed"]`` lists what the weights did not say and was assumed (a line each, for the summary).

    ``fmt`` ``torchaudio``: a ``torchaudio.models.ConvTasNet`` state_dict (or a dict holding one under
    ``state_dict``/``model``; the bundle file ``conv_tasnet_base_libri2mix.pt`` gets its 8 kHz rate). ``asteroid``:
    ``torch.save(model.serialize(), path)`` of ``asteroid.models.ConvTasNet`` (also the Hugging Face
    ``pytorch_model.bin``), hyperparameters, sample rate and causality from its ``model_args``; a file without
    ``model_args`` and other Asteroid architectures (its ``model_name``) are refused. ``auto`` tells them apart by
    their keys. A torchaudio state_dict does not store its mask activation: ``msk_activate`` None assumes ``relu``
    (torchaudio's ``conv_tasnet_base``; ``sigmoid`` is ``torchaudio.models.ConvTasNet``'s default); nor its rate:
    ``sample_rate`` None assumes 8000 Hz (the bundle's). An Asteroid file without ``sample_rate`` (older Asteroid)
    gets ``sample_rate`` or 8000 Hz; one that states a rate refuses another ``sample_rate``. ``out`` is
    checked before anything is read (not the input, absent unless ``overwrite``, its folder writable)."""
    path = Path(path)
    plan_outputs([], shared={"model": out}, other_inputs=[path], overwrite=overwrite)
    obj = read_foreign(path)
    if not isinstance(obj, dict):
        raise ModelFileError("not a state_dict or checkpoint dict", path)
    sd = obj.get("state_dict") or obj.get("model") or obj
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelFileError("no tensor state_dict found", path)
    sd = {k.removeprefix("module.").removeprefix("model."): v for k, v in sd.items()}
    if fmt == "auto":
        fmt = detect_format(obj, sd) or "torchaudio"
    framing: dict = {}
    assumed: list[str] = []
    if fmt == "asteroid":
        args = _asteroid_config(obj, sd, path)
        _asteroid_args(args, path)
        sd = asteroid_to_torchaudio(sd)
        stated = args.get("sample_rate")
        if stated and sample_rate and int(stated) != int(sample_rate):
            raise ModelFileError(f"the file's model runs at {int(stated)} Hz, not --sample-rate {sample_rate}", path)
        if not stated and not sample_rate:
            assumed.append("8000 Hz assumed (the file has no sample_rate; set it with --sample-rate)")
        sample_rate = int(stated or sample_rate or 8000)
        if "mask_act" not in args and msk_activate is None:
            assumed.append("sigmoid mask assumed (Asteroid's default; the file has no mask_act; --mask sets it)")
        msk_activate = str(args.get("mask_act") or msk_activate or "sigmoid")  # Asteroid's default
        num_layers = int(args.get("n_blocks", num_layers))
        framing = {"encoder_padding": False}  # Asteroid's encoder/decoder do not pad
        norm = ASTEROID_NORMS[args.get("norm_type", "gLN")]
        if norm != "gln" or args.get("causal"):
            framing |= {"norm": norm, "causal": bool(args.get("causal", False))}
    elif fmt == "torchaudio":
        if msk_activate is None:
            msk_activate = "relu"
            assumed.append("relu mask assumed (torchaudio's conv_tasnet_base; weights do not store it): --mask sigmoid "
                           "for a torchaudio.models.ConvTasNet built with its default")
        if not sample_rate and path.name not in TORCHAUDIO_BUNDLES:
            assumed.append("8000 Hz assumed (weights do not store the rate; set it with --sample-rate)")
        sample_rate = sample_rate or TORCHAUDIO_BUNDLES.get(path.name, 8000)
    else:
        raise ModelFileError(f"unknown format {fmt!r} (auto, torchaudio or asteroid)", path)
    if msk_activate not in ("relu", "sigmoid"):
        raise ModelFileError(f"mask activation {msk_activate!r} is not supported (relu or sigmoid)", path)
    if "encoder.weight" not in sd:
        raise ModelFileError(f"not a Conv-TasNet state_dict in {fmt} layout (no encoder weights)", path)
    try:
        kwargs = {**_infer_kwargs(sd, num_layers), "msk_activate": msk_activate, **framing}
    except ModelFileError as exc:
        raise ModelFileError(str(exc), path) from None
    except KeyError as exc:
        raise ModelFileError(f"not a Conv-TasNet state_dict in {fmt} layout (missing {exc})", path) from None
    model = ConvTasNet(**kwargs)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"weights do not fit Conv-TasNet: {str(exc).splitlines()[1].strip()}", path) from None
    mf = ModelFile.from_model(
        model,
        task="audiosep",
        arch="convtasnet",
        arch_kwargs=kwargs,
        classes=[f"s{k + 1}" for k in range(kwargs["num_sources"])],
        preprocessing={"sample_rate": int(sample_rate)},
        extra={"imported_from": fmt, "source_file": path.name, **({"assumed": assumed} if assumed else {})},
    )
    save_model_file(out, mf, overwrite=overwrite)
    return mf
