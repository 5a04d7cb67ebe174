"""``--precision auto`` for medseg's volume inference on the CPU: bf16 where the CPU computes bf16 natively and bf16
keeps the labels, fp32 elsewhere.

bf16 autocast halves the bytes every convolution moves and, on a CPU with native bf16 dot products (AVX512-BF16,
AMX; :func:`shared_backbones.precision.cpu_bf16_feature`), runs the 3-D U-Net's windows faster than fp32 (1.49x on
a 96 x 160 x 128 window of nnU-Net's default network on 2 Zen 4 cores). It rounds activations to 8 mantissa bits, so
it is only the default where the labels it predicts stay those of fp32: :data:`BF16_LABEL_AGREEMENT` is measured on
a *trained* model (random weights give near-ties everywhere and understate it) by
``benchmarks/medseg_vs_nnunet.py`` (``bf16_label_agreement``: a unet3d trained by ``medseg train`` on the synthetic
phantoms of ``medseg synth``, its test phantoms predicted in fp32 and in bf16, the fraction of voxels with the same
label). Rule: auto is bf16 while that agreement is at least :data:`MIN_LABEL_AGREEMENT` (bf16 may change at most
0.1% of the labels), otherwise fp32, and the policy's ``reason`` (printed by ``medseg predict``) says which and why.
The stored figure is only the prior: before its first case a model chosen bf16 this way runs the case's central
window in fp32 and in bf16 (:func:`check_on_window`) and stays bf16 only when that window's labels agree as well,
so a model of its own (whose logits may sit closer together) is judged on itself.
GPUs keep the suite's rule (bf16 where supported, else fp16); ``--precision fp32|bf16`` is always obeyed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from shared_backbones.precision import PrecisionPolicy

#: labels equal in bf16 and fp32 on the trained phantom model (``bf16_label_agreement`` of the benchmark; measured
#: 2026-12-07 on a Zen 4 CPU with avx512_bf16: unet3d, 8 base channels, 6 x 15 AdamW steps on 8 phantoms, organ Dice
#: 0.95-0.97 on the 3 test phantoms; 4 of 138240 voxels (4 of ~9200 foreground voxels) changed label)
BF16_LABEL_AGREEMENT = 0.99997
#: the least agreement for which auto chooses bf16 on the CPU
MIN_LABEL_AGREEMENT = 0.999
#: the fewest network passes (windows x mirror passes) of a first case for which auto tries bf16 at all
MIN_PASSES_FOR_BF16 = 16


def auto_policy(device: torch.device, agreement: float = BF16_LABEL_AGREEMENT) -> PrecisionPolicy:
    """The policy ``--precision auto`` gives medseg's volume inference on ``device`` (see the module docstring)."""
    if device.type != "cpu":
        return PrecisionPolicy.resolve("auto", device)
    if agreement < MIN_LABEL_AGREEMENT:
        return PrecisionPolicy("fp32", "cpu", f"fp32 (bf16 changed {100 * (1 - agreement):.2f}% of a trained model's "
                                              f"labels, more than {100 * (1 - MIN_LABEL_AGREEMENT):.1f}%)")
    return PrecisionPolicy.resolve("auto", device, cpu_bf16=True)


def check_on_window(model: Any, forward: Callable[[torch.Tensor], torch.Tensor], window: torch.Tensor, *,
                    regions: bool = False, passes: int = MIN_PASSES_FOR_BF16) -> None:
    """Once per model whose ``--precision auto`` chose bf16 on the CPU (``model.bf16_to_check``): ``forward``
    (scores ``[B, K, ...]``) on ``window`` in fp32 and under the model's bf16 autocast; the model keeps bf16 only
    when at least :data:`MIN_LABEL_AGREEMENT` of the window's labels (argmax; per region ``score > 0``) agree,
    else its policy becomes fp32. Either way the policy's ``reason`` gives the measured agreement. A first case of
    fewer than :data:`MIN_PASSES_FOR_BF16` network passes (``passes``: windows x mirror passes) runs fp32 without
    the check: the two test passes and bf16's warm-up would cost more than bf16 saves there."""
    if not getattr(model, "bf16_to_check", False):
        return
    model.bf16_to_check = False
    if passes < MIN_PASSES_FOR_BF16:
        noun = "pass" if passes == 1 else "passes"
        model.policy = PrecisionPolicy("fp32", "cpu", f"fp32 (the first case needs {passes} network {noun}, too few "
                                                      "for bf16 to pay off)")
        return
    policy = model.policy
    with torch.inference_mode():
        ref = forward(window).float()
        with policy.autocast():
            low = forward(window).float()
    same = ((ref > 0) == (low > 0)).all(1) if regions else ref.argmax(1) == low.argmax(1)
    agree = float(same.float().mean())
    if agree < MIN_LABEL_AGREEMENT:
        limit = 100 * (1 - MIN_LABEL_AGREEMENT)
        model.policy = PrecisionPolicy("fp32", "cpu", f"fp32 (bf16 changed {100 * (1 - agree):.2f}% of the labels of "
                                                      f"a test window, more than {limit:.1f}%)")
    else:
        model.policy = dataclasses.replace(policy, reason=f"{policy.reason}; a test window's labels "
                                                          f"{100 * agree:.2f}% as in fp32")
