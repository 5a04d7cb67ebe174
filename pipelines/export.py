"""Export a Lightning checkpoint of a SuiteModule to the suite's model file."""

from __future__ import annotations

from pathlib import Path

from shared_backbones.checkpoint import ModelFile, read_torch_file, save_model_file
from shared_backbones.cliutil import check_output
from shared_backbones.errors import ModelFileError


def export_checkpoint(
    ckpt_path: str | Path, out_path: str | Path, overwrite: bool = False, metrics: dict | None = None
) -> Path:
    """Read ``ckpt_path`` (weights_only), strip the ``model.`` prefix, write the model file atomically."""
    ckpt_path = Path(ckpt_path)
    check_output(out_path, overwrite)
    ckpt = read_torch_file(ckpt_path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ModelFileError("not a Lightning checkpoint (no state_dict)", ckpt_path)
    hp = ckpt.get("convsuite") or ckpt.get("hyper_parameters") or {}
    missing = [k for k in ("task", "arch") if k not in hp]
    if missing:
        raise ModelFileError(
            f"checkpoint was not written by a convsuite SuiteModule (no task/arch metadata: "
            f"{', '.join(missing)} missing)",
            ckpt_path,
        )
    sd = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if not sd:
        raise ModelFileError("checkpoint holds no 'model.' weights", ckpt_path)
    found = {}
    for cb in (ckpt.get("callbacks") or {}).values():
        if isinstance(cb, dict) and cb.get("best_model_score") is not None:
            found = {"best_" + str(cb.get("monitor", "score")): float(cb["best_model_score"])}
    mf = ModelFile(
        task=hp["task"],
        arch=hp["arch"],
        arch_kwargs=dict(hp.get("arch_kwargs") or {}),
        state_dict=sd,
        classes=list(hp.get("classes") or []),
        preprocessing=dict(hp.get("preprocessing") or {}),
        metrics={
            **found,
            "epoch": int(ckpt.get("epoch", -1)),
            "global_step": int(ckpt.get("global_step", -1)),
            **(metrics or {}),
        },
    )
    return save_model_file(out_path, mf, overwrite=True)
