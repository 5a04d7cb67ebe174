"""Crop-stress models for Sentinel-2 time series (registered with task ``remote``).

* ``ffdnn`` — FFDNN (wheat yellow rust vs nitrogen deficiency): a photochemical index filter turns the band time
  series into index traits (TCARI/OSAVI for chlorophyll, WDVI for LAI, NDVI, NDRE, PSRI, optionally the raw bands),
  1-D fast Fourier convolution blocks mix them over time (rfft -> learnable per-mode weights -> irfft, plus a local
  branch), a capsule encoder (primary vector capsules, dynamic routing by agreement, 3 iterations) ends in one
  capsule per class whose length is the class score. Trained with the margin loss. Input [N, T, bands].
* ``cnn1d`` — the same network with plain k-tap convolution blocks of the same depth instead of the Fourier blocks,
  and a linear classifier instead of the capsules: the baseline of the parameter/throughput comparison.
* ``unet2d`` — segmentation-models-pytorch U-Net (``encoder_weights=None``) whose input channels are dates x bands
  stacked: per-pixel maps from image context. Input [N, T * bands, H, W] (normalised), output logits.

Every model has ``input_kind`` ("pixel" or "spatial") and ``output_kind`` ("capsule": class-capsule lengths in
[0, 1); "logits"); :func:`class_probabilities` turns either into probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_backbones.blocks import FourierBlock1d, get_norm
from shared_backbones.registry import register_model

from .indices import canonical_index, compute_indices
from .io import DEFAULT_BANDS

CLASSES: tuple[str, ...] = ("healthy", "yellow_rust", "nitrogen_deficiency")
DEFAULT_INDICES: tuple[str, ...] = ("TCARI/OSAVI", "WDVI", "NDVI", "NDRE", "PSRI")


class PhotochemicalFilter(nn.Module):
    """Band time series [N, T, B] (reflectance) -> traits [N, F, T]: the chosen indices (zero where a ratio is
    undefined, clamped to +-``clamp``), then the raw bands if ``include_bands``; batch-normalised per trait."""

    def __init__(self, bands: Sequence[str] = DEFAULT_BANDS, indices: Sequence[str] = DEFAULT_INDICES,
                 include_bands: bool = True, soil_slope: float = 1.0, clamp: float = 10.0) -> None:
        super().__init__()
        self.bands = list(bands)
        self.indices = [canonical_index(i) for i in indices]
        self.include_bands, self.soil_slope, self.clamp = include_bands, soil_slope, clamp
        self.out_features = len(self.indices) + (len(self.bands) if include_bands else 0)
        if self.out_features == 0:
            raise ValueError("the photochemical filter needs at least one index or the raw bands")
        self.norm = nn.BatchNorm1d(self.out_features)

    def traits(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised traits [N, F, T]."""
        x = torch.nan_to_num(x.float()).transpose(1, 2).contiguous()  # [N, B, T]: each band a contiguous row
        feats = [f.clamp(-self.clamp, self.clamp)
                 for f in compute_indices(self.indices, x, self.bands, axis=1, soil_slope=self.soil_slope, fill=0.0)]
        out = torch.stack(feats, dim=1)
        return torch.cat([out, x], dim=1) if self.include_bands else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.traits(x))


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Capsule non-linearity: ``|s|^2 / (1 + |s|^2) * s / |s|`` (length in [0, 1), direction kept)."""
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1.0 + n2) * s / torch.sqrt(n2 + eps)


class DynamicRouting(nn.Module):
    """Routing by agreement from ``n_in`` capsules of size ``d_in`` to ``n_out`` capsules of size ``d_out``.

    Predictions u_hat_{j|i} = W_ij u_i; logits b_ij = 0; for each iteration c_i = softmax_j(b_i),
    s_j = sum_i c_ij u_hat_{j|i}, v_j = squash(s_j), b_ij += u_hat_{j|i} . v_j (not after the last iteration).
    """

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int, iterations: int = 3) -> None:
        super().__init__()
        self.iterations = iterations
        self.weight = nn.Parameter(0.05 * torch.randn(n_in, n_out, d_out, d_in))

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u [N, n_in, d_in] -> (v [N, n_out, d_out], coupling c [N, n_in, n_out])."""
        n, n_in, _ = u.shape
        n_out, d_out = self.weight.shape[1], self.weight.shape[2]
        # predictions u_hat [N, n_out, n_in, d_out]: one matmul per input capsule
        u_hat = torch.bmm(u.transpose(0, 1), self.weight.flatten(1, 2).transpose(1, 2))   # [n_in, N, n_out * d_out]
        u_hat = u_hat.view(n_in, n, n_out, d_out).permute(1, 2, 0, 3).contiguous()
        b = u_hat.new_zeros(n, n_out, n_in)
        for r in range(self.iterations):
            e = (b - b.amax(1, keepdim=True)).exp()  # softmax over the output capsules, written out (faster)
            c = e / e.sum(1, keepdim=True)
            v = squash(torch.matmul(c.unsqueeze(2), u_hat).squeeze(2))          # s_j = sum_i c_ij u_hat_j|i
            if r < self.iterations - 1:
                b = b + torch.matmul(u_hat, v.unsqueeze(-1)).squeeze(-1)      # agreement u_hat_j|i . v_j
        return v, c.transpose(1, 2)


