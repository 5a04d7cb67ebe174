"""Conv-TasNet (Luo & Mesgarani, "Conv-TasNet: Surpassing Ideal Time-Frequency Magnitude Masking for Speech
Separation", IEEE/ACM TASLP 2019) on the suite's shared TCN blocks.

The state_dict is key-for-key compatible with ``torchaudio.models.ConvTasNet``: ``encoder.weight``,
``mask_generator.{input_norm, input_conv, conv_layers.{i}.{conv_layers.0..5, res_out, skip_out}, output_prelu,
output_conv}``, ``decoder.weight``. A reversible variant (``reversible=True``) replaces the skip-connected TCN stack by
additive-coupling blocks whose f and g are the same TCN blocks on half the channels, so training memory no longer
grows with the number of blocks; it is a different network (its own weights), not a drop-in for torchaudio files.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_backbones.blocks import TCNBlock, TCNResidualBody, get_norm
from shared_backbones.blocks.norms import ChannelLayerNorm
from shared_backbones.registry import register_model
from shared_backbones.reversible import ReversibleBlock, ReversibleSequence

TASK = "audiosep"
NORMS = ("gln", "cln", "chanln")


def _norm(name: str, channels: int) -> nn.Module:
    if name not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {name!r}")
    return ChannelLayerNorm(channels) if name == "chanln" else get_norm(name, 1, channels)


class MaskGenerator(nn.Module):
    """TCN separator: norm -> 1x1 <N -> B> -> R repeats of X dilated blocks -> PReLU -> 1x1 <B -> S*N> -> mask."""

    def __init__(
        self,
        input_dim: int,
        num_sources: int,
        kernel_size: int,
        num_feats: int,
        num_hidden: int,
        num_layers: int,
        num_stacks: int,
        msk_activate: str,
        norm: str,
        causal: bool,
        reversible: bool,
        num_skip: int | None = None,
    ) -> None:
        super().__init__()
        self.input_dim, self.num_sources = input_dim, num_sources
        self.input_norm = _norm(norm, input_dim)
        block_norm = "gln" if norm == "chanln" else norm  # chanln is swapped in below
        self.input_conv = nn.Conv1d(input_dim, num_feats, 1)
        self.reversible = reversible
        if reversible:
            half, hid = num_feats // 2, num_hidden // 2
            body = lambda d: TCNResidualBody(half, hid, kernel_size, d, block_norm, causal)  # noqa: E731
            self.conv_layers = ReversibleSequence(
                [ReversibleBlock(body(2**j), body(2**j)) for _ in range(num_stacks) for j in range(num_layers)]
            )
        else:
            self.conv_layers = nn.ModuleList(
                TCNBlock(
                    num_feats,
                    num_hidden,
                    kernel_size,
                    2**j,
                    block_norm,
                    causal,
                    no_residual=(s == num_stacks - 1 and j == num_layers - 1),
                    skip_channels=num_skip,
                )
                for s in range(num_stacks)
                for j in range(num_layers)
            )
        if norm == "chanln":
            for block in self.conv_layers.modules():
                if isinstance(block, TCNBlock):
                    block.conv_layers[2] = ChannelLayerNorm(num_hidden // 2 if reversible else num_hidden)
                    block.conv_layers[5] = ChannelLayerNorm(num_hidden // 2 if reversible else num_hidden)
        self.output_prelu = nn.PReLU()
        out_in = num_feats if reversible or num_skip is None else num_skip
        self.output_conv = nn.Conv1d(out_in, input_dim * num_sources, 1)
        if msk_activate not in ("sigmoid", "relu"):
            raise ValueError(f"mask activation must be sigmoid or relu, got {msk_activate!r}")
        self.activate = torch.sigmoid if msk_activate == "sigmoid" else F.relu

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.input_conv(self.input_norm(feats))
        if self.reversible:
            out = self.conv_layers(x)
        else:
            out = torch.zeros((), dtype=x.dtype, device=x.device)
            for layer in self.conv_layers:
                res, skip = layer(x)
                if res is not None:
                    x = x + res
                out = out + skip
        masks = self.activate(self.output_conv(self.output_prelu(out)))
        return masks.view(feats.shape[0], self.num_sources, self.input_dim, -1)


class ConvTasNet(nn.Module):
    """Conv-TasNet: learned encoder <N filters of length L, hop L/2> -> TCN masks -> transposed-conv decoder.

    Args:
        num_sources: number of separated sources <C>.
        enc_kernel_size: encoder filter length <L> (samples).
        enc_num_feats: number of encoder filters <N>.
        msk_kernel_size: depthwise kernel size <P>.
        msk_num_feats: bottleneck / residual channels <B>.
        msk_num_hidden_feats: channels inside each block <H>.
        msk_num_skip_feats: skip-connection channels <Sc> (None: <Sc> = <B>, torchaudio's layout).
        msk_num_layers: blocks per repeat <X> (dilations 1 .. 2^(X-1)).
        msk_num_stacks: repeats <R>.
        msk_activate: mask non-linearity, "sigmoid" or "relu".
        norm: "gln" (global layer norm, non-causal), "cln" (cumulative layer norm, causal; the paper's cLN and
            Asteroid's ``cgLN``) or "chanln" (per-frame channel-wise layer norm, causal; Asteroid's ``cLN``).
        causal: left-only padding so an output sample never depends on later input.
        reversible: reversible TCN stack (memory flat in depth; see the module docstring).
        encoder_padding: True (torchaudio): the signal is right-padded to a multiple of the hop and the encoder /
            decoder pad one hop on each side; False (Asteroid): no padding, the trailing partial frame is dropped and
            the decoded signal is zero-padded to the input length.
    """

    def __init__(
        self,
        num_sources: int = 2,
        enc_kernel_size: int = 16,
        enc_num_feats: int = 512,
        msk_kernel_size: int = 3,
        msk_num_feats: int = 128,
        msk_num_hidden_feats: int = 512,
        msk_num_layers: int = 8,
        msk_num_stacks: int = 3,
        msk_activate: str = "sigmoid",
        norm: str = "gln",
        causal: bool = False,
        reversible: bool = False,
        msk_num_skip_feats: int | None = None,
        encoder_padding: bool = True,
    ) -> None:
        super().__init__()
        if enc_kernel_size % 2:
            raise ValueError("enc_kernel_size <L> must be even (hop = L/2)")
        self.num_sources = num_sources
        self.enc_kernel_size, self.enc_num_feats = enc_kernel_size, enc_num_feats
        self.enc_stride = enc_kernel_size // 2
        self.encoder_padding = encoder_padding
        pad = self.enc_stride if encoder_padding else 0
        self.encoder = nn.Conv1d(1, enc_num_feats, enc_kernel_size, stride=self.enc_stride, padding=pad, bias=False)
        self.mask_generator = MaskGenerator(
            enc_num_feats,
            num_sources,
            msk_kernel_size,
            msk_num_feats,
            msk_num_hidden_feats,
            msk_num_layers,
            msk_num_stacks,
            msk_activate,
            norm,
            causal,
            reversible,
            msk_num_skip_feats,
        )
        self.decoder = nn.ConvTranspose1d(
            enc_num_feats, 1, enc_kernel_size, stride=self.enc_stride, padding=pad, bias=False
        )

    def _pad_to_stride(self, x: torch.Tensor) -> torch.Tensor:
        """Right-pad so the last encoder window ends on the signal (even L: T must be a multiple of the hop)."""
        return F.pad(x, (0, -x.shape[-1] % self.enc_stride))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """[batch, 1, time] -> [batch, num_sources, time]."""
        if waveform.ndim != 3 or waveform.shape[1] != 1:
            raise ValueError(f"expected [batch, 1, time], got {tuple(waveform.shape)}")
        length = waveform.shape[-1]
        x = self._pad_to_stride(waveform) if self.encoder_padding else waveform
        if x.shape[-1] < self.enc_kernel_size:  # unpadded framing: at least one whole encoder frame
            x = F.pad(x, (0, self.enc_kernel_size - x.shape[-1]))
        feats = self.encoder(x)
        masked = self.mask_generator(feats) * feats.unsqueeze(1)
        out = self.decoder(masked.reshape(-1, self.enc_num_feats, masked.shape[-1]))
        out = out.view(waveform.shape[0], self.num_sources, -1)[..., :length]
        return F.pad(out, (0, length - out.shape[-1])) if out.shape[-1] < length else out


@register_model("convtasnet", task=TASK)
def convtasnet(**kwargs) -> ConvTasNet:
    """Conv-TasNet with any hyperparameters (defaults: the paper's best non-causal configuration)."""
    return ConvTasNet(**kwargs)


@register_model("convtasnet-base", task=TASK, msk_activate="relu")
def convtasnet_base(num_sources: int = 2, **kwargs) -> ConvTasNet:
    """Paper's best: N=512 L=16 B=128 H=512 Sc=128 P=3 X=8 R=3, gLN, non-causal, ReLU mask as torchaudio's
    ``conv_tasnet_base`` (4,984,881 parameters with 2 sources)."""
    return ConvTasNet(num_sources=num_sources, **kwargs)


@register_model("convtasnet-causal", task=TASK, norm="cln", causal=True, msk_activate="relu")
def convtasnet_causal(num_sources: int = 2, **kwargs) -> ConvTasNet:
    """Causal Conv-TasNet with cumulative layer norm, for streaming / low latency (same sizes as the base)."""
    return ConvTasNet(num_sources=num_sources, **kwargs)


@register_model(
    "convtasnet-small",
    task=TASK,
    msk_activate="relu",
    enc_num_feats=64,
    msk_num_feats=32,
    msk_num_hidden_feats=64,
    msk_num_layers=4,
    msk_num_stacks=2,
)
def convtasnet_small(num_sources: int = 2, **kwargs) -> ConvTasNet:
    """A small Conv-TasNet for CPU training and tests (N=64 B=32 H=64 X=4 R=2)."""
    return ConvTasNet(num_sources=num_sources, **kwargs)
