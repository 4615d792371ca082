"""An int8 copy of a loaded model for scoring only: PyTorch FX static quantisation on the CPU.

Why: on the 2-core CPU the float32 DenseNet-169 forward at 320 px costs about 0.2 s per image, which caps
``score`` / ``evaluate`` well below the 8 images/s of issue #14; int8 convolutions (the x86/fbgemm kernels)
roughly halve it. The int8 copy answers scores only, no heat maps: CAM methods need the float model's
gradients or exact feature maps.

`quantize_for_scoring(model, arch, batches)` traces a private copy of the model with ``torch.fx``, adds a
second output -- the spatial mean of the architecture's CAM layer, i.e. the pooled features the scope and
body-part heads read (`explain.features.capture_pooled`) -- checks that the traced float copy gives the same logit and
features as the model, calibrates activation ranges on a few REAL preprocessed batches (take them from a
training split, never from the images you then measure), and converts it. The result, an `Int8Scorer`,
maps an (N, 3, S, S) batch to ``(logits (N, 1), pooled features (N, C))``, both float32.

The copy is fixed to the input size it was calibrated at (EfficientNet-Lite's TensorFlow "SAME" padding is
frozen for that size so the graph can be traced); another size raises `QuantizeError`. Architectures that
cannot be traced or quantised (the hybrid CNN + transformer: token features and size-dependent position
embeddings) raise `QuantizeError` naming the architecture; there is no silent float fallback.

Accuracy check (float32 vs int8 on the same images, calibration from the train split;
`evaluation.int8_check`)::

    python -m mura_core int8-check --weights lite0_multisource_box \\
        --data ../shared/data/bone-fracture-xr --split valid --limit 200
"""
from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mura_core.explain.features import capture_pooled
from mura_core.models.registry import ArchSpec, _SameConv2d, get_arch

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_CALIBRATION_IMAGES",
    "Int8Scorer",
    "QuantizeError",
    "calibration_images",
    "engine_available",
    "quantize_for_scoring",
]

DEFAULT_BACKEND = "x86"
"""The quantised engine: fbgemm-based kernels for x86 CPUs (`torch.backends.quantized.supported_engines`)."""
DEFAULT_CALIBRATION_IMAGES = 16
"""Train-split images whose activations set the int8 ranges (more: slower start, rarely better)."""
DEFAULT_MAX_DELTA = 0.1
"""`quantize_for_scoring` refuses an int8 copy whose probability differs from float32 by more than this on
any calibration image: a copy that already disagrees on the images it was tuned on is not fit for scoring."""
OBSERVERS = ("histogram", "minmax")
"""Activation range observers: torch's x86 default (histogram, slow to calibrate) or plain min/max."""


class QuantizeError(ValueError):
    """The model cannot be turned into an int8 scorer (architecture, engine or input size)."""


def engine_available(backend: str = DEFAULT_BACKEND) -> bool:
    """True when this torch build has the quantised engine `backend` (x86 needs an x86 CPU build) and still
    ships the FX quantisation API (deprecated upstream in favour of torchao)."""
    try:
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
    except ImportError:
        return False
    return backend in torch.backends.quantized.supported_engines


