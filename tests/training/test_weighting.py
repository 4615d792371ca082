"""Class weights, losses and source-balanced sampling."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from mura_core.training.weighting import (
    EpochSampler,
    class_weight_table,
    focal_loss,
    sample_weights,
    smooth_labels,
    source_sampling_weights,
    weight_keys,
    weighted_bce,
)


def test_class_weights_follow_mura_per_body_part_with_global_fallback() -> None:
    labels = [1, 1, 1, 0, 1, 0, 0, 0, 1]
    parts = ["WRIST", "WRIST", "WRIST", "WRIST", "ELBOW", "UNKNOWN", "UNKNOWN", "UNKNOWN", "HAND"]
    table, fallbacks = class_weight_table(labels, parts)
    assert table["WRIST"] == pytest.approx((0.75, 0.25))  # |A| = 3, |N| = 1
    assert table["default"] == pytest.approx((5 / 9, 4 / 9))  # |A| = 5, |N| = 4
    assert sorted(fallbacks) == ["ELBOW", "HAND", "UNKNOWN"]
    w = sample_weights(torch.tensor([1.0, 0.0, 1.0]), ["WRIST", "UNKNOWN", "ELBOW"], table)
    torch.testing.assert_close(w, torch.tensor([0.25, 5 / 9, 4 / 9]))
    none, _ = class_weight_table(labels, parts, "none")
    assert none == {"default": (1.0, 1.0)}


def test_class_weights_per_source_fall_back_to_the_source_before_the_global_row() -> None:
    labels = [1, 0, 0, 0, 1, 1, 1, 0]
    chains = [weight_keys("a", "HAND")] * 2 + [weight_keys("a", "LEG")] * 2 + [weight_keys("b", "UNKNOWN")] * 3 \
        + [weight_keys("b", "WRIST")]
    table, fallbacks = class_weight_table(labels, chains)
    assert table["a:HAND"] == pytest.approx((0.5, 0.5))
    assert "a:LEG" in fallbacks and table["a"] == pytest.approx((0.25, 0.75))
    assert table["b"] == pytest.approx((0.75, 0.25))
    w = sample_weights(torch.tensor([0.0, 1.0]), [weight_keys("a", "LEG"), weight_keys("b", "UNKNOWN")], table)
    torch.testing.assert_close(w, torch.tensor([0.25, 0.25]))


def test_losses_and_smoothing() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 0.0])
    weights = torch.tensor([0.2, 0.8, 1.0])
    expected = (weights * torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels, reduction="none")).mean()
    torch.testing.assert_close(weighted_bce(logits, labels, weights), expected)
    torch.testing.assert_close(focal_loss(logits, labels, weights, gamma=0.0), expected)
    assert focal_loss(logits, labels, weights, gamma=2.0) < expected
    torch.testing.assert_close(smooth_labels(labels, 0.1), torch.tensor([0.95, 0.05, 0.05]))


def test_source_balance_gives_a_small_source_its_share() -> None:
    sources = ["big"] * 90 + ["small"] * 10
    draws = EpochSampler(source_sampling_weights(sources, 1.0), len(sources), seed=0)
    counts = Counter(sources[i] for epoch in range(5) for i in (draws.set_epoch(epoch) or list(draws)))
    assert 0.4 < counts["small"] / sum(counts.values()) < 0.6
    uniform = EpochSampler(None, len(sources), seed=0)
    assert sorted(uniform) == list(range(100))  # a plain shuffle without weights


def test_epoch_sampler_shards_by_rank_without_overlap() -> None:
    ranks = [list(EpochSampler(None, 11, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    assert set(ranks[0]) | set(ranks[1]) == set(range(11))
