"""Temporal segmentation models for colonoscopy phases: ColonTCN and MS-TCN on the shared TCN blocks.

- ColonTCN: C. Biffi, G. Roffo, P. Salvagnini, A. Cherubini, "A Temporal Convolutional Network-Based Approach and a
  Benchmark Dataset for Colonoscopy Video Temporal Segmentation", 2025, https://arxiv.org/abs/2502.03430
  (REAL-Colon annotations: 60 procedures, 9 classes; 4-fold leave-one-study-out and 5-fold protocols).
- MS-TCN: Y. Abu Farha, J. Gall, "MS-TCN: Multi-Stage Temporal Convolutional Network for Action Segmentation",
  CVPR 2019, https://arxiv.org/abs/1903.01945 (reference code: https://github.com/yabufarha/ms-tcn).

ColonTCN: per-frame features -> Conv1d(D -> 64, k=1) + ReLU -> N temporal blocks of
64 channels (block i: two weight-normed Conv1d k=7, dilation 2^i, symmetric padding, ReLU + Dropout, residual) ->
Conv1d 1x1 to the classes. N=12 gives 822,921 parameters at D=2048 and 9 classes; N=13 gives 880,521.
MS-TCN (Farha & Gall, CVPR 2019): stages of 10 dilated residual layers (k=3, dilation 2^i, 64 channels); each later
stage refines the softmax of the previous one. ``causal=True`` pads on the left only, so frame t never sees the future.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_backbones.blocks import DilatedResidualLayer
from shared_backbones.registry import register_model
from shared_backbones.reversible import ReversibleBlock, ReversibleSequence

TASK = "phases"
COLON_CLASSES = ["outside", "insertion", "cecum", "ileum", "ascending", "transverse", "descending", "sigmoid", "rectum"]


class ColonTCN(nn.Module):
    """ColonTCN (Biffi et al. 2025, "A Temporal Convolutional Network-Based Approach and a Benchmark Dataset for
    Colonoscopy Video Temporal Segmentation", https://arxiv.org/abs/2502.03430).

    Args: in_features <D>, num_classes, channels (64), num_blocks <N>, kernel_size (7), dropout (0.5), causal,
    reversible (blocks become additive couplings of two half-width bodies: memory flat in N)."""

    def __init__(
        self,
        in_features: int = 2048,
        num_classes: int = 9,
        channels: int = 64,
        num_blocks: int = 12,
        kernel_size: int = 7,
        dropout: float = 0.5,
        causal: bool = False,
        reversible: bool = False,
    ) -> None:
        super().__init__()
        self.input = nn.Conv1d(in_features, channels, 1)
        self.reversible = reversible
        if reversible:
            def body(i):
                return DilatedResidualLayer(
                            channels // 2,
                            kernel_size,
                            2**i,
                            dropout,
                            causal,  # noqa: E731
                            weight_norm=True,
                            n_convs=2,
                            pointwise=False,
                            residual=False,
                        )
            self.blocks = ReversibleSequence([ReversibleBlock(body(i), body(i)) for i in range(num_blocks)])
        else:
            self.blocks = nn.ModuleList(
                DilatedResidualLayer(
                    channels, kernel_size, 2**i, dropout, causal, weight_norm=True, n_convs=2, pointwise=False
                )
                for i in range(num_blocks)
            )
        self.head = nn.Conv1d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[N, D, T] (and an optional [N, 1, T] mask of valid frames) -> logits [N, C, T]."""
        h = F.relu(self.input(x))
        if self.reversible:
            h = self.blocks(h)
        else:
            for blk in self.blocks:
                h = blk(h, mask)
        out = self.head(h)
        return out * mask if mask is not None else out


class SingleStage(nn.Module):
    """One MS-TCN stage: 1x1 in -> L dilated residual layers -> 1x1 out."""

    def __init__(
        self, in_dim: int, num_classes: int, channels: int, num_layers: int, dropout: float, causal: bool
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(in_dim, channels, 1)
        self.layers = nn.ModuleList(DilatedResidualLayer(channels, 3, 2**i, dropout, causal) for i in range(num_layers))
        self.conv_out = nn.Conv1d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(x)
        for layer in self.layers:
            h = layer(h, mask)
        out = self.conv_out(h)
        return out * mask if mask is not None else out


class MSTCN(nn.Module):
    """MS-TCN (Abu Farha & Gall, "MS-TCN: Multi-Stage Temporal Convolutional Network for Action Segmentation",
    CVPR 2019, https://arxiv.org/abs/1903.01945).

    Args: in_features <D>, num_classes, num_stages (4), num_layers per stage (10), channels (64), dropout (0.5),
    causal. ``forward`` returns the stages' logits stacked [S, N, C, T] (the last is the prediction)."""

    def __init__(
        self,
        in_features: int = 2048,
        num_classes: int = 9,
        num_stages: int = 4,
        num_layers: int = 10,
        channels: int = 64,
        dropout: float = 0.5,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [SingleStage(in_features, num_classes, channels, num_layers, dropout, causal)]
            + [
                SingleStage(num_classes, num_classes, channels, num_layers, dropout, causal)
                for _ in range(num_stages - 1)
            ]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        outs = [self.stages[0](x, mask)]
        for stage in self.stages[1:]:
            p = F.softmax(outs[-1], dim=1)
            outs.append(stage(p * mask if mask is not None else p, mask))
        return torch.stack(outs)


def final_logits(output: torch.Tensor) -> torch.Tensor:
    """The prediction of either model: the last stage of an MS-TCN, or ColonTCN's logits."""
    return output[-1] if output.ndim == 4 else output


def mstcn_loss(
    outputs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    smooth: float = 0.15,
) -> torch.Tensor:
    """Sum over stages of CE + ``smooth`` * mean(clamp(MSE(log_softmax(p_t), log_softmax(p_{t-1}).detach()), max=16)).

    ``outputs`` [S, N, C, T] (or [N, C, T] for a single-stage model), ``target`` [N, T] with ``ignore_index`` for
    unlabeled or padded frames; the smoothing term is averaged over valid neighbouring frame pairs."""
    if outputs.ndim == 3:
        outputs = outputs[None]
    valid = target != ignore_index
    if mask is not None:
        valid = valid & mask[:, 0].bool()
    pair = (valid[:, 1:] & valid[:, :-1]).unsqueeze(1).float()
    total = outputs.new_zeros(())
    for p in outputs:
        total = total + F.cross_entropy(
            p, target.masked_fill(~valid, ignore_index), weight=weight, ignore_index=ignore_index
        )
        lsm = F.log_softmax(p, dim=1)
        mse = torch.clamp((lsm[:, :, 1:] - lsm.detach()[:, :, :-1]) ** 2, min=0, max=16)
        total = total + smooth * (mse * pair).sum() / (pair.sum() * p.shape[1]).clamp_min(1)
    return total


@register_model("colontcn", task=TASK)
def colontcn(**kwargs) -> ColonTCN:
    """ColonTCN (N=12 blocks by default: the 4-fold configuration; pass num_blocks=13 for the 5-fold one)."""
    return ColonTCN(**kwargs)


@register_model("mstcn", task=TASK)
def mstcn(**kwargs) -> MSTCN:
    """MS-TCN: 4 stages x 10 dilated residual layers, 64 channels."""
    return MSTCN(**kwargs)