class Int8Scorer(nn.Module):
    """The converted int8 graph plus what it was built for; forward -> (logits (N, 1), features (N, C)).

    Scores only: it has no gradients and no hookable float feature map, so no heat maps.
    """

    def __init__(self, graph: nn.Module, arch: str, image_size: tuple[int, int], backend: str,
                 calibration_images: int, seconds: float, calibration_delta: float, feature_error: float) -> None:
        super().__init__()
        self.graph = graph
        self.arch = arch
        self.image_size = image_size
        self.backend = backend
        self.calibration_images = calibration_images
        """How many images set the activation ranges."""
        self.seconds = seconds
        """How long tracing, calibration, conversion and the check took."""
        self.calibration_delta = calibration_delta
        """Largest |probability difference| int8 vs float32 over the calibration images."""
        self.feature_error = feature_error
        """Mean |feature difference| / mean |feature| over the calibration images."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        if tuple(x.shape[-2:]) != self.image_size:
            raise QuantizeError(f"the int8 {self.arch} copy was built for {self.image_size[0]}x{self.image_size[1]} "
                                f"inputs, got {tuple(x.shape[-2:])}")
        if torch.backends.quantized.engine != self.backend:
            torch.backends.quantized.engine = self.backend
        logits, features = self.graph(x.to("cpu", dtype=torch.float32).contiguous())
        return logits.float(), features.float()


# ------------------------------------------------------------------------------------------------ building

def _freeze_same_padding(model: nn.Module, example: torch.Tensor) -> int:
    """Replace every `_SameConv2d` (padding computed from the input's shape, which FX cannot trace) by a plain
    Conv2d, preceded by a ZeroPad2d when the padding is asymmetric, fixed for `example`'s size. Returns how
    many were replaced; the model's outputs are unchanged for inputs of that size."""
    seen: dict[str, tuple[int, int]] = {}
    names = {m: n for n, m in model.named_modules() if isinstance(m, _SameConv2d)}
    if not names:
        return 0

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.setdefault(names[module], (int(args[0].shape[-2]), int(args[0].shape[-1])))

    handles = [m.register_forward_pre_hook(record) for m in names]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    for module, name in names.items():
        if name not in seen:
            raise QuantizeError(f"layer {name} was not run by the forward; cannot fix its padding")
        pads: list[int] = []  # F.pad order: left, right, top, bottom
        for size, k, s, d in zip(reversed(seen[name]), reversed(module.kernel_size),
                                 reversed(module.stride), reversed(module.dilation)):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        symmetric = pads[0] == pads[1] and pads[2] == pads[3]
        conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                         padding=(pads[2], pads[0]) if symmetric else 0, dilation=module.dilation,
                         groups=module.groups, bias=module.bias is not None)
        conv.weight = module.weight
        if module.bias is not None:
            conv.bias = module.bias
        replacement: nn.Module = conv if symmetric else nn.Sequential(nn.ZeroPad2d(tuple(pads)), conv)
        replacement.train(module.training)
        parent, _, last = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, last, replacement)
    return len(names)


def _layer_name(model: nn.Module, spec: ArchSpec) -> str:
    """The qualified name of the architecture's CAM layer inside `model`."""
    layer = spec.cam_target_layer(model)
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise QuantizeError(f"{spec.name}: its feature layer is not a submodule of the model")


def _with_pooled_output(model: nn.Module, spec: ArchSpec) -> torch.fx.GraphModule:
    """`model` traced by torch.fx with a second output: the spatial mean of its CAM layer's output (N, C).

    The layer's output is the LAST graph node produced by a module at or under the layer's path (a leaf layer
    such as DenseNet's ``features.relu5``; for a container, its last module call). `quantize_for_scoring`
    checks the result against a hook on the float model, so a block ending in a functional op is caught."""
    name = _layer_name(model, spec)
    graph_module = torch.fx.symbolic_trace(model)
    graph = graph_module.graph
    found = [node for node in graph.nodes if node.op == "call_module"
             and (node.target == name or str(node.target).startswith(name + "."))]
    if not found:
        raise QuantizeError(f"{spec.name}: the traced graph has no call of layer {name!r}")
    output = next(node for node in graph.nodes if node.op == "output")
    with graph.inserting_before(output):
        pooled = graph.call_function(torch.mean, (found[-1],), {"dim": (2, 3)})
    output.args = ((output.args[0], pooled),)
    graph.lint()
    graph_module.recompile()
    return graph_module


