"""Tests for mura_core.explain.cams: formulas vs pytorch-grad-cam, CAM == HiResCAM, localisation, hooks, threads."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from torch import nn

from mura_core.explain import cams as E
from mura_core.models.registry import ArchSpec, create_model, get_arch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------- a toy model trained to find a bright square

class ToyCNN(nn.Module):
    """Three 3x3 convolutions, global average pool, one Linear: classic CAM applies."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.classifier = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


TOY_SPEC = ArchSpec(
    name="toy", builder=lambda **kw: ToyCNN(), default_image_size=32,
    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), description="test toy",
    cam_target_layer=lambda m: m.features[-1],
    classic_cam=lambda m: (m.features[-1], m.classifier.weight[0]))

SIZE, SQUARE = 32, 6


def _square_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Noisy grey images; label 1 images hold a bright SQUARE x SQUARE patch at a random place."""
    x = 0.3 + 0.1 * torch.rand(n, 1, SIZE, SIZE, generator=gen)
    y = (torch.rand(n, generator=gen) < 0.5).float()
    corners = []
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, SIZE - SQUARE, (2,), generator=gen))
        corners.append((r, c))
        if y[i] > 0:
            x[i, 0, r:r + SQUARE, c:c + SQUARE] = 0.95
    return ((x.expand(-1, 3, -1, -1) - 0.5) / 0.25).contiguous(), y, corners


@pytest.fixture(scope="module")
def trained_toy() -> ToyCNN:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = ToyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        x, y, _ = _square_batch(24, gen)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("method", ["cam", "cam-ms", "cam-zoom", "gradcam", "hirescam", "gradcam++", "layercam",
                                    "xgradcam"])
def test_heatmap_peak_lands_in_planted_square(trained_toy, method):
    gen = torch.Generator().manual_seed(123)
    x, y, corners = _square_batch(40, gen)
    positives = [i for i in range(40) if y[i] > 0]
    with torch.inference_mode():
        acc = ((trained_toy(x)[:, 0] > 0).float() == y).float().mean().item()
    assert acc > 0.9, f"toy model did not learn the square (accuracy {acc:.2f})"
    maps, _ = E.explain_batch(trained_toy, TOY_SPEC, x[positives], method)
    hits = 0
    for k, i in enumerate(positives):
        px, py = E.heatmap_peak(maps[k])
        r, c = corners[i]
        tol = 1.5  # pixels: the feature map is half the input resolution
        hits += (c - tol <= px * SIZE <= c + SQUARE + tol) and (r - tol <= py * SIZE <= r + SQUARE + tol)
    assert hits / len(positives) >= 0.8, f"{method}: only {hits}/{len(positives)} peaks in the square"


def test_normal_target_negates_classic_cam(trained_toy):
    gen = torch.Generator().manual_seed(5)
    x, _, _ = _square_batch(4, gen)
    normal_cam, _ = E.explain_batch(trained_toy, TOY_SPEC, x, "cam", target="normal")
    normal_hires, _ = E.explain_batch(trained_toy, TOY_SPEC, x, "hirescam", target="normal")
    abnormal_cam, _ = E.explain_batch(trained_toy, TOY_SPEC, x, "cam", target="abnormal")
    np.testing.assert_allclose(normal_cam, normal_hires, atol=1e-4)
    assert not np.allclose(normal_cam, abnormal_cam, atol=1e-2)


# ---------------------------------------------------------------- the DenseNet trap and the reference library

def test_classic_cam_equals_hirescam_on_densenet121():
    """With the non-inplace relu5 target, HiResCAM = CAM / (h*w) exactly, so normalised maps agree."""
    torch.manual_seed(1)
    model = create_model("densenet121").eval()
    spec = get_arch("densenet121")
    assert isinstance(spec.cam_target_layer(model), nn.ReLU) and not spec.cam_target_layer(model).inplace
    x = torch.randn(2, 3, 96, 96)
    cam, logits_cam = E.explain_batch(model, spec, x, "cam")
    hires, logits_hires = E.explain_batch(model, spec, x, "hirescam")
    assert cam.shape == (2, 96, 96) and cam.max() == pytest.approx(1.0)
    np.testing.assert_allclose(cam, hires, atol=1e-4)
    with torch.inference_mode():
        ref = model(x)[:, 0].numpy()
    np.testing.assert_allclose(logits_cam, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits_hires, ref, rtol=1e-4, atol=1e-4)
    assert _hooks(model) == 0


LIBRARY = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcam++": "GradCAMPlusPlus",
           "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


@pytest.mark.parametrize("method", sorted(LIBRARY))
@pytest.mark.parametrize("arch", ["shallow_cnn", "mobilenet_v2"])
def test_gradient_methods_match_pytorch_grad_cam(arch, method):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    torch.manual_seed(2)
    model = create_model(arch).eval()
    spec = get_arch(arch)
    x = torch.randn(2, 3, 64, 64)
    ours, _ = E.explain_batch(model, spec, x, method)
    cam = getattr(pytorch_grad_cam, LIBRARY[method])(model=model, target_layers=[spec.cam_target_layer(model)])
    try:
        ref = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)] * 2)
    finally:
        cam.activations_and_grads.release()
    ref = E.normalise_map(ref)
    # Same maps up to the library's epsilons and our final re-normalisation.
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99
    assert np.abs(ours - ref).max() < 0.05


def test_eigencam_is_class_agnostic_and_in_range():
    torch.manual_seed(3)
    model = create_model("shallow_cnn").eval()
    spec = get_arch("shallow_cnn")
    x = torch.randn(2, 3, 32, 32)
    a, _ = E.explain_batch(model, spec, x, "eigencam", target="abnormal")
    b, _ = E.explain_batch(model, spec, x, "eigencam", target="normal")
    np.testing.assert_allclose(a, b)
    assert a.min() >= 0 and a.max() == pytest.approx(1.0)


def test_hybrid_gradcam_is_not_blank():
    """The hybrid's target layer must let the CLS logit's gradient reach patch tokens."""
    torch.manual_seed(4)
    model = create_model("hybrid").eval()
    spec = get_arch("hybrid")
    maps, logits = E.explain_batch(model, spec, torch.randn(1, 3, 64, 64), "gradcam")
    assert maps.shape == (1, 64, 64) and logits.shape == (1,)
    assert maps.max() == pytest.approx(1.0)


def test_classic_cam_refused_without_pooled_head():
    model = create_model("shallow_cnn").eval()
    spec = get_arch("shallow_cnn")
    assert E.default_method(model, spec) == E.FALLBACK_CAM != E.DEFAULT_CAM == "cam"
    assert "cam" not in E.available_methods(model, spec) and "cam-ms" not in E.available_methods(model, spec)
    for method in ("cam", "cam-ms"):
        with pytest.raises(E.ExplainError):
            E.explain_batch(model, spec, torch.zeros(1, 3, 32, 32), method)
    assert _hooks(model) == 0


@pytest.mark.parametrize("method,target", [("nope", "abnormal"), ("cam", "sideways")])
def test_bad_method_or_target(method, target):
    model = ToyCNN().eval()
    with pytest.raises(E.ExplainError):
        E.explain_batch(model, TOY_SPEC, torch.zeros(1, 3, 16, 16), method, target)


def test_slow_methods_marked_and_run_on_a_tiny_model():
    assert {"scorecam", "ablationcam"} <= E.SLOW_METHODS
    assert E.SLOW_METHODS < set(E.CAM_METHODS)
    torch.manual_seed(6)
    model = ToyCNN().eval()
    x = torch.randn(1, 3, 16, 16)
    maps, logits = E.explain_batch(model, TOY_SPEC, x, "scorecam")
    assert maps.shape == (1, 16, 16) and 0 <= maps.min() and maps.max() <= 1
    with torch.inference_mode():
        assert logits[0] == pytest.approx(model(x)[0, 0].item(), abs=1e-5)
    assert _hooks(model) == 0


# ---------------------------------------------------------------- hooks and threads

@pytest.mark.parametrize("method", ["cam", "gradcam", "eigencam"])
def test_no_leftover_hooks_and_grad_mode_restored(method):
    model = ToyCNN().eval()
    assert torch.is_grad_enabled()
    E.explain_batch(model, TOY_SPEC, torch.randn(2, 3, 16, 16), method)
    assert _hooks(model) == 0
    assert torch.is_grad_enabled()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad])
def test_gradient_methods_work_inside_callers_no_grad_contexts(trained_toy, context):
    x = torch.randn(2, 3, 32, 32)
    expected, _ = E.explain_batch(trained_toy, TOY_SPEC, x, "gradcam")
    with context():
        got, _ = E.explain_batch(trained_toy, TOY_SPEC, x, "gradcam")
        assert not torch.is_grad_enabled()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_hooks_released_after_an_error():
    model = ToyCNN().eval()
    broken = dataclasses.replace(TOY_SPEC, reshape_transform=lambda t: t.flatten(1))  # makes maps 2-D
    with pytest.raises(E.ExplainError):
        E.explain_batch(model, broken, torch.randn(1, 3, 16, 16), "gradcam")
    assert _hooks(model) == 0 and torch.is_grad_enabled()


def test_threads_sharing_one_model_match_sequential(trained_toy):
    gen = torch.Generator().manual_seed(9)
    inputs = [_square_batch(2, gen)[0] for _ in range(8)]
    methods = ["cam", "gradcam", "hirescam", "layercam"] * 2
    expected = [E.explain_batch(trained_toy, TOY_SPEC, x, m) for x, m in zip(inputs, methods)]
    got: list = [None] * 8
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            got[i] = E.explain_batch(trained_toy, TOY_SPEC, inputs[i], methods[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (m_exp, l_exp), (m_got, l_got) in zip(expected, got):
        np.testing.assert_array_equal(m_got, m_exp)
        np.testing.assert_array_equal(l_got, l_exp)
    assert _hooks(trained_toy) == 0


def test_unhooked_forward_in_other_thread_is_undisturbed(trained_toy):
    """A plain forward on another thread while hooks are registered gives its normal output."""
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ref = trained_toy(x)
    capture = E._Capture(with_grad=True)
    out = {}
    with E._hooked(TOY_SPEC.cam_target_layer(trained_toy), capture):
        t = threading.Thread(target=lambda: out.setdefault("y", trained_toy(x).detach()))
        t.start()
        t.join()
    assert capture.activation is None
    torch.testing.assert_close(out["y"], ref)


# ---------------------------------------------------------------- numpy helpers

def test_normalise_keeps_max_as_max_and_flat_is_zero():
    m = np.array([[[0.0, 2.0], [1.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])
    out = E.normalise_map(m)
    np.testing.assert_allclose(out[0], [[0, 0.5], [0.25, 1.0]])
    np.testing.assert_array_equal(out[1], 0)
    tiny = E.normalise_map(np.array([[1e-9, 2e-9], [0.0, 4e-9]]))
    assert tiny.max() == 1.0 and tiny[1, 1] == 1.0


def test_resize_heatmap_to_original_size():
    h = np.zeros((4, 4), np.float32)
    h[0, 3] = 1.0
    out = E.resize_heatmap(h, (30, 50))
    assert out.shape == (30, 50) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    x, y = E.heatmap_peak(out)
    assert x > 0.75 and y < 0.25


def test_heatmap_peak_convention():
    h = np.zeros((10, 20), np.float32)
    h[2, 5] = 1.0
    assert E.heatmap_peak(h) == pytest.approx(((5 + 0.5) / 20, (2 + 0.5) / 10))
    assert E.heatmap_peak(np.zeros((4, 4))) == pytest.approx((0.5, 0.5))  # flat: centre
    with pytest.raises(ValueError):
        E.heatmap_peak(np.zeros(3))


@pytest.mark.parametrize("colormap", ["jet", "inferno", "viridis", "magma", "turbo", "JET"])
def test_overlay_rgb_uint8_at_image_size(colormap):
    image = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    heat = np.zeros((8, 8), np.float32)
    heat[4, 4] = 1.0
    out = E.overlay(image, heat, colormap=colormap, alpha=0.5)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8


def test_overlay_alpha_extremes_and_colour_order():
    image = np.full((10, 10), 0.5, np.float32)
    heat = np.ones((10, 10), np.float32)
    plain = E.overlay(image, heat, alpha=0.0)
    assert (plain == 128).all()
    full = E.overlay(image, heat, colormap="jet", alpha=1.0)
    assert full[0, 0, 0] > full[0, 0, 2]  # jet's maximum is red: RGB order, not BGR
    with pytest.raises(ValueError):
        E.overlay(image, heat, colormap="nope")
    with pytest.raises(ValueError):
        E.overlay(image, heat, alpha=1.5)


# the table's default (classic CAM) where the head is "pool + one Linear", else Grad-CAM
EXPECTED_DEFAULT = {**{arch: E.DEFAULT_CAM for arch in ("densenet169", "densenet121", "efficientnet_lite0",
                                                        "mobilenet_v2", "resnet50")},
                    **{arch: E.FALLBACK_CAM for arch in ("hybrid", "hybrid_lite2", "shallow_cnn", "vgg19_bn")}}


@pytest.mark.parametrize("arch", sorted(EXPECTED_DEFAULT))
def test_every_registered_arch_explains(arch):
    """Default method and Grad-CAM run on every architecture: right shapes, same logits as a plain forward."""
    from mura_core.models.registry import list_models

    assert arch in list_models()
    torch.manual_seed(7)
    model = create_model(arch).eval()
    spec = get_arch(arch)
    assert E.default_method(model, spec) == EXPECTED_DEFAULT[arch]
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)[:, 0].numpy()
    for method in {E.default_method(model, spec), "gradcam"}:
        maps, logits = E.explain_batch(model, spec, x, method)
        assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
        assert 0 <= maps.min() and maps.max() <= 1
        np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)
    assert _hooks(model) == 0


def test_explain_many_equals_one_by_one(trained_toy):
    gen = torch.Generator().manual_seed(11)
    x, _, _ = _square_batch(3, gen)
    methods = ["cam", "gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam"]
    together, logits = E.explain_many(trained_toy, TOY_SPEC, x, methods)
    assert list(together) == methods
    for method in methods:
        alone, alone_logits = E.explain_batch(trained_toy, TOY_SPEC, x, method)
        np.testing.assert_allclose(together[method], alone, atol=1e-5, err_msg=method)
        np.testing.assert_allclose(logits, alone_logits, atol=1e-5)
    assert _hooks(trained_toy) == 0


def test_multiscale_cam_is_the_mean_of_scaled_and_mirrored_classic_cams(trained_toy):
    """cam-ms = min-max(mean over scales and mirrors of each pass's classic CAM at the input size, mirrored maps
    flipped back); its logits are the plain forward's; on the CPU every pass runs one row per forward."""
    gen = torch.Generator().manual_seed(21)
    x, _, _ = _square_batch(3, gen)
    expected = np.zeros((3, SIZE, SIZE))
    for factor in E.MULTISCALE_FACTORS:
        side = E.scaled_side(SIZE, factor)
        scaled = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        plain, _ = E.explain_batch(trained_toy, TOY_SPEC, scaled, "cam")
        mirrored, _ = E.explain_batch(trained_toy, TOY_SPEC, torch.flip(scaled, dims=[-1]), "cam")
        for maps in (plain, mirrored[:, :, ::-1]):
            expected += np.stack([E.normalise_map(E.resize_heatmap(m, (SIZE, SIZE))) for m in maps])
    calls = []
    handle = trained_toy.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        maps, logits = E.explain_batch(trained_toy, TOY_SPEC, x, "cam-ms")
    finally:
        handle.remove()
    np.testing.assert_allclose(maps, E.normalise_map(expected), atol=1e-4)
    with torch.inference_mode():
        np.testing.assert_allclose(logits, trained_toy(x)[:, 0].numpy(), atol=1e-5)
    assert len(calls) == 2 * len(E.MULTISCALE_FACTORS) * len(x) and len(E.MULTISCALE_FACTORS) > 1
    assert _hooks(trained_toy) == 0
    assert maps.shape == (3, SIZE, SIZE) and maps.max() == pytest.approx(1.0)


