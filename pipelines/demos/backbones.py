"""Demo part for the shared core: train a reversible MBConv classifier through the Lightning pipeline, export the
suite model file, reload it, evaluate on held-out data, and measure the reversible memory saving."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from shared_backbones.blocks import reversible_mbconv_sequence
from shared_backbones.checkpoint import load_model_file
from shared_backbones.memory import activation_bytes

from ..example import ExampleDataModule, ExampleModule, make_patterns
from ..trainer import build_trainer, fit
from . import DemoResult


def run(out_dir: Path, *, quick: bool = False, quiet: bool = False) -> DemoResult:
    """Fit -> export -> reload -> accuracy; activation bytes plain/reversible for a depth-8 3-D MBConv stack."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    torch.manual_seed(0)
    module = ExampleModule(arch_kwargs={"channels": 16, "depth": 4})
    dm = ExampleDataModule(n_train=256 if quick else 1024, n_val=128, batch_size=32)
    trainer = build_trainer(out_dir / "train", max_epochs=2 if quick else 6, quiet=quiet, seed=0, accelerator="cpu")
    res = fit(module, dm, trainer, export_to=out_dir / "example_model.pt")
    model = load_model_file(res.model_file, task="example").build()
    test = make_patterns(512, seed=99)
    with torch.no_grad():
        acc = (model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean().item()
    seq = reversible_mbconv_sequence(3, 16, depth=8, expand_ratio=4)
    x = torch.randn(1, 16, 24, 24, 24, requires_grad=True)
    rev = activation_bytes(seq, x)
    seq.reversible = False
    plain = activation_bytes(seq, x)
    ratio = plain / rev
    return DemoResult(pipeline="backbones", figures={"heldout_accuracy": acc, "mem_ratio_depth8": ratio},
                      targets={"heldout_accuracy": ">= 0.9", "mem_ratio_depth8": ">= 4"},
                      outputs=[str(res.model_file), str(out_dir / "train" / "logs")],
                      seconds=time.perf_counter() - start,
                      not_judged=["heldout_accuracy"] if quick else [])  # the memory ratio holds at any budget
