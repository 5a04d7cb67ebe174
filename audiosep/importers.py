"""Import Conv-TasNet weights from torchaudio or Asteroid into the suite's model file."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from shared_backbones.checkpoint import ModelFile, read_torch_file, save_model_file
from shared_backbones.errors import ModelFileError

from .models import ConvTasNet


def _infer_kwargs(sd: dict[str, torch.Tensor], num_layers: int) -> dict:
    """Hyperparameters from a torchaudio-keyed state_dict's shapes. The split of the blocks into repeats <R> of
    <X> blocks (which sets their dilations) is not visible in the weights, so <X> is given."""
    enc = sd["encoder.weight"]  # [N, 1, L]
    n = enc.shape[0]
    n_blocks = len({k.split(".")[2] for k in sd if k.startswith("mask_generator.conv_layers.")})
    if n_blocks % num_layers:
        raise ModelFileError(f"{n_blocks} TCN blocks cannot form repeats of X={num_layers} blocks (give --layers)")
    return {"num_sources": sd["mask_generator.output_conv.weight"].shape[0] // n, "enc_kernel_size": enc.shape[-1],
            "enc_num_feats": n, "msk_kernel_size": sd["mask_generator.conv_layers.0.conv_layers.3.weight"].shape[-1],
            "msk_num_feats": sd["mask_generator.input_conv.weight"].shape[0],
            "msk_num_hidden_feats": sd["mask_generator.conv_layers.0.conv_layers.0.weight"].shape[0],
            "msk_num_layers": num_layers, "msk_num_stacks": n_blocks // num_layers}


def asteroid_to_torchaudio(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map Asteroid ConvTasNet keys (``encoder.filterbank._filters``, ``masker.bottleneck``, ``masker.TCN.{i}.
    {shared_block.0..5, res_conv, skip_conv}``, ``masker.mask_net``, ``decoder.filterbank._filters``) to ours."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k2 = k
        k2 = re.sub(r"^encoder\.filterbank\._filters$", "encoder.weight", k2)
        k2 = re.sub(r"^decoder\.filterbank\._filters$", "decoder.weight", k2)
        k2 = re.sub(r"^masker\.bottleneck\.0\.", "mask_generator.input_norm.", k2)
        k2 = re.sub(r"^masker\.bottleneck\.1\.", "mask_generator.input_conv.", k2)
        k2 = re.sub(r"^masker\.TCN\.(\d+)\.shared_block\.(\d)\.", lambda m: f"mask_generator.conv_layers.{m.group(1)}.conv_layers.{m.group(2)}.", k2)
        k2 = re.sub(r"^masker\.TCN\.(\d+)\.res_conv\.", r"mask_generator.conv_layers.\1.res_out.", k2)
        k2 = re.sub(r"^masker\.TCN\.(\d+)\.skip_conv\.", r"mask_generator.conv_layers.\1.skip_out.", k2)
        k2 = re.sub(r"^masker\.mask_net\.0\.", "mask_generator.output_prelu.", k2)
        k2 = re.sub(r"^masker\.mask_net\.1\.", "mask_generator.output_conv.", k2)
        out[k2] = v
    return out


def import_convtasnet(path: str | Path, out: str | Path, fmt: str = "torchaudio", sample_rate: int = 8000,
                      msk_activate: str = "relu", num_layers: int = 8, overwrite: bool = False) -> Path:
    """Read a torchaudio state_dict (or a dict holding one under ``state_dict``/``model``) or an Asteroid package
    (``{"state_dict": ..., "model_args": ...}``), check it against our architecture and save the suite model file."""
    path = Path(path)
    obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise ModelFileError("not a state_dict or checkpoint dict", path)
    sd = obj.get("state_dict") or obj.get("model") or obj
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelFileError("no tensor state_dict found", path)
    sd = {k.removeprefix("module.").removeprefix("model."): v for k, v in sd.items()}
    if fmt == "asteroid":
        sd = asteroid_to_torchaudio(sd)
        args = obj.get("model_args") or {}
        sample_rate = int(args.get("sample_rate", sample_rate))
        msk_activate = str(args.get("mask_act", msk_activate))
        num_layers = int(args.get("n_blocks", num_layers))
    elif fmt != "torchaudio":
        raise ModelFileError(f"unknown format {fmt!r} (torchaudio or asteroid)", path)
    if "encoder.weight" not in sd:
        raise ModelFileError(f"not a Conv-TasNet state_dict in {fmt} layout (no encoder weights)", path)
    try:
        kwargs = {**_infer_kwargs(sd, num_layers), "msk_activate": msk_activate}
    except ModelFileError as exc:
        raise ModelFileError(str(exc), path) from None
    except KeyError as exc:
        raise ModelFileError(f"not a Conv-TasNet state_dict in {fmt} layout (missing {exc})", path) from None
    model = ConvTasNet(**kwargs)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"weights do not fit Conv-TasNet: {str(exc).splitlines()[1].strip()}", path) from None
    mf = ModelFile.from_model(model, task="audiosep", arch="convtasnet", arch_kwargs=kwargs,
                              classes=[f"s{k + 1}" for k in range(kwargs["num_sources"])],
                              preprocessing={"sample_rate": sample_rate}, extra={"imported_from": fmt})
    return save_model_file(out, mf, overwrite=overwrite)
