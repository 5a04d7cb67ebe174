"""3-D segmentation networks: nnU-Net-style ``unet3d``, STU-Net (``stunet-s/b/l/h``) and the reversible MBConv
U-Net (``revunet3d``) with its plain twin (``revunet3d-plain``).

Every network takes ``[N, in_channels, z, y, x]`` and returns logits ``[N, num_classes, z, y, x]``. With
``deep_supervision=True`` and in training mode it returns a list of logits, full resolution first, then each
coarser decoder level (nnU-Net's convention); in eval mode always the full-resolution logits only.

STU-Net (Huang et al., 2023, "STU-Net: Scalable and Transferable Medical Image Segmentation Models Empowered by
Large-Scale Supervised Pre-training") keeps the official module names, so the published TotalSegmentator
checkpoints' ``state_dict`` loads with ``strict=True``. The reversible U-Net follows Pendse et al. (reversible
MBConv stages; inputs of each stage are rebuilt from its outputs in backward).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_backbones.blocks import ConvNormAct, STUResidualBlock, reversible_mbconv_sequence
from shared_backbones.registry import register_model

TASK = "medseg"

Kernel = Sequence[int] | int

#: Published STU-Net sizes: (blocks per stage, channels per stage).
STUNET_SIZES: dict[str, tuple[list[int], list[int]]] = {
    "s": ([1] * 6, [16, 32, 64, 128, 256, 256]),
    "b": ([1] * 6, [32, 64, 128, 256, 512, 512]),
    "l": ([2] * 6, [64, 128, 256, 512, 1024, 1024]),
    "h": ([3] * 6, [96, 192, 384, 768, 1536, 1536]),
}
#: TotalSegmentator pooling (z, y, x order, one entry per downsampling).
STUNET_POOL = [[2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 2]]


def _tuple3(k: Kernel) -> tuple[int, int, int]:
    return (k, k, k) if isinstance(k, int) else tuple(int(v) for v in k)  # type: ignore[return-value]


def _outputs(self: nn.Module, seg: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """``seg`` is coarse-to-fine; return the full-resolution logits, or all of them (fine first) for deep
    supervision."""
    if self.deep_supervision and self.training:
        return seg[::-1]
    return seg[-1]


# ----------------------------------------------------------------------------------------------------- STU-Net
class UpsampleLayer(nn.Module):
    """Nearest-neighbour upsampling by the pool kernel, then a 1x1x1 ``conv`` (STU-Net's decoder upsampling)."""

    def __init__(self, in_ch: int, out_ch: int, scale: Kernel) -> None:
        super().__init__()
        self.scale = tuple(float(s) for s in _tuple3(scale))
        self.conv = nn.Conv3d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class STUNet(nn.Module):
    """STU-Net: residual encoder/decoder with nearest-neighbour + 1x1 conv upsampling.

    Args:
        in_channels: image channels (modalities).
        num_classes: output classes including background.
        depth: residual blocks per stage (6 stages; stage 5 is the bottleneck).
        dims: channels per stage.
        pool_op_kernel_sizes: 5 downsampling factors in (z, y, x) order.
        deep_supervision: return every decoder level's logits in training mode.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 105,
        depth: Sequence[int] = (1,) * 6,
        dims: Sequence[int] = (32, 64, 128, 256, 512, 512),
        pool_op_kernel_sizes: Sequence[Kernel] = STUNET_POOL,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        depth, dims = list(depth), list(dims)
        pools = [_tuple3(p) for p in pool_op_kernel_sizes]
        if len(depth) != len(dims) or len(pools) != len(dims) - 1:
            raise ValueError("STU-Net needs len(depth) == len(dims) == len(pool_op_kernel_sizes) + 1")
        self.in_channels, self.num_classes, self.deep_supervision = in_channels, num_classes, deep_supervision
        self.pool_op_kernel_sizes = pools
        ctx = [
            nn.Sequential(
                STUResidualBlock(in_channels, dims[0], use_1x1conv=True),
                *[STUResidualBlock(dims[0], dims[0]) for _ in range(depth[0] - 1)],
            )
        ]
        for d in range(1, len(dims)):
            ctx.append(
                nn.Sequential(
                    STUResidualBlock(dims[d - 1], dims[d], stride=pools[d - 1], use_1x1conv=True),
                    *[STUResidualBlock(dims[d], dims[d]) for _ in range(depth[d] - 1)],
                )
            )
        self.conv_blocks_context = nn.ModuleList(ctx)
        n_up = len(dims) - 1
        self.upsample_layers = nn.ModuleList(
            UpsampleLayer(dims[-1 - u], dims[-2 - u], pools[-1 - u]) for u in range(n_up)
        )
        self.conv_blocks_localization = nn.ModuleList(
            nn.Sequential(
                STUResidualBlock(2 * dims[-2 - u], dims[-2 - u], use_1x1conv=True),
                *[STUResidualBlock(dims[-2 - u], dims[-2 - u]) for _ in range(depth[-2 - u] - 1)],
            )
            for u in range(n_up)
        )
        self.seg_outputs = nn.ModuleList(nn.Conv3d(dims[-2 - u], num_classes, 1) for u in range(n_up))

    @property
    def total_stride(self) -> tuple[int, int, int]:
        """Product of the pool kernels per axis: patch sizes must be multiples of it."""
        return tuple(int(torch.tensor([p[a] for p in self.pool_op_kernel_sizes]).prod()) for a in range(3))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.conv_blocks_context[:-1]:
            x = stage(x)
            skips.append(x)
        x = self.conv_blocks_context[-1](x)
        seg = []
        for u, (up, loc, out) in enumerate(zip(self.upsample_layers, self.conv_blocks_localization, self.seg_outputs)):
            x = loc(torch.cat([up(x), skips[-1 - u]], dim=1))
            if self.deep_supervision and self.training or u == len(self.seg_outputs) - 1:
                seg.append(out(x))
        return _outputs(self, seg)


def _stunet(size: str, **kwargs) -> STUNet:
    depth, dims = STUNET_SIZES[size]
    kwargs.setdefault("depth", depth)
    kwargs.setdefault("dims", dims)
    return STUNet(**kwargs)


@register_model("stunet-s", task=TASK)
def stunet_s(**kwargs) -> STUNet:
    """STU-Net S (14.60M parameters at 1 -> 105 channels)."""
    return _stunet("s", **kwargs)


@register_model("stunet-b", task=TASK)
def stunet_b(**kwargs) -> STUNet:
    """STU-Net B (58.26M parameters at 1 -> 105 channels)."""
    return _stunet("b", **kwargs)


@register_model("stunet-l", task=TASK)
def stunet_l(**kwargs) -> STUNet:
    """STU-Net L (440.30M parameters at 1 -> 105 channels)."""
    return _stunet("l", **kwargs)


@register_model("stunet-h", task=TASK)
def stunet_h(**kwargs) -> STUNet:
    """STU-Net H (1457.33M parameters at 1 -> 105 channels)."""
    return _stunet("h", **kwargs)


# ------------------------------------------------------------------------------------------------ nnU-Net U-Net
class UNet3D(nn.Module):
    """nnU-Net-style 3-D U-Net: per stage two conv(3^3)-InstanceNorm-LeakyReLU, downsampling by strided conv,
    upsampling by transposed conv, deep supervision heads on every decoder level.

    Args:
        in_channels / num_classes: image channels and output classes (background included).
        base_channels: channels of the first stage, doubled per stage up to ``max_channels``.
        strides: one (z, y, x) downsampling per stage after the first (len = stages - 1).
        deep_supervision: return every decoder level's logits in training mode.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 32,
        max_channels: int = 320,
        strides: Sequence[Kernel] = ((2, 2, 2),) * 4,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.deep_supervision = in_channels, num_classes, deep_supervision
        self.pool_op_kernel_sizes = [_tuple3(s) for s in strides]
        ch = [min(base_channels * 2**i, max_channels) for i in range(len(strides) + 1)]
        self.encoder = nn.ModuleList()
        prev = in_channels
        for i, c in enumerate(ch):
            stride = self.pool_op_kernel_sizes[i - 1] if i else 1
            self.encoder.append(
                nn.Sequential(ConvNormAct(3, prev, c, 3, stride=stride, bias=True), ConvNormAct(3, c, c, 3, bias=True))
            )
            prev = c
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in range(len(ch) - 1, 0, -1):
            s = self.pool_op_kernel_sizes[i - 1]
            self.up.append(nn.ConvTranspose3d(ch[i], ch[i - 1], s, stride=s))
            self.decoder.append(
                nn.Sequential(
                    ConvNormAct(3, 2 * ch[i - 1], ch[i - 1], 3, bias=True),
                    ConvNormAct(3, ch[i - 1], ch[i - 1], 3, bias=True),
                )
            )
            self.heads.append(nn.Conv3d(ch[i - 1], num_classes, 1))

    total_stride = STUNet.total_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        seg = []
        for u, (up, dec, head) in enumerate(zip(self.up, self.decoder, self.heads)):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
            if self.deep_supervision and self.training or u == len(self.heads) - 1:
                seg.append(head(x))
        return _outputs(self, seg)


@register_model("unet3d", task=TASK)
def unet3d(**kwargs) -> UNet3D:
    """nnU-Net-style 3-D U-Net (instance norm, leaky ReLU, strided convs, deep supervision)."""
    return UNet3D(**kwargs)


# ---------------------------------------------------------------------------------------- reversible MBConv U-Net
class RevUNet3D(nn.Module):
    """U-Net whose stages are reversible MBConv sequences (``shared_backbones``).

    Each encoder stage: strided 3^3 conv-GroupNorm-SiLU to the stage's channels, then ``depth`` reversible MBConv
    blocks; each decoder stage: transposed-conv upsampling, concatenation with the skip, 1x1x1 fusion conv, then
    ``depth`` reversible blocks. ``reversible=False`` runs the identical weights as a plain network (the twin used
    to check gradients and to measure the memory saving).

    Args:
        channels: channels per stage (even numbers).
        depth: reversible blocks per stage.
        expand_ratio: MBConv expansion of each coupling function.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        depth: int = 2,
        expand_ratio: float = 2,
        se_ratio: float | None = None,
        strides: Sequence[Kernel] | None = None,
        deep_supervision: bool = True,
        reversible: bool = True,
    ) -> None:
        super().__init__()
        ch = list(channels)
        self.in_channels, self.num_classes, self.deep_supervision = in_channels, num_classes, deep_supervision
        self.pool_op_kernel_sizes = [_tuple3(s) for s in (strides or [(2, 2, 2)] * (len(ch) - 1))]
        mb = dict(expand_ratio=expand_ratio, se_ratio=se_ratio, norm="group")
        self.stem = nn.ModuleList()
        self.encoder = nn.ModuleList()
        prev = in_channels
        for i, c in enumerate(ch):
            stride = self.pool_op_kernel_sizes[i - 1] if i else 1
            self.stem.append(ConvNormAct(3, prev, c, 3, stride=stride, norm="group", act="silu"))
            self.encoder.append(reversible_mbconv_sequence(3, c, depth, reversible=reversible, **mb))
            prev = c
        self.up, self.fuse, self.decoder, self.heads = (
            nn.ModuleList(),
            nn.ModuleList(),
            nn.ModuleList(),
            nn.ModuleList(),
        )
        for i in range(len(ch) - 1, 0, -1):
            s = self.pool_op_kernel_sizes[i - 1]
            self.up.append(nn.ConvTranspose3d(ch[i], ch[i - 1], s, stride=s))
            self.fuse.append(ConvNormAct(3, 2 * ch[i - 1], ch[i - 1], 1, norm="group", act="silu"))
            self.decoder.append(reversible_mbconv_sequence(3, ch[i - 1], depth, reversible=reversible, **mb))
            self.heads.append(nn.Conv3d(ch[i - 1], num_classes, 1))

    total_stride = STUNet.total_stride

    @property
    def reversible(self) -> bool:
        return bool(self.encoder[0].reversible)

    @reversible.setter
    def reversible(self, value: bool) -> None:
        for seq in [*self.encoder, *self.decoder]:
            seq.reversible = value

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stem, stage in zip(self.stem, self.encoder):
            x = stage(stem(x))
            skips.append(x)
        x = skips.pop()
        seg = []
        for u, (up, fuse, dec, head) in enumerate(zip(self.up, self.fuse, self.decoder, self.heads)):
            x = dec(fuse(torch.cat([up(x), skips.pop()], dim=1)))
            if self.deep_supervision and self.training or u == len(self.heads) - 1:
                seg.append(head(x))
        return _outputs(self, seg)


@register_model("revunet3d", task=TASK)
def revunet3d(**kwargs) -> RevUNet3D:
    """U-Net with reversible MBConv stages (activations of each stage rebuilt in backward)."""
    kwargs.setdefault("reversible", True)
    return RevUNet3D(**kwargs)


@register_model("revunet3d-plain", task=TASK)
def revunet3d_plain(**kwargs) -> RevUNet3D:
    """The plain twin of ``revunet3d``: identical modules and weights, ordinary autograd."""
    kwargs["reversible"] = False
    return RevUNet3D(**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def network_stride(model: nn.Module) -> tuple[int, int, int]:
    """The factor patch sizes must be divisible by (1 for networks without the attribute)."""
    return tuple(getattr(model, "total_stride", (1, 1, 1)))  # type: ignore[return-value]


# nnU-Net v2 networks (registry name ``nnunetv2``) live in their own module; importing it registers them.
from . import nnunet_arch  # noqa: E402, F401
