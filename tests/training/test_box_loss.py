"""Box supervision moves a toy model's class activation map onto the planted finding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mura_core.training.augment import augment_batch, box_masks
from mura_core.training.box_loss import FeatureCapture, RolloutCapture, box_attention_loss, cam_from_features
from mura_core.training.weighting import weighted_bce

SIZE = 32


class ToyCam(nn.Module):
    """conv -> ReLU -> conv -> ReLU (the CAM layer) -> global average pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(4))
        self.fc = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Abnormal images hold a boxed checkerboard square (the finding) AND a shortcut: a flat bright top stripe."""
    rng = np.random.default_rng(seed)
    images, labels, boxes = [], [], []
    for i in range(n):
        img = rng.normal(0.2, 0.05, (SIZE, SIZE))
        label = i % 2
        image_boxes = []
        if label:
            x, y = rng.integers(4, SIZE - 10, 2)
            img[y:y + 6, x:x + 6] = 0.2 + 0.7 * (np.indices((6, 6)).sum(axis=0) % 2)
            img[0:3, :] = 0.9
            image_boxes = [(x / SIZE, y / SIZE, (x + 6) / SIZE, (y + 6) / SIZE)]
        images.append(img)
        labels.append(label)
        boxes.append(image_boxes)
    x = torch.tensor(np.clip(np.stack(images), 0, 1), dtype=torch.float32).unsqueeze(1)
    return x, torch.tensor(labels, dtype=torch.float32), boxes


def _share_inside(model: ToyCam, x: torch.Tensor, labels: torch.Tensor, boxes: list) -> float:
    """Mean share of positive CAM energy inside the box, over abnormal images."""
    with torch.no_grad():
        cam = cam_from_features(model.features(x), model.fc.weight[0]).clamp(min=0)
    cover = nn.functional.adaptive_avg_pool2d(box_masks(boxes, SIZE).unsqueeze(1), cam.shape[-2:])[:, 0]
    share = (cam * cover).flatten(1).sum(1) / (cam.flatten(1).sum(1) + 1e-8)
    return float(share[labels > 0.5].mean())


def _fit(weight: float, seed: int = 0) -> tuple[float, float]:
    torch.manual_seed(seed)
    x, y, boxes = _toy_data(64, seed=1)
    masks = box_masks(boxes, SIZE)
    model = ToyCam()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    capture = FeatureCapture()
    with capture.on(model.features):
        for _ in range(150):
            logits = model(x)[:, 0]
            loss = weighted_bce(logits, y, torch.ones_like(y))
            if weight:
                cam = cam_from_features(capture.features, model.fc.weight[0])
                loss = loss + weight * box_attention_loss(cam, masks, y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    x_test, y_test, boxes_test = _toy_data(64, seed=2)
    accuracy = float(((model(x_test)[:, 0] > 0).float() == y_test).float().mean())
    return _share_inside(model, x_test, y_test, boxes_test), accuracy


def test_box_loss_moves_the_cam_onto_the_planted_square() -> None:
    without, acc_without = _fit(0.0)
    with_box, acc_with = _fit(3.0)
    assert acc_without > 0.9 and acc_with > 0.9  # both classify; only where they look differs
    # the box is ~3.5% of the image; measured 0.10 -> 0.18 of the positive CAM energy inside it
    assert with_box > 1.4 * without, (without, with_box)


def test_box_loss_ignores_normals_and_images_without_boxes() -> None:
    cam = torch.randn(3, 4, 4, requires_grad=True)
    masks = box_masks([[(0.0, 0.0, 0.5, 0.5)], [], [(0.0, 0.0, 0.5, 0.5)]], 8)
    loss = box_attention_loss(cam, masks, torch.tensor([1.0, 1.0, 0.0]))
    loss.backward()
    assert cam.grad[1].abs().sum() == 0 and cam.grad[2].abs().sum() == 0 and cam.grad[0].abs().sum() > 0
    zero = box_attention_loss(cam, masks, torch.zeros(3))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_masks_follow_their_image_through_augmentation() -> None:
    image = torch.zeros(1, 32, 32, dtype=torch.uint8)
    image[0, 4:12, 20:28] = 255
    masks = box_masks([[(20 / 32, 4 / 32, 28 / 32, 12 / 32)]], 32)
    for epoch in range(5):
        warped, warped_mask = augment_batch(image, [0], seed=3, epoch=epoch, max_rotation=20, mode="strong",
                                            masks=masks)
        bright = warped[0, 0] > warped[0, 0].mean() + 0.2
        inside = warped_mask[0, 0] > 0.5
        if bright.sum() > 4:
            assert (bright & inside).sum() / bright.sum() > 0.7


def test_training_with_box_loss_runs_on_a_cam_architecture(tiny_data: Path, tmp_path: Path) -> None:
    from mura_core.training import TrainConfig, train

    config = TrainConfig(data=[str(tiny_data)], arch="mobilenet_v2", out=str(tmp_path / "box.pt"), image_size=32,
                         epochs=1, batch_size=8, progress=False, box_loss_weight=0.5, augment="strong")
    result = train(config)
    assert result.card.recipe["box_loss_weight"] == 0.5 and np.isfinite(result.history[0]["train_loss"])
    with pytest.raises(ValueError, match="pooled"):
        train(TrainConfig(data=[str(tiny_data)], arch="shallow_cnn", out=str(tmp_path / "no.pt"), image_size=32,
                          epochs=1, progress=False, box_loss_weight=0.5))


class ToyTokens(nn.Module):
    """A 3x3 grid of token features -> class token + position -> two pre-norm encoder layers -> Linear on the
    class token: the hybrid's head without its CNN."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 10, dim))
        self.blocks = nn.ModuleList([nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True,
                                                                norm_first=True) for _ in range(2)])
        self.head = nn.Linear(dim, 1)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls_token.expand(cells.shape[0], -1, -1), cells], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(tokens[:, 0])


