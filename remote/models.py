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
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_backbones.blocks import FourierBlock1d, get_norm
from shared_backbones.registry import register_model

from .indices import canonical_index, compute_indices
from .naming import DEFAULT_BANDS

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
    """Routing by agreement from ``n_in`` capsules of size ``d_in`` to ``n_out`` capsules of size ``d_out``: the
    capsule feature encoder of FFDNN, after Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NeurIPS
    2017, https://arxiv.org/abs/1710.09829.

    Predictions u_hat_{j|i} = W_ij u_i; logits b_ij = 0; for each iteration c_i = softmax_j(b_i),
    s_j = sum_i c_ij u_hat_{j|i}, v_j = squash(s_j), b_ij += u_hat_{j|i} . v_j (not after the last iteration).
    """

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int, iterations: int = 3) -> None:
        super().__init__()
        self.iterations = iterations
        self.weight = nn.Parameter(0.05 * torch.randn(n_in, n_out, d_out, d_in))

    def routing_matrices(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction weights per output capsule: (W_fwd [n_out, d_out, n_in * d_in], W_fwd transposed), so that
        ``W_fwd[j] @ x`` = sum_i W_ij x_i for inputs ``x`` [n_in * d_in, N]."""
        n_in, n_out, d_out, d_in = self.weight.shape
        w = self.weight if dtype is None else self.weight.to(dtype)
        fwd = w.permute(1, 2, 0, 3).reshape(n_out, d_out, n_in * d_in)
        return fwd, fwd.transpose(1, 2).contiguous()

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u [N, n_in, d_in] -> (v [N, n_out, d_out], coupling c [N, n_in, n_out])."""
        v, c = self.route_samples_last(u.permute(1, 2, 0).contiguous())
        return v.permute(2, 0, 1), c.permute(2, 1, 0)

    def route_samples_last(self, u: torch.Tensor, mats: tuple[torch.Tensor, torch.Tensor] | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Routing with the samples on the last axis: u [n_in, d_in, N] -> (v [n_out, d_out, N], c [n_out, n_in, N]);
        ``mats``: :meth:`routing_matrices` when the caller has them.

        The predictions u_hat (n_in x n_out vectors per sample, the largest tensor of the textbook form) are never
        built: s_j = sum_i c_ij W_ij u_i is one batched product (over j) of the W_j with the coupled inputs c_ij u_i
        (with the uniform coupling of the first iteration, a product with u itself), and the agreement
        u_hat_j|i . v_j = u_i . (W_ij^T v_j) one batched product of the transposed W_j with v. With the samples
        last every elementwise step runs over long contiguous rows. Same values as the textbook form up to float
        rounding (tests compare them)."""
        n_in, d_in, n = u.shape
        n_out = self.weight.shape[1]
        fwd, bwd = self.routing_matrices(u.dtype) if mats is None else mats
        uj = u.unsqueeze(0)                                           # [1, n_in, d_in, N]
        # first iteration: b = 0, so c_ij = 1 / n_out and s_j = sum_i W_ij u_i / n_out
        s = torch.matmul(fwd, u.reshape(1, n_in * d_in, n)) / n_out   # [n_out, d_out, N]
        # in-place buffers only without autograd and outside autocast (out= tensors are not cast by autocast)
        inplace = not (torch.is_grad_enabled() and (u.requires_grad or fwd.requires_grad)) and not (
            torch.is_autocast_enabled(u.device.type))
        tmp = u.new_empty(n_out, n_in, d_in, n) if inplace else None  # one buffer for c_ij u_i and W_ij^T v_j
        c = b = None
        for r in range(self.iterations):
            if r:
                e = (b - b.amax(0, keepdim=True)).exp()               # softmax over the output capsules
                c = e.div_(e.sum(0, keepdim=True)) if inplace else e / e.sum(0, keepdim=True)   # [n_out, n_in, N]
                cu = torch.mul(c.unsqueeze(2), uj, out=tmp) if inplace else c.unsqueeze(2) * uj
                s = torch.bmm(fwd, cu.view(n_out, n_in * d_in, n))
            v = squash(s, dim=1)                                      # [n_out, d_out, N]
            if r < self.iterations - 1:
                if inplace:                                           # W_ij^T v_j, then u_hat_j|i . v_j
                    agree = torch.bmm(bwd, v, out=tmp.view(n_out, n_in * d_in, n)).view_as(tmp).mul_(uj).sum(2)
                    b = agree if b is None else b.add_(agree)
                else:
                    agree = (torch.bmm(bwd, v).view(n_out, n_in, d_in, n) * uj).sum(2)
                    b = agree if b is None else b + agree
        if c is None:
            c = u.new_full((n_out, n_in, n), 1.0 / n_out)
        return v, c


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

    Shi et al., "A fast Fourier convolutional deep neural network for accurate and explainable discrimination of
    wheat yellow rust and nitrogen deficiency from Sentinel-2 time series data", Frontiers in Plant Science 14,
    2023, https://doi.org/10.3389/fpls.2023.1250844 (preprint https://arxiv.org/abs/2306.17207). The capsule
    encoder routes as in Sabour et al. 2017 (:class:`DynamicRouting`).

    Inference (eval mode, dates x channels <= ``FLAT_MAX_WIDTH``) runs a fused path with the same values up to
    float rounding, in chunks of ``FLAT_CHUNK`` samples with the samples on the last axis: the indices computed on
    contiguous rows, the filter's batch norm folded into the stem, each Fourier block (depthwise mixing, pointwise
    local branch) as one C x C product plus one batched T x T product per channel (the spectral convolution over a
    short fixed T is an exact real matrix) and the per-sample layer norm, the primary conv and temporal pooling as
    one matrix, the routing without the u_hat tensor. Other block settings run each block as one dense time-major
    matrix product (:meth:`FourierBlock1d.time_major`).

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
        self._flat_cache: dict = {}

    #: inference runs the temporal blocks as one time-major matrix product each (``FourierBlock1d.time_major``)
    #: while dates x channels is at most this; above it (long series) the per-branch forward is cheaper
    FLAT_MAX_WIDTH = 512

    def _route(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Primary features [N, types * dim, positions] -> (class capsules [N, K, class_dim], coupling)."""
        n = p.shape[0]
        u = p.view(n, self.primary_types, self.primary_dim, self.primary_positions).permute(0, 1, 3, 2)
        u = squash(u.reshape(n, -1, self.primary_dim))   # primary capsules [N, types * positions, dim]
        return self.routing(u)

    # -- fast inference path: everything before the routing as a few dense matrix products ------------------------
    def _flat_ok(self, t: int) -> bool:
        return (not self.training and t * self.stem.out_channels <= self.FLAT_MAX_WIDTH
                and all(isinstance(b, FourierBlock1d) and b.supports_time_major() for b in self.blocks))

    def _stamp(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in (*self.parameters(), *self.buffers()))

    def _cache_hit(self, key: tuple) -> tuple | None:
        """The cached (stamp, weights) of ``key`` while gradients are off and no parameter or buffer has changed."""
        if torch.is_grad_enabled():
            return None
        hit = self._flat_cache.get(key)
        return hit if hit is not None and hit[0] == self._stamp() else None

    def _stem_weights(self, dtype: torch.dtype, fold_filter: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's 1x1 conv as (weight [C, F], bias), with the filter's eval batch norm folded in when
        ``fold_filter`` (y = x * scale + shift per trait)."""
        w, b = self.stem.weight[:, :, 0].to(dtype), self.stem.bias.to(dtype)
        if fold_filter:
            bn = self.filter.norm
            scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).to(dtype)
            shift = bn.bias.to(dtype) - bn.running_mean.to(dtype) * scale
            w, b = w * scale, b + w @ shift
        return w, b

    def _flat_weights(self, t: int, dtype: torch.dtype, fold_filter: bool) -> dict[str, Any]:
        """Stem (with the filter's batch norm folded in when ``fold_filter``), per-block time-major matrices and the
        primary conv + temporal pooling as one matrix whose columns come out in capsule order (type, position, dim).
        Cached while gradients are off and no parameter or buffer has changed."""
        key = (t, dtype, fold_filter)
        hit = self._cache_hit(key)
        if hit is not None:
            return hit[1]
        w, b = self._stem_weights(dtype, fold_filter)
        blocks = [blk.linear_map(t, dtype) for blk in self.blocks]
        c = self.stem.out_channels
        dev = self.stem.weight.device
        eye = torch.eye(c * t, dtype=dtype, device=dev).view(c * t, t, c).transpose(1, 2)
        probe = torch.cat([eye, eye.new_zeros(1, c, t)])               # unit impulses, then zeros (the bias)
        resp = F.conv1d(probe, self.primary.weight.to(dtype), self.primary.bias.to(dtype), padding=self.primary.padding)
        resp = resp @ _pool_matrix(t, self.primary_positions, dtype, dev)       # [T*C + 1, types * dim, positions]
        resp = resp.view(-1, self.primary_types, self.primary_dim, self.primary_positions).permute(0, 1, 3, 2)
        resp = resp.reshape(c * t + 1, -1)
        out = {"stem": (w, b), "blocks": blocks, "primary": (resp[:-1] - resp[-1], resp[-1]),
               "routing": self.routing.routing_matrices(dtype)}
        if not torch.is_grad_enabled():
            self._flat_cache[key] = (self._stamp(), out)
        return out

    #: samples per chunk of the fast path: the routing's working set (about 2 kB a sample) stays in the CPU cache
    FLAT_CHUNK = 512

    def _samples_last_ok(self) -> bool:
        """Depthwise spectral mixing and a pointwise local branch: each block runs as one C x C product and one
        batched T x T product per channel with the samples on the last axis (far fewer operations than the dense
        (T * C)^2 time-major matrix)."""
        return all(b.spectral.mixing == "depthwise" and b.local.kernel_size == (1,) for b in self.blocks)

    def _sl_weights(self, t: int, dtype: torch.dtype, fold_filter: bool) -> dict[str, Any]:
        """Weights of the samples-last path (cached like :meth:`_flat_weights`): stem (filter's batch norm folded
        in when ``fold_filter``), per block (local C x C, spectral kernels [C, T, T] as out x in, bias, norm
        affine), the primary conv + pooling as one [capsules * dim, C * T] matrix (channel-major inputs), routing."""
        key = ("sl", t, dtype, fold_filter)
        hit = self._cache_hit(key)
        if hit is not None:
            return hit[1]
        w, b = self._stem_weights(dtype, fold_filter)
        blocks = []
        for blk in self.blocks:
            k = blk.spectral.kernel(t, dtype).transpose(1, 2).contiguous()          # [C, T_out, T_in]
            bias = blk.local.bias.to(dtype) if blk.local.bias is not None else None
            nw = blk.norm.weight.to(dtype) if isinstance(blk.norm, nn.GroupNorm) and blk.norm.weight is not None \
                else None
            nb = blk.norm.bias.to(dtype) if isinstance(blk.norm, nn.GroupNorm) and blk.norm.bias is not None \
                else None
            blocks.append((blk.local.weight[:, :, 0].to(dtype), k, bias, nw, nb))
        c = self.stem.out_channels
        dev = self.stem.weight.device
        eye = torch.eye(c * t, dtype=dtype, device=dev).view(c * t, c, t)            # impulses, channel-major
        probe = torch.cat([eye, eye.new_zeros(1, c, t)])
        resp = F.conv1d(probe, self.primary.weight.to(dtype), self.primary.bias.to(dtype), padding=self.primary.padding)
        resp = resp @ _pool_matrix(t, self.primary_positions, dtype, dev)
        resp = resp.view(-1, self.primary_types, self.primary_dim, self.primary_positions).permute(0, 1, 3, 2)
        resp = resp.reshape(c * t + 1, -1)
        out = {"stem": (w, b), "blocks": blocks, "primary": ((resp[:-1] - resp[-1]).t().contiguous(), resp[-1]),
               "routing": self.routing.routing_matrices(dtype)}
        if not torch.is_grad_enabled():
            self._flat_cache[key] = (self._stamp(), out)
        return out

    def _sl_traits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw traits [F, T, n] from bands [n, T, B] (the filter's :meth:`PhotochemicalFilter.traits` with the
        samples last: every index is computed on contiguous [T, n] rows)."""
        f = self.filter
        n, t, nb = x.shape
        ni = len(f.indices)
        if torch.is_grad_enabled() and x.requires_grad:       # explanations: no in-place buffers
            bands = torch.nan_to_num(x.float().permute(2, 1, 0))
            feats = [v.clamp(-f.clamp, f.clamp) for v in compute_indices(f.indices, bands, f.bands, axis=0,
                                                                          soil_slope=f.soil_slope, fill=0.0)]
            return torch.cat([torch.stack(feats), bands]) if f.include_bands else torch.stack(feats)
        out = x.new_empty(ni + nb, t, n, dtype=torch.float32)   # indices, then the bands
        bands = out[ni:]
        bands.copy_(x.permute(2, 1, 0))
        torch.nan_to_num_(bands)
        for i, v in enumerate(compute_indices(f.indices, bands, f.bands, axis=0, soil_slope=f.soil_slope, fill=0.0)):
            torch.clamp(v, -f.clamp, f.clamp, out=out[i])
        return out if f.include_bands else out[:ni]

    def _sl_chunk(self, tr: torch.Tensor, wts: dict[str, Any]) -> torch.Tensor:
        """Traits [F, T, n] -> class capsules [K, class_dim, n]."""
        nf, t, n = tr.shape
        w, b = wts["stem"]
        h = torch.addmm(b[:, None], w, tr.reshape(nf, t * n))                     # [C, T * n]
        c = h.shape[0]
        for blk, (wl, k, bias, nw, nb) in zip(self.blocks, wts["blocks"]):
            z = torch.mm(wl, h) if bias is None else torch.addmm(bias[:, None], wl, h)
            z = torch.baddbmm(z.view(c, t, n), k, h.view(c, t, n))              # spectral + local branch
            if nw is not None or isinstance(blk.norm, nn.GroupNorm):
                # layer norm over (C, T) of each sample: batch norm (batch statistics) with the samples as channels
                z = F.batch_norm(z.view(c * t, n), None, None, training=True, eps=blk.norm.eps).view(c, t, n)
                if nw is not None:
                    z = torch.addcmul(nb[:, None, None], z, nw[:, None, None]) if nb is not None else \
                        z * nw[:, None, None]
            h = h + blk.drop(blk.act(z)).view(c, t * n)
        m, bias = wts["primary"]
        u = torch.addmm(bias[:, None], m, h.view(c * t, n)).view(-1, self.primary_dim, n)
        return self.routing.route_samples_last(squash(u, dim=1), wts["routing"])[0]

    def _sl_capsules(self, x: torch.Tensor | None, traits: torch.Tensor | None = None) -> torch.Tensor:
        """Class capsules [K, class_dim, N] from bands [N, T, B] (filter fused) or normalised traits [N, F, T]."""
        fold = x is not None
        src = x if fold else traits
        n = src.shape[0]
        t = src.shape[1] if fold else src.shape[2]
        wts = self._sl_weights(t, torch.float32 if fold else src.dtype, fold)
        step = self.FLAT_CHUNK
        parts = []
        for s in range(0, n, step):
            tr = self._sl_traits(x[s:s + step]) if fold else traits[s:s + step].permute(1, 2, 0)
            parts.append(self._sl_chunk(tr, wts))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _flat_capsules(self, traits: torch.Tensor, fold_filter: bool) -> torch.Tensor:
        """Traits [N, F, T] (raw when ``fold_filter``, else normalised) -> class capsules [K, class_dim, N]
        (samples last)."""
        n, _, t = traits.shape
        wts = self._flat_weights(t, traits.dtype, fold_filter)
        traits_tf = traits.transpose(1, 2).contiguous()                       # [N, T, F]
        step = self.FLAT_CHUNK
        if n <= step:
            return self._flat_chunk(traits_tf, wts)
        return torch.cat([self._flat_chunk(traits_tf[s:s + step], wts) for s in range(0, n, step)], dim=-1)

    def _flat_chunk(self, traits_tf: torch.Tensor, wts: dict[str, Any]) -> torch.Tensor:
        n, t, f = traits_tf.shape
        h = F.linear(traits_tf.view(n * t, f), *wts["stem"]).view(n, -1)      # [N, T * C], time-major
        for blk, (m, bias) in zip(self.blocks, wts["blocks"]):
            h = blk.time_major(h, t, m, bias)
        m, bias = wts["primary"]
        u = torch.addmm(bias[:, None], m.t(), h.t()).view(-1, self.primary_dim, n)   # [capsules, dim, N]
        return self.routing.route_samples_last(squash(u, dim=1), wts["routing"])[0]

    def _flat_input(self, x: torch.Tensor) -> bool:
        return x.dim() == 3 and x.shape[-1] == len(self.bands) and self._flat_ok(x.shape[1]) \
            and self.filter.norm.running_mean is not None

    def _fast(self, x: torch.Tensor) -> torch.Tensor | None:
        """Class capsules [K, class_dim, N] by the fastest exact inference path, None where none applies."""
        if not self._flat_input(x):
            return None
        if self._samples_last_ok():
            return self._sl_capsules(x)
        return self._flat_capsules(self.filter.traits(x), fold_filter=True)

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """Class capsules [N, K, class_dim]."""
        v = self._fast(x)
        if v is not None:
            return v.permute(2, 0, 1)
        return self._route(self.features(x))[0]

    @staticmethod
    def _lengths(v: torch.Tensor) -> torch.Tensor:
        """Capsule lengths [N, K] from samples-last capsules [K, dim, N]."""
        return (v * v).sum(1).sqrt().t()

    def scores_from_traits(self, traits: torch.Tensor) -> torch.Tensor:
        if self._flat_ok(traits.shape[-1]):
            if self._samples_last_ok():
                return self._lengths(self._sl_capsules(None, traits))
            return self._lengths(self._flat_capsules(traits, fold_filter=False))
        return self._route(self.features_from_traits(traits))[0].norm(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class-capsule lengths [N, K] (class scores in [0, 1))."""
        v = self._fast(x)
        if v is not None:
            return self._lengths(v)
        return self._route(self.features(x))[0].norm(dim=-1)


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
