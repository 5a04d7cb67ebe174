"""nnU-Net v2 networks built from a ``plans.json`` ``architecture`` entry, without nnU-Net installed.

nnU-Net v2 (Isensee et al., 2021, "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation"; Isensee et al., 2024, "nnU-Net Revisited" for the residual-encoder presets ResEnc M/L/XL) writes the
network into ``plans.json`` as ``architecture.network_class_name`` plus ``arch_kwargs``. The two classes it plans,
``PlainConvUNet`` and ``ResidualEncoderUNet``, are rebuilt here with the same module tree, so a
``checkpoint_final.pth``'s ``network_weights`` load with ``strict=True`` (its duplicated keys included: each conv
block registers its layers both by name and in ``all_modules``; the decoder holds the encoder as ``decoder.encoder``).

Operators are resolved from an allow-list of names (``torch.nn.modules.conv.Conv3d`` ...); a plans file naming
anything else is refused, never imported.

Registry name ``nnunetv2``: kwargs ``network_class_name``, ``arch_kwargs`` (the plans entry), ``in_channels``,
``num_classes`` and ``n_folds`` (> 1 = the folds' networks under ``folds.<i>.``, logits averaged as nnU-Net's
ensembling does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from shared_backbones.errors import ModelFileError
from shared_backbones.registry import register_model

TASK = "medseg"

_CONV = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}
_TRANSP = {nn.Conv1d: nn.ConvTranspose1d, nn.Conv2d: nn.ConvTranspose2d, nn.Conv3d: nn.ConvTranspose3d}
_AVGPOOL = {nn.Conv1d: nn.AvgPool1d, nn.Conv2d: nn.AvgPool2d, nn.Conv3d: nn.AvgPool3d}
_NORM = {"InstanceNorm1d": nn.InstanceNorm1d, "InstanceNorm2d": nn.InstanceNorm2d,
         "InstanceNorm3d": nn.InstanceNorm3d, "BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d,
         "BatchNorm3d": nn.BatchNorm3d}
_NONLIN = {"LeakyReLU": nn.LeakyReLU, "ReLU": nn.ReLU, "ELU": nn.ELU, "GELU": nn.GELU, "PReLU": nn.PReLU,
           "SiLU": nn.SiLU}
_DROPOUT = {"Dropout": nn.Dropout, "Dropout1d": nn.Dropout1d, "Dropout2d": nn.Dropout2d, "Dropout3d": nn.Dropout3d}
CLASSES = ("PlainConvUNet", "ResidualEncoderUNet")


def _op(table: dict[str, Any], name: Any, what: str) -> Any:
    """An operator class from its dotted plans name (``torch.nn.modules.conv.Conv3d`` -> ``nn.Conv3d``)."""
    if name is None:
        return None
    short = str(name).rsplit(".", 1)[-1]
    if short not in table or not str(name).startswith(("torch.nn", "nn.")) and "." in str(name):
        raise ModelFileError(f"unsupported {what} {name!r} in plans.json (supported: {', '.join(sorted(table))})")
    return table[short]


def _per_stage(value: Any, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _tuple(v: Any, dims: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else (int(v),) * dims


class _Ops:
    """The operators and their kwargs of one network (from ``arch_kwargs``)."""

    def __init__(self, kw: dict[str, Any]) -> None:
        self.conv = _op(_CONV, kw.get("conv_op", "torch.nn.modules.conv.Conv3d"), "conv_op")
        self.dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[self.conv]
        self.norm = _op(_NORM, kw.get("norm_op"), "norm_op")
        self.norm_kw = dict(kw.get("norm_op_kwargs") or {})
        self.dropout = _op(_DROPOUT, kw.get("dropout_op"), "dropout_op")
        self.dropout_kw = dict(kw.get("dropout_op_kwargs") or {})
        self.nonlin = _op(_NONLIN, kw.get("nonlin"), "nonlin")
        self.nonlin_kw = dict(kw.get("nonlin_kwargs") or {})
        self.bias = bool(kw.get("conv_bias", False))


class ConvDropoutNormReLU(nn.Module):
    """conv -> [dropout] -> [norm] -> [nonlin] (or nonlin before norm); layers registered by name and in
    ``all_modules`` exactly as nnU-Net's block, so both key spellings exist in the state_dict."""

    def __init__(self, ops: _Ops, cin: int, cout: int, kernel: Any, stride: Any, bias: bool, *,
                 dropout: bool = True, nonlin: bool = True, nonlin_first: bool = False) -> None:
        super().__init__()
        k, s = _tuple(kernel, ops.dims), _tuple(stride, ops.dims)
        self.conv = ops.conv(cin, cout, k, s, padding=[(i - 1) // 2 for i in k], dilation=1, bias=bias)
        layers: list[nn.Module] = [self.conv]
        if dropout and ops.dropout is not None:
            self.dropout = ops.dropout(**ops.dropout_kw)
            layers.append(self.dropout)
        if ops.norm is not None:
            self.norm = ops.norm(cout, **ops.norm_kw)
            layers.append(self.norm)
        if nonlin and ops.nonlin is not None:
            self.nonlin = ops.nonlin(**ops.nonlin_kw)
            layers.append(self.nonlin)
        if nonlin_first and ops.norm is not None and nonlin and ops.nonlin is not None:
            layers[-1], layers[-2] = layers[-2], layers[-1]
        self.all_modules = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _lean(x):
            return self._after_conv(self.conv(x))
        return self.all_modules(x)

    def forward_concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The block on the channel concatenation of ``parts`` without building it: the conv as a sum of convs
        with the matching slices of its weight (same value up to float rounding). ``parts`` is emptied as the
        tensors are consumed, so each is freed as soon as the caller holds no other reference."""
        if not _lean(parts[0]):
            x = torch.cat(parts, 1)
            parts.clear()
            return self.all_modules(x)
        w, start, out = self.conv.weight, 0, None
        while parts:
            x = parts.pop(0)
            c = x.shape[1]
            y = self.conv._conv_forward(x, w[:, start:start + c], self.conv.bias if out is None else None)
            del x
            out = y if out is None else out.add_(y)
            del y
            start += c
        assert out is not None
        return self._after_conv(out)

    def _after_conv(self, y: torch.Tensor) -> torch.Tensor:
        """Dropout (identity in eval), norm and nonlin on the fresh conv output ``y``, in place where possible."""
        for layer in list(self.all_modules)[1:]:
            if isinstance(layer, nn.modules.dropout._DropoutNd):
                continue
            if isinstance(layer, nn.modules.instancenorm._InstanceNorm) and not layer.track_running_stats:
                y = _instance_norm_(y, layer)
            elif isinstance(layer, nn.LeakyReLU):
                y = torch.nn.functional.leaky_relu_(y, layer.negative_slope)
            elif isinstance(layer, nn.ReLU):
                y = y.relu_()
            else:
                y = layer(y)
        return y


def _lean(x: torch.Tensor) -> bool:
    """Inference without autograd or autocast on float32: the blocks may work in place on their fresh outputs
    (instance norm, activation, concatenation-free decoder convs), which keeps fewer full-size tensors alive."""
    return (not torch.is_grad_enabled() and x.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type))


def _instance_norm_(y: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """Instance normalisation of ``y`` [N, C, *S] in place (statistics per sample and channel, biased variance)."""
    var, mean = torch.var_mean(y, dim=tuple(range(2, y.ndim)), keepdim=True, unbiased=False)
    scale = torch.rsqrt(var.add_(norm.eps))
    shape = (1, -1) + (1,) * (y.ndim - 2)
    if norm.affine:
        scale.mul_(norm.weight.view(shape))
        shift = norm.bias.view(shape) - mean * scale
    else:
        shift = -mean * scale
    return y.mul_(scale).add_(shift)


class StackedConvBlocks(nn.Module):
    """``n`` conv blocks, the first with ``stride`` (key ``convs.<i>``)."""

    def __init__(self, ops: _Ops, n: int, cin: int, cout: int, kernel: Any, stride: Any,
                 nonlin_first: bool = False) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[
            ConvDropoutNormReLU(ops, cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, ops.bias,
                                nonlin_first=nonlin_first) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class BasicBlockD(nn.Module):
    """Residual block (ResNet-D): conv1 (stride) -> conv2 (no nonlin) + skip (avg-pool, 1x1 conv+norm) -> nonlin."""

    def __init__(self, ops: _Ops, cin: int, cout: int, kernel: Any, stride: Any) -> None:
        super().__init__()
        s = _tuple(stride, ops.dims)
        self.conv1 = ConvDropoutNormReLU(ops, cin, cout, kernel, s, ops.bias)
        self.conv2 = ConvDropoutNormReLU(ops, cout, cout, kernel, 1, ops.bias, dropout=False, nonlin=False)
        self.nonlin2 = ops.nonlin(**ops.nonlin_kw) if ops.nonlin is not None else nn.Identity()
        self.skip = _skip(ops, cin, cout, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out += self.skip(x)
        return self.nonlin2(out)


class BottleneckD(nn.Module):
    """Bottleneck residual block: 1x1 -> kxk (stride) -> 1x1 (no nonlin) + skip -> nonlin."""

    def __init__(self, ops: _Ops, cin: int, mid: int, cout: int, kernel: Any, stride: Any) -> None:
        super().__init__()
        s = _tuple(stride, ops.dims)
        self.conv1 = ConvDropoutNormReLU(ops, cin, mid, 1, 1, ops.bias, dropout=False)
        self.conv2 = ConvDropoutNormReLU(ops, mid, mid, kernel, s, ops.bias)
        self.conv3 = ConvDropoutNormReLU(ops, mid, cout, 1, 1, ops.bias, dropout=False, nonlin=False)
        self.nonlin3 = ops.nonlin(**ops.nonlin_kw) if ops.nonlin is not None else nn.Identity()
        self.skip = _skip(ops, cin, cout, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        out += self.skip(x)
        return self.nonlin3(out)


def _skip(ops: _Ops, cin: int, cout: int, stride: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    if any(v != 1 for v in stride):
        layers.append(_AVGPOOL[ops.conv](stride, stride))
    if cin != cout:
        layers.append(ConvDropoutNormReLU(ops, cin, cout, 1, 1, False, dropout=False, nonlin=False))
    return nn.Sequential(*layers) if layers else nn.Identity()


class StackedResidualBlocks(nn.Module):
    """``n`` residual blocks (key ``blocks.<i>``), the first with ``stride``."""

    def __init__(self, ops: _Ops, n: int, cin: int, cout: int, kernel: Any, stride: Any,
                 bottleneck: int | None = None) -> None:
        super().__init__()
        if bottleneck is None:
            blocks = [BasicBlockD(ops, cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1)
                      for i in range(n)]
        else:
            blocks = [BottleneckD(ops, cin if i == 0 else cout, bottleneck, cout, kernel, stride if i == 0 else 1)
                      for i in range(n)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Encoder(nn.Module):
    """Plain (``stages.<s>.0`` = conv blocks) or residual (``stem`` + ``stages.<s>`` = residual blocks) encoder."""

    def __init__(self, ops: _Ops, in_channels: int, features: list[int], kernels: list, strides: list,
                 n_per_stage: list[int], residual: bool, nonlin_first: bool = False,
                 bottleneck: list | None = None, stem_channels: int | None = None) -> None:
        super().__init__()
        self.output_channels = features
        self.strides = [_tuple(s, ops.dims) for s in strides]
        self.kernel_sizes = kernels
        cin = in_channels
        if residual:
            stem = stem_channels or features[0]
            self.stem = StackedConvBlocks(ops, 1, cin, stem, kernels[0], 1)
            cin = stem
            stages = []
            for s, f in enumerate(features):
                stages.append(StackedResidualBlocks(ops, n_per_stage[s], cin, f, kernels[s], strides[s],
                                                    (bottleneck or [None] * len(features))[s]))
                cin = f
        else:
            self.stem = None
            stages = []
            for s, f in enumerate(features):
                stages.append(nn.Sequential(StackedConvBlocks(ops, n_per_stage[s], cin, f, kernels[s], strides[s],
                                                              nonlin_first)))
                cin = f
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip, conv blocks; 1x1 ``seg_layers`` per level."""

    def __init__(self, ops: _Ops, encoder: Encoder, num_classes: int, n_per_stage: list[int],
                 nonlin_first: bool = False) -> None:
        super().__init__()
        self.encoder = encoder  # registered as nnU-Net does: its weights also appear under decoder.encoder.
        feats, n = encoder.output_channels, len(encoder.output_channels)
        stages, transp, seg = [], [], []
        for s in range(1, n):
            below, skip, stride = feats[-s], feats[-(s + 1)], encoder.strides[-s]
            transp.append(_TRANSP[ops.conv](below, skip, stride, stride, bias=ops.bias))
            stages.append(StackedConvBlocks(ops, n_per_stage[s - 1], 2 * skip, skip, encoder.kernel_sizes[-(s + 1)], 1,
                                            nonlin_first))
            seg.append(ops.conv(skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transp)
        self.seg_layers = nn.ModuleList(seg)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Full-resolution logits from the encoder's outputs (:meth:`features`, then the last 1x1 seg layer)."""
        return self.seg_layers[-1](self.features(skips))

    def features(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """The last decoder stage's output, what the full-resolution seg layer maps to logits. The list is emptied
        as the skips are used (the caller's references go with it), and each stage's first conv reads the
        upsampled tensor and the skip without concatenating them (:meth:`ConvDropoutNormReLU.forward_concat`), so
        at inference only the tensors still needed stay in memory."""
        x = skips.pop()
        for s in range(len(self.stages)):
            parts = [self.transpconvs[s](x), skips.pop()]
            del x
            convs = self.stages[s].convs
            x = convs[0].forward_concat(parts)
            for blk in convs[1:]:
                x = blk(x)
        return x


class NNUNetV2Net(nn.Module):
    """``PlainConvUNet`` or ``ResidualEncoderUNet`` of nnU-Net v2 (inference: full-resolution logits only).

    Args:
        network_class_name: plans' ``architecture.network_class_name`` (module path or bare class name).
        arch_kwargs: plans' ``architecture.arch_kwargs``: ``n_stages``, ``features_per_stage``, ``conv_op``,
            ``kernel_sizes``, ``strides``, ``n_conv_per_stage`` (plain) or ``n_blocks_per_stage`` (residual),
            ``n_conv_per_stage_decoder``, ``conv_bias``, ``norm_op(_kwargs)``, ``dropout_op(_kwargs)``,
            ``nonlin(_kwargs)``, optionally ``nonlin_first``, ``block``, ``bottleneck_channels``, ``stem_channels``.
        in_channels: image channels.
        num_classes: segmentation heads (labels, or regions for region-based models).
    """

    def __init__(self, network_class_name: str, arch_kwargs: dict[str, Any], in_channels: int,
                 num_classes: int) -> None:
        super().__init__()
        cls = str(network_class_name).rsplit(".", 1)[-1]
        if cls not in CLASSES:
            raise ModelFileError(f"unsupported nnU-Net architecture {network_class_name!r} "
                                 f"(supported: {', '.join(CLASSES)})")
        kw = dict(arch_kwargs)
        known = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
                 "n_blocks_per_stage", "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs",
                 "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "deep_supervision", "nonlin_first",
                 "block", "bottleneck_channels", "stem_channels"}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ModelFileError(f"unsupported arch_kwargs in plans.json: {', '.join(unknown)}")
        ops = _Ops(kw)
        n = int(kw["n_stages"])
        feats = [int(f) for f in _per_stage(kw["features_per_stage"], n)]
        kernels = _per_stage(kw["kernel_sizes"], n)
        strides = _per_stage(kw["strides"], n)
        dec = [int(v) for v in _per_stage(kw["n_conv_per_stage_decoder"], n - 1)]
        nonlin_first = bool(kw.get("nonlin_first", False))
        residual = cls == "ResidualEncoderUNet"
        if residual:
            block = str(kw.get("block") or "BasicBlockD").rsplit(".", 1)[-1]
            if block not in ("BasicBlockD", "BottleneckD"):
                raise ModelFileError(f"unsupported residual block {kw.get('block')!r} in plans.json")
            bott = kw.get("bottleneck_channels") if block == "BottleneckD" else None
            bott = _per_stage(bott, n) if bott is not None else None
            enc = Encoder(ops, in_channels, feats, kernels, strides,
                          [int(v) for v in _per_stage(kw["n_blocks_per_stage"], n)], True,
                          bottleneck=bott, stem_channels=kw.get("stem_channels"))
            nonlin_first = False  # nnU-Net's residual decoder ignores it
        else:
            enc = Encoder(ops, in_channels, feats, kernels, strides,
                          [int(v) for v in _per_stage(kw["n_conv_per_stage"], n)], False, nonlin_first)
        self.encoder = enc
        self.decoder = Decoder(ops, enc, num_classes, dec, nonlin_first)
        self.spatial_dims = ops.dims
        total = [1] * ops.dims
        for s in enc.strides:
            total = [a * b for a, b in zip(total, s)]
        self.total_stride = tuple(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What :meth:`head` maps to the logits: ``forward(x) == conv1x1(features(x), *head())``."""
        return self.decoder.features(self.encoder(x))

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full-resolution seg layer as a linear map: weight ``[K, F]`` and bias ``[K]``."""
        conv = self.decoder.seg_layers[-1]
        return conv.weight.reshape(conv.weight.shape[0], -1), conv.bias


class FoldEnsemble(nn.Module):
    """Several folds' networks (``folds.<i>``); the output is the mean of their logits (nnU-Net's ensembling)."""

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(nets)
        self.spatial_dims = getattr(nets[0], "spatial_dims", 3)
        self.total_stride = getattr(nets[0], "total_stride", (1,) * self.spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.folds[0](x)
        for net in self.folds[1:]:
            out += net(x)
        if len(self.folds) > 1:
            out /= len(self.folds)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Every fold's features side by side (``[N, folds x F, ...]``): with :meth:`head` they give the mean of
        the folds' logits."""
        return torch.cat([net.features(x) for net in self.folds], 1)

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The folds' seg layers as one linear map on :meth:`features`: the mean of their logits."""
        heads = [net.head() for net in self.folds]
        n = len(heads)
        return torch.cat([w for w, _ in heads], 1) / n, torch.stack([b for _, b in heads]).mean(0)


@register_model("nnunetv2", task=TASK)
def nnunetv2(network_class_name: str = "PlainConvUNet", arch_kwargs: dict[str, Any] | None = None,
             in_channels: int = 1, num_classes: int = 2, n_folds: int = 1) -> nn.Module:
    """An nnU-Net v2 network (or an ensemble of ``n_folds`` of them) from plans.json's architecture entry."""
    if arch_kwargs is None:
        raise ModelFileError("nnunetv2 architecture needs arch_kwargs (from plans.json)")

    def one() -> nn.Module:
        return NNUNetV2Net(network_class_name, arch_kwargs, in_channels, num_classes)

    return one() if int(n_folds) == 1 else FoldEnsemble([one() for _ in range(int(n_folds))])