def margin_loss(lengths: torch.Tensor, target: torch.Tensor, m_pos: float = 0.9, m_neg: float = 0.1,
                lam: float = 0.5, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Capsule margin loss: T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2, summed over classes and
    averaged over samples (optionally weighted per target class)."""
    t = F.one_hot(target, lengths.shape[1]).to(lengths.dtype)
    per = (t * F.relu(m_pos - lengths) ** 2 + lam * (1 - t) * F.relu(lengths - m_neg) ** 2).sum(1)
    if weight is not None:
        w = weight.to(per.dtype)[target]
        return (per * w).sum() / w.sum()
    return per.mean()


def _pool_matrix(t: int, positions: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[T, positions] matrix of adaptive average pooling (the segments of ``nn.AdaptiveAvgPool1d``)."""
    m = torch.zeros(t, positions, dtype=dtype, device=device)
    for j in range(positions):
        lo, hi = (j * t) // positions, -(-((j + 1) * t) // positions)
        m[lo:hi, j] = 1.0 / (hi - lo)
    return m


class _TemporalNet(nn.Module):
    """Filter -> 1x1 stem -> ``depth`` temporal blocks -> primary features [N, P_types * P_dim, positions]."""

    input_kind = "pixel"

    def __init__(self, blocks: nn.Module, bands: Sequence[str], indices: Sequence[str], include_bands: bool,
                 channels: int, primary_types: int, primary_dim: int, primary_positions: int,
                 soil_slope: float) -> None:
        super().__init__()
        self.bands = list(bands)
        self.filter = PhotochemicalFilter(bands, indices, include_bands, soil_slope)
        self.stem = nn.Conv1d(self.filter.out_features, channels, 1)
        self.blocks = blocks
        self.primary = nn.Conv1d(channels, primary_types * primary_dim, 3, padding=1)
        self.primary_types, self.primary_dim, self.primary_positions = primary_types, primary_dim, primary_positions

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Band time series [N, T, bands] -> primary features [N, types * dim, positions]."""
        if x.dim() != 3 or x.shape[-1] != len(self.bands):
            raise ValueError(f"expected input [N, T, {len(self.bands)}] (bands {self.bands}), got {list(x.shape)}")
        return self.features_from_traits(self.filter(x))

    def features_from_traits(self, traits: torch.Tensor) -> torch.Tensor:
        """Normalised traits [N, F, T] (the filter's output) -> primary features."""
        p = self.primary(self.blocks(self.stem(traits)))
        return p @ _pool_matrix(p.shape[-1], self.primary_positions, p.dtype, p.device)

    def scores_from_traits(self, traits: torch.Tensor) -> torch.Tensor:
        """Class scores from normalised traits (``forward`` = ``scores_from_traits(filter(x))``)."""
        raise NotImplementedError


class FFDNN(_TemporalNet):
    """FFDNN: photochemical filter -> Fourier blocks -> primary capsules -> routed class capsules.

    Args:
        bands: input bands, in the order of the last input axis.
        indices: index traits of the photochemical filter; ``include_bands`` adds the raw bands.
        num_classes: class capsules <K>.
        channels: width of the temporal blocks <C>.
        depth: number of Fourier blocks.
        n_modes: rfft modes kept per block <M>; ``mixing`` "depthwise" (one complex weight per channel and mode;
            channels are mixed by the local branch) or "full" (C x C per mode).
        kernel_size: taps of each block's local branch.
        primary_types, primary_dim, primary_positions: primary capsules = types x positions vectors of size dim
            (the time axis is pooled to ``primary_positions`` so any series length works).
        class_dim: size of the class capsules; routing_iterations: routing by agreement iterations (3).
        soil_slope: soil-line slope s of WDVI = N - s R.
    """

    output_kind = "capsule"

    def __init__(self, bands: Sequence[str] = DEFAULT_BANDS, indices: Sequence[str] = DEFAULT_INDICES,
                 include_bands: bool = True, num_classes: int = 3, channels: int = 32, depth: int = 2,
                 n_modes: int = 8, mixing: str = "depthwise", kernel_size: int = 1, primary_types: int = 8,
                 primary_dim: int = 4, primary_positions: int = 4, class_dim: int = 8, routing_iterations: int = 3,
                 soil_slope: float = 1.0, dropout: float = 0.0) -> None:
        blocks = nn.Sequential(*[FourierBlock1d(channels, n_modes, dropout, kernel_size, mixing) for _ in range(depth)])
        super().__init__(blocks, bands, indices, include_bands, channels, primary_types, primary_dim,
                         primary_positions, soil_slope)
        self.routing = DynamicRouting(primary_types * primary_positions, primary_dim, num_classes, class_dim,
                                      routing_iterations)

    def _route(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Primary features [N, types * dim, positions] -> (class capsules [N, K, class_dim], coupling)."""
        n = p.shape[0]
        u = p.view(n, self.primary_types, self.primary_dim, self.primary_positions).permute(0, 1, 3, 2)
        u = squash(u.reshape(n, -1, self.primary_dim))   # primary capsules [N, types * positions, dim]
        return self.routing(u)

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """Class capsules [N, K, class_dim]."""
        return self._route(self.features(x))[0]

    def scores_from_traits(self, traits: torch.Tensor) -> torch.Tensor:
        return self._route(self.features_from_traits(traits))[0].norm(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class-capsule lengths [N, K] (class scores in [0, 1))."""
        return self.capsules(x).norm(dim=-1)


class _ConvBlock1d(nn.Module):
    """Plain residual temporal block: x + act(norm(conv_k(x)))."""

    def __init__(self, channels: int, kernel_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm = get_norm("layer", 1, channels)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.act(self.norm(self.conv(x))))


class CNN1d(_TemporalNet):
    """Same-depth plain 1-D CNN baseline: the FFDNN with k-tap conv blocks and a linear classifier (logits).
    ``kernel_size`` 9: two blocks see 17 dates, close to the spectral branch's whole-series view."""

    output_kind = "logits"

    def __init__(self, bands: Sequence[str] = DEFAULT_BANDS, indices: Sequence[str] = DEFAULT_INDICES,
                 include_bands: bool = True, num_classes: int = 3, channels: int = 32, depth: int = 2,
                 kernel_size: int = 9, primary_types: int = 8, primary_dim: int = 4, primary_positions: int = 4,
                 soil_slope: float = 1.0, dropout: float = 0.0) -> None:
        blocks = nn.Sequential(*[_ConvBlock1d(channels, kernel_size, dropout) for _ in range(depth)])
        super().__init__(blocks, bands, indices, include_bands, channels, primary_types, primary_dim,
                         primary_positions, soil_slope)
        self.head = nn.Linear(primary_types * primary_dim * primary_positions, num_classes)

    def scores_from_traits(self, traits: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.features_from_traits(traits)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.features(x)).flatten(1))


class UNet2d(nn.Module):
    """smp U-Net over stacked dates x bands channels; ``size_divisor`` = 2**encoder_depth (tile alignment)."""

    input_kind = "spatial"
    output_kind = "logits"

    def __init__(self, in_channels: int, num_classes: int = 3, encoder_name: str = "resnet18",
                 encoder_depth: int = 5, decoder_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        decoder_channels = list(decoder_channels or [256, 128, 64, 32, 16][5 - encoder_depth:])
        self.net = smp.Unet(encoder_name=encoder_name, encoder_weights=None, encoder_depth=encoder_depth,
                            decoder_channels=decoder_channels, in_channels=in_channels, classes=num_classes)
        self.size_divisor = 2 ** encoder_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.net(x)[..., :h, :w]


def class_probabilities(scores: torch.Tensor, output_kind: str, dim: int = 1) -> torch.Tensor:
    """Probabilities from model outputs: softmax of logits, or capsule lengths normalised to sum 1."""
    if output_kind == "capsule":
        s = scores.clamp_min(0)
        return s / s.sum(dim, keepdim=True).clamp_min(1e-12)
    return scores.float().softmax(dim)


@register_model("ffdnn", task="remote")
def ffdnn(**kwargs) -> FFDNN:
    """FFDNN: photochemical index filter -> 1-D Fourier blocks -> capsules (input [N, T, bands])."""
    return FFDNN(**kwargs)


@register_model("cnn1d", task="remote")
def cnn1d(**kwargs) -> CNN1d:
    """Same-depth plain 1-D CNN baseline of FFDNN (input [N, T, bands])."""
    return CNN1d(**kwargs)


@register_model("unet2d", task="remote")
def unet2d(**kwargs) -> UNet2d:
    """smp U-Net with dates x bands input channels (input [N, T * bands, H, W])."""
    return UNet2d(**kwargs)


def date_attribution(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient x input of the predicted (or ``target``) class score, summed over bands: [N, T] per sample.
    For per-pixel models (each sample's score depends only on its own input)."""
    x = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        scores = model(x)
        target = scores.argmax(1) if target is None else target
        picked = scores.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, x)
    return (grad * x.detach()).sum(-1)


def frequency_attribution(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient x input of the predicted (or ``target``) class score with respect to the rfft coefficients of the
    photochemical filter's traits (orthonormal rfft over the time grid), summed over traits: [N, T // 2 + 1], one
    value per temporal frequency (mode k = k cycles over the season). The modes sum to the gradient x input of the
    traits in the time domain (the inverse transform is linear). Per-pixel models (``ffdnn``, ``cnn1d``) only."""
    if not hasattr(model, "scores_from_traits"):
        raise ValueError("frequency attribution needs a per-pixel model with a photochemical filter")
    with torch.no_grad():
        traits = model.filter(x.detach().float())
    t = traits.shape[-1]
    with torch.enable_grad():
        z = torch.fft.rfft(traits, dim=-1, norm="ortho").requires_grad_(True)
        scores = model.scores_from_traits(torch.fft.irfft(z, n=t, dim=-1, norm="ortho"))
        target = scores.argmax(1) if target is None else target
        (g,) = torch.autograd.grad(scores.gather(1, target[:, None]).sum(), z)
    return (z.detach().real * g.real + z.detach().imag * g.imag).sum(1)