def _reference(model: nn.Module, spec: ArchSpec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float model's logits and its pooled features exactly as the scope heads read them
    (`explain.features.capture_pooled`): the ground truth the traced copy must reproduce."""
    with capture_pooled(model, spec) as found, torch.no_grad():
        logits = model(x)
    return logits.float(), torch.from_numpy(found[0])


def quantize_for_scoring(model: nn.Module, arch: str | ArchSpec, example_batches: Iterable[torch.Tensor], *,
                         backend: str = DEFAULT_BACKEND, observer: str = "histogram", temperature: float = 1.0,
                         max_delta: float | None = DEFAULT_MAX_DELTA) -> Int8Scorer:
    """An int8 copy of `model` (left untouched) that returns ``(logits, pooled features)`` for scoring.

    Args:
        model: a float model of the registered architecture `arch` (eval mode is set on the copy).
        arch: its registry name (or `ArchSpec`): says which layer's pooled output the scope heads read.
        example_batches: preprocessed (N, 3, S, S) float batches of REAL images, all of one size S x S, that
            set the activation ranges (calibration). Use training images, not the ones you will measure.
        backend: the quantised engine (``"x86"``; ``"qnnpack"`` on ARM).
        observer: ``"histogram"`` (torch's default for x86) or ``"minmax"`` (faster calibration).
        temperature: the card's calibration, P = sigmoid(logit / temperature), for the check below.
        max_delta: refuse the copy (QuantizeError) when on some calibration image its probability differs
            from float32 by more than this; None: build it whatever the difference (measurements).

    Raises:
        QuantizeError: the engine is missing, no batches were given, the architecture cannot be traced
            or quantised (the message names it), or the int8 copy fails the `max_delta` check.
    """
    if observer not in OBSERVERS:
        raise QuantizeError(f"unknown observer {observer!r}; choose from {', '.join(OBSERVERS)}")
    spec = arch if isinstance(arch, ArchSpec) else get_arch(arch)
    if not engine_available(backend):
        raise QuantizeError(f"the quantised engine {backend!r} or torch's FX quantisation API is not in this torch "
                            f"build (engines: {', '.join(torch.backends.quantized.supported_engines)})")
    if spec.reshape_transform is not None:
        raise QuantizeError(f"int8 scoring is not available for architecture {spec.name!r}: its features are "
                            "transformer tokens (attention and size-dependent position embeddings are not "
                            "quantised by FX); score it in float32")
    batches = [b.detach().to("cpu", dtype=torch.float32) for b in example_batches]
    batches = [b for b in batches if b.ndim == 4 and len(b)]
    if not batches:
        raise QuantizeError("int8 calibration needs at least one preprocessed (N, 3, S, S) batch of real images")
    size = tuple(batches[0].shape[-2:])
    if any(tuple(b.shape[-2:]) != size for b in batches):
        raise QuantizeError("int8 calibration batches must all have one input size")
    started = time.perf_counter()
    work = copy.deepcopy(model).to("cpu").eval()
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        converted, reference = _convert(work, spec, batches, backend, observer)
    scorer = Int8Scorer(converted, spec.name, (int(size[0]), int(size[1])), backend, sum(len(b) for b in batches),
                        0.0, 0.0, 0.0)
    deltas, errors, norms = [], [], []
    with torch.inference_mode():
        for batch in batches:
            want_logits, want_features = reference(batch)
            got_logits, got_features = scorer(batch)
            deltas.append((torch.sigmoid(got_logits.float() / temperature)
                           - torch.sigmoid(want_logits.float() / temperature)).abs().max().item())
            errors.append((got_features - want_features.float()).abs().mean().item())
            norms.append(want_features.float().abs().mean().item())
    scorer.calibration_delta = float(max(deltas))
    scorer.feature_error = float(np.mean(errors) / max(float(np.mean(norms)), 1e-12))
    scorer.seconds = time.perf_counter() - started
    if max_delta is not None and scorer.calibration_delta > max_delta:
        raise QuantizeError(
            f"the int8 copy of {spec.name!r} is not accurate enough to score with: on its "
            f"{scorer.calibration_images} calibration images the probability moves by up to "
            f"{scorer.calibration_delta:.3f} (allowed {max_delta:.3f}; feature error {scorer.feature_error:.0%}); "
            "score it in float32")
    return scorer


_QUIET = (".*reduce_range will be deprecated.*", ".*quantized tensor creation functions.*",
          ".*torch.ao.quantization is deprecated.*")
"""torch.ao.quantization's own deprecation notices, hidden while building. The API still works in torch 2.14
although its notice names 2.10 for removal; the way forward is torchao's pt2e quantisation."""


def _convert(work: nn.Module, spec: ArchSpec, batches: Sequence[torch.Tensor], backend: str, observer: str
             ) -> tuple[nn.Module, nn.Module]:
    """Trace (with the pooled output), check, calibrate and convert the float copy `work` (changed in place).
    Returns (the int8 graph, the traced float graph it came from)."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver, default_per_channel_weight_observer
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    try:
        want_logits, want_features = _reference(work, spec, batches[0][:2])  # before any change to the copy
        _freeze_same_padding(work, batches[0])
        graph = _with_pooled_output(work, spec)
        with torch.no_grad():
            got_logits, got_features = graph(batches[0][:2])
        if (got_features.shape != want_features.shape
                or not torch.allclose(got_logits.float(), want_logits, rtol=1e-4, atol=1e-4)
                or not torch.allclose(got_features.float(), want_features, rtol=1e-4, atol=1e-4)):
            raise QuantizeError("the traced copy does not reproduce the model's logit and pooled features")
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = backend
        try:
            mapping = get_default_qconfig_mapping(backend)
            if observer == "minmax":
                mapping = mapping.set_global(QConfig(activation=MinMaxObserver.with_args(reduce_range=True),
                                                     weight=default_per_channel_weight_observer))
            prepared = prepare_fx(copy.deepcopy(graph), mapping, example_inputs=(batches[0][:1],))
            with torch.no_grad():
                for batch in batches:
                    prepared(batch)
            converted = convert_fx(prepared)
        finally:
            torch.backends.quantized.engine = previous
    except QuantizeError as error:
        raise QuantizeError(f"int8 scoring is not available for architecture {spec.name!r}: {error}") from error
    except Exception as error:  # noqa: BLE001 - tracing/quantisation failures come in many types
        raise QuantizeError(f"int8 scoring is not available for architecture {spec.name!r}: FX could not "
                            f"trace or quantise it ({type(error).__name__}: {str(error)[:300]})") from error
    return converted, graph


# ------------------------------------------------------------------------------------------------ calibration

def calibration_images(data: str | Path | Sequence[str | Path], *, split: str = "train",
                       count: int = DEFAULT_CALIBRATION_IMAGES) -> list[np.ndarray]:
    """`count` decoded 2-D images spread evenly over the `split` of one or more data sources (shared out
    between them), for `quantize_for_scoring`. Unreadable files are skipped.

    Raises:
        QuantizeError: a source has no images in that split (int8 ranges must come from training images).
    """
    from mura_core.data.sources import open_dataset
    from mura_core.imaging.decode import DecodeError, decode_view

    paths = [data] if isinstance(data, (str, Path)) else list(data)
    images: list[np.ndarray] = []
    for k, path in enumerate(paths):
        views = [v for s in open_dataset(path, split).studies for v in s.views]
        if not views:
            raise QuantizeError(f"{path}: no {split!r} images to calibrate int8 on; give a data source with "
                                f"a {split} split (score/evaluate: --calibration PATH)")
        want = count // len(paths) + (1 if k < count % len(paths) else 0)
        picks = np.unique(np.linspace(0, len(views) - 1, num=max(1, want)).round().astype(int))
        for i in picks:
            try:
                images.append(decode_view(views[int(i)]).pixels)
            except (DecodeError, OSError):
                continue
    if not images:
        raise QuantizeError(f"none of the {split} images picked for int8 calibration could be read")
    return images