def _toy_tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Abnormal grids hold a finding token in a random boxed cell AND a shortcut token in the top-left cell."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randn(n, 9, 16, generator=generator) * 0.5
    finding, shortcut = torch.zeros(16), torch.zeros(16)
    finding[:8], shortcut[8:] = 2.0, 2.0
    labels, boxes = torch.zeros(n), []
    for i in range(n):
        if i % 2 == 0:
            boxes.append([])
            continue
        cell = 1 + int(torch.randint(0, 8, (1,), generator=generator))
        cells[i, cell] += finding
        cells[i, 0] += shortcut
        labels[i] = 1.0
        row, col = divmod(cell, 3)
        boxes.append([(col / 3, row / 3, (col + 1) / 3, (row + 1) / 3)])
    return cells, labels, boxes


def _rollout_share_inside(model: ToyTokens, cells: torch.Tensor, labels: torch.Tensor, boxes: list) -> float:
    """Mean share of the class token's rollout over the patches that falls in the box, over abnormal grids."""
    capture = RolloutCapture()
    with torch.no_grad(), capture.on(model):
        model(cells)
        shares = capture.log_shares().exp()
    cover = nn.functional.adaptive_avg_pool2d(box_masks(boxes, 30).unsqueeze(1), (3, 3))[:, 0]
    inside = (shares * cover).flatten(1).sum(1) / shares.flatten(1).sum(1)
    return float(inside[labels > 0.5].mean())


def _fit_tokens(weight: float) -> tuple[float, float]:
    torch.manual_seed(0)
    cells, labels, boxes = _toy_tokens(64, seed=1)
    masks = box_masks(boxes, 30)
    model = ToyTokens()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    capture = RolloutCapture()
    with capture.on(model):
        for _ in range(120):
            loss = weighted_bce(model(cells)[:, 0], labels, torch.ones_like(labels))
            log_shares = capture.log_shares()
            if weight:
                loss = loss + weight * box_attention_loss(log_shares, masks, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    test_cells, test_labels, test_boxes = _toy_tokens(64, seed=2)
    with torch.no_grad():
        accuracy = float(((model(test_cells)[:, 0] > 0).float() == test_labels).float().mean())
    return _rollout_share_inside(model, test_cells, test_labels, test_boxes), accuracy


def test_box_loss_on_the_rollout_moves_the_class_token_attention_onto_the_finding() -> None:
    without, acc_without = _fit_tokens(0.0)
    with_box, acc_with = _fit_tokens(1.0)
    assert acc_without > 0.9 and acc_with > 0.9
    # the box is one of nine cells; the shortcut cell competes for the class token's attention
    assert with_box > 0.5 and with_box > 1.5 * without, (without, with_box)


def test_rollout_capture_matches_the_viewer_rollout_and_refuses_outside_its_block() -> None:
    from mura_core.explain.rollout import attention_rollout

    model = ToyTokens().eval()
    cells, _labels, _boxes = _toy_tokens(4, seed=3)
    capture = RolloutCapture()
    with capture.on(model):
        model(cells)
        shares = torch.softmax(capture.log_shares().flatten(1), dim=1)
    viewer_maps, _logits = attention_rollout(model, cells)
    viewer = torch.from_numpy(viewer_maps).flatten(1)
    torch.testing.assert_close(shares, viewer / viewer.sum(1, keepdim=True))
    assert all(not block._forward_pre_hooks for block in model.blocks)
    with pytest.raises(RuntimeError, match="outside"):
        capture.log_shares()


def test_training_a_hybrid_with_box_loss_adds_the_rollout_term(tiny_data: Path, tmp_path: Path) -> None:
    from mura_core.training import TrainConfig, train

    def one_epoch(weight: float) -> float:
        config = TrainConfig(data=[str(tiny_data)], arch="hybrid", out=str(tmp_path / f"hyb{weight}.pt"),
                             image_size=64, epochs=1, batch_size=8, progress=False, box_loss_weight=weight,
                             pretrained=False, seed=3)
        result = train(config)
        assert result.card.recipe["box_loss_weight"] == weight
        return result.history[0]["train_loss"]

    plain, boxed = one_epoch(0.0), one_epoch(1.0)
    # an abnormal image's 10 px box covers a quarter of one of the 2x2 token cells at 64 px (measured 0.44 -> 3.1)
    assert np.isfinite(boxed) and boxed > plain + 0.3, (plain, boxed)
