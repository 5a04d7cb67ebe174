"""Activation bytes of one Conv-TasNet training step on a 4 s, 8 kHz segment: reversible vs plain TCN stack.

Same weights, run once through the reversible Function and once as a plain network -> ``activation_ratio``
(plain / reversible; target >= 3). Also the standard skip-connected Conv-TasNet of the same sizes (torchaudio's
layout) against the reversible one -> ``ratio_vs_standard_convtasnet``. Prints one JSON object last.

    python benchmarks/audiosep_memory.py [--batch 2]
"""

from __future__ import annotations

import argparse
import json

import torch

from audiosep.metrics import pit_si_snr_loss
from audiosep.models import ConvTasNet
from shared_backbones.memory import activation_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = ConvTasNet(num_sources=2, reversible=True)  # the paper's sizes (N=512 L=16 B=128 H=512 P=3 X=8 R=3)
    mix = torch.randn(args.batch, 1, int(args.seconds * 8000))
    srcs = torch.randn(args.batch, 2, mix.shape[-1])
    loss = lambda est: pit_si_snr_loss(est, srcs)[0]  # noqa: E731
    stack = model.mask_generator.conv_layers
    res = {}
    for mode in ("plain", "reversible"):
        stack.reversible = mode == "reversible"
        res[mode] = activation_bytes(model, mix, loss_fn=loss)
    stack.reversible = False
    tcn_plain = activation_bytes(stack, torch.randn(args.batch, 128, mix.shape[-1] // 8 + 1))
    stack.reversible = True
    tcn_rev = activation_bytes(stack, torch.randn(args.batch, 128, mix.shape[-1] // 8 + 1, requires_grad=True))
    standard = activation_bytes(ConvTasNet(num_sources=2), mix, loss_fn=loss)  # the torchaudio-layout network
    ratio = res["plain"] / res["reversible"]
    print(f"Conv-TasNet (reversible TCN, paper sizes), batch {args.batch} x {args.seconds:g} s at 8 kHz")
    print(
        f"whole training step: plain {res['plain'] / 2**20:.1f} MB, reversible {res['reversible'] / 2**20:.1f} MB "
        f"-> {ratio:.2f}x"
    )
    print(
        f"standard (skip-connected, torchaudio layout) Conv-TasNet: {standard / 2**20:.1f} MB "
        f"-> {standard / res['reversible']:.2f}x the reversible one"
    )
    print(
        f"TCN stack alone:     plain {tcn_plain / 2**20:.1f} MB, reversible {tcn_rev / 2**20:.1f} MB "
        f"-> {tcn_plain / tcn_rev:.1f}x"
    )
    print(
        json.dumps(
            {
                "activation_ratio": round(ratio, 2),
                "tcn_stack_ratio": round(tcn_plain / tcn_rev, 2),
                "ratio_vs_standard_convtasnet": round(standard / res["reversible"], 2),
                "plain_mb": round(res["plain"] / 2**20, 1),
                "reversible_mb": round(res["reversible"] / 2**20, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