def _toy_cam(model: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The toy's classic CAM of `x` brought to `size`: ReLU, min-max on the grid, bilinear resize, min-max."""
    with torch.inference_mode():
        acts = model.features(x).numpy()
    raw = np.maximum(np.einsum("c,nchw->nhw", model.classifier.weight[0].detach().numpy(), acts), 0.0)
    return E.normalise_map(np.stack([E.resize_heatmap(m, size) for m in E.normalise_map(raw)]))


@pytest.mark.parametrize("mirror", [False, True])
def test_zoom_cam_adds_the_tapered_map_of_a_window_around_the_peak(trained_toy, mirror):
    """cam-zoom = min-max(first map + taper x the classic CAM of the window around its peak, enlarged ZOOM_FACTOR
    times, placed back); the first map is the classic CAM (mirror-averaged under the flip). The plain inputs'
    logits are the scores; the forwards are the plain rows, the mirrored rows with the flip, and one zoom each."""
    x, _, _ = _square_batch(3, torch.Generator().manual_seed(22))
    base = _toy_cam(trained_toy, x, (SIZE, SIZE))
    if mirror:
        base = E.normalise_map((base + _toy_cam(trained_toy, torch.flip(x, dims=[-1]), (SIZE, SIZE))[:, :, ::-1]) / 2)
    expected = []
    for i in range(3):
        top, left, h, w = E.zoom_window(base[i])
        crop = torch.nn.functional.interpolate(x[i:i + 1, :, top:top + h, left:left + w],
                                               size=(E.scaled_side(h, E.ZOOM_FACTOR), E.scaled_side(w, E.ZOOM_FACTOR)),
                                               mode="bilinear", align_corners=False)
        total = base[i].astype(np.float64)
        total[top:top + h, left:left + w] += _toy_cam(trained_toy, crop, (h, w))[0] * E.window_taper(h, w)
        expected.append(E.normalise_map(total))
    calls = []
    handle = trained_toy.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        if mirror:
            maps, logits = E.explain_with_flip(trained_toy, TOY_SPEC, x, ["cam-zoom"])
        else:
            maps, logits = E.explain_many(trained_toy, TOY_SPEC, x, ["cam-zoom"])
    finally:
        handle.remove()
    np.testing.assert_allclose(maps["cam-zoom"], np.stack(expected), atol=1e-4)
    with torch.inference_mode():
        scored = x if not mirror else torch.cat([x, torch.flip(x, dims=[-1])])
        np.testing.assert_allclose(logits, trained_toy(scored)[:, 0].numpy(), atol=1e-5)
    assert len(calls) == (3 if mirror else 2) * len(x)  # one row per forward on the CPU
    assert _hooks(trained_toy) == 0


def test_zoom_window_is_centred_on_the_peak_and_kept_inside():
    heatmap = np.zeros((100, 80), dtype=np.float32)
    heatmap[50, 40] = 1.0
    assert E.zoom_window(heatmap, 0.4) == (30, 24, 40, 32)  # peak (row 50, column 40) at the centre
    heatmap[:] = 0.0
    heatmap[2, 78] = 1.0  # near the top-right corner: shifted inside, not cut
    assert E.zoom_window(heatmap, 0.4) == (0, 48, 40, 32)


def test_window_taper_fades_to_zero_at_every_edge():
    taper = E.window_taper(40, 20)
    assert taper.shape == (40, 20) and taper.max() == pytest.approx(1.0)
    assert taper[0].max() == 0.0 and taper[-1].max() == 0.0 and taper[:, 0].max() == 0.0 and taper[:, -1].max() == 0.0
    assert taper[20, 10] == 1.0
    np.testing.assert_allclose(taper, taper[::-1, ::-1])


def test_scaled_side_rounds_to_the_stride():
    assert [E.scaled_side(s, 1.4) for s in (320, 224, 16)] == [448, 320, 32]
    assert E.scaled_side(300, 1.0) == 300


def test_explain_many_counts_one_forward(trained_toy):
    calls = []
    handle = trained_toy.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        E.explain_many(trained_toy, TOY_SPEC, torch.randn(2, 3, 32, 32), ["cam", "gradcam", "layercam", "eigencam"])
    finally:
        handle.remove()
    assert len(calls) == 1


def test_explain_many_forwards_a_few_rows_at_a_time_on_the_cpu(trained_toy):
    """Five rows on the CPU go in forwards of at most `CPU_FORWARD_ROWS` (large batches are slower there), and
    the maps and logits equal those of each row explained alone."""
    from mura_core.models.devices import CPU_FORWARD_ROWS

    x, _, _ = _square_batch(5, torch.Generator().manual_seed(41))
    rows: list[int] = []
    handle = trained_toy.register_forward_pre_hook(lambda _m, args: rows.append(int(args[0].shape[0])))
    try:
        maps, logits = E.explain_many(trained_toy, TOY_SPEC, x, ["cam", "gradcam"])
    finally:
        handle.remove()
    assert sum(rows) == 5 and max(rows) == CPU_FORWARD_ROWS < 5
    for i in range(5):
        alone, alone_logits = E.explain_many(trained_toy, TOY_SPEC, x[i:i + 1], ["cam", "gradcam"])
        np.testing.assert_allclose(maps["gradcam"][i], alone["gradcam"][0], atol=1e-5)
        np.testing.assert_allclose(maps["cam"][i], alone["cam"][0], atol=1e-5)
        np.testing.assert_allclose(logits[i], alone_logits[0], atol=1e-5)


def test_flip_reuses_the_multiscale_mirror_pass(trained_toy):
    """With cam-ms the test-time flip costs no forward: the map is cam-ms's own and the logits are those of the
    inputs, then of their mirror images, from cam-ms's own passes."""
    gen = torch.Generator().manual_seed(31)
    x, _, _ = _square_batch(3, gen)
    expected, _ = E.explain_batch(trained_toy, TOY_SPEC, x, "cam-ms")
    calls = []
    handle = trained_toy.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        maps, logits = E.explain_with_flip(trained_toy, TOY_SPEC, x, ["cam-ms"])
    finally:
        handle.remove()
    assert len(calls) == 2 * len(E.MULTISCALE_FACTORS) * len(x)  # cam-ms's own forwards, one row each
    np.testing.assert_allclose(maps["cam-ms"], expected, atol=1e-6)
    with torch.inference_mode():
        both = trained_toy(torch.cat([x, torch.flip(x, dims=[-1])]))[:, 0].numpy()
    np.testing.assert_allclose(logits, both, atol=1e-5)
    assert _hooks(trained_toy) == 0


def test_flip_averages_other_maps_with_the_mirror_image(trained_toy):
    """Methods that do not already look at the mirror image run on inputs and mirrors stacked; each pair of maps
    is averaged with the mirrored one flipped back. Asked together with cam-ms, the logits come from that pass."""
    gen = torch.Generator().manual_seed(32)
    x, _, _ = _square_batch(3, gen)
    stacked = torch.cat([x, torch.flip(x, dims=[-1])])
    pair, pair_logits = E.explain_batch(trained_toy, TOY_SPEC, stacked, "gradcam")
    maps, logits = E.explain_with_flip(trained_toy, TOY_SPEC, x, ["gradcam", "cam-ms"])
    assert list(maps) == ["gradcam", "cam-ms"]
    np.testing.assert_allclose(maps["gradcam"], E.normalise_map((pair[:3] + pair[3:, :, ::-1]) / 2.0), atol=1e-5)
    np.testing.assert_allclose(maps["cam-ms"], E.explain_batch(trained_toy, TOY_SPEC, x, "cam-ms")[0], atol=1e-6)
    np.testing.assert_allclose(logits, pair_logits, atol=1e-5)
    with pytest.raises(E.ExplainError):
        E.explain_with_flip(trained_toy, TOY_SPEC, x, [])


def test_the_window_model_explains_with_its_full_size_map():
    """efficientnet_lite2_windows scores two passes (the view shrunk to 384 px, then at full size): every fast method
    runs, its logits are the model's, and classic CAM is the full-size pass's map (14x14 at 448 px), not the whole
    view's."""
    torch.manual_seed(3)
    model = create_model("efficientnet_lite2_windows").eval()
    spec = get_arch("efficientnet_lite2_windows")
    x = torch.randn(1, 3, 448, 448)
    with torch.inference_mode():
        ref = model(x)[:, 0].numpy()
        cells = torch.einsum("c,nchw->nhw", model._fc.weight[0], model.features(x)).numpy()
    for method in ("cam", "cam-ms", "cam-zoom", "gradcam", "layercam", "eigencam"):
        maps, logits = E.explain_batch(model, spec, x, method)
        assert maps.shape == (1, 448, 448) and 0 <= maps.min() and maps.max() <= 1, method
        np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)
    maps, _ = E.explain_batch(model, spec, x, "cam")
    expected = E.normalise_map(E.resize_heatmap(E.normalise_map(np.maximum(cells, 0.0))[0], (448, 448))[None])
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    assert _hooks(model) == 0
