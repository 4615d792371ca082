"""Tests for mura_core.explain.sanity: randomised copies and the Adebayo et al. similarity check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_core.explain.sanity import (CASCADE_LEVELS, parameterised_layers, randomised_copy, rank_correlation,
                                      sanity_check)
from tests.explain.test_cams import TOY_SPEC, ToyCNN, _hooks, _square_batch, trained_toy  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> list[bool]:
    return [not all(torch.equal(p, q) for p, q in zip(la.parameters(), lb.parameters()))
            for la, lb in zip(parameterised_layers(a), parameterised_layers(b))]


def test_layers_listed_from_the_output():
    model = ToyCNN()
    layers = parameterised_layers(model)
    assert layers[0] is model.classifier and layers[-1] is model.features[0]


def test_cascade_randomises_from_the_top_and_leaves_the_original(trained_toy):
    before = [p.clone() for p in trained_toy.parameters()]
    top = randomised_copy(trained_toy, 0.0)
    assert _changed(trained_toy, top) == [True, False, False, False]  # the logit layer only
    assert _changed(trained_toy, randomised_copy(trained_toy, 0.5)) == [True, True, False, False]
    assert all(_changed(trained_toy, randomised_copy(trained_toy, 1.0)))
    assert all(torch.equal(p, q) for p, q in zip(before, trained_toy.parameters()))
    assert sorted(CASCADE_LEVELS.values()) == list(CASCADE_LEVELS.values())


def test_rank_correlation_bounds():
    a = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.zeros((4, 4))) == 0.0


@pytest.mark.parametrize("method", ["cam", "gradcam", "layercam"])
def test_sanity_check_separates_trained_from_randomised(trained_toy, method):
    """Maps of the trained toy find the square; after full randomisation they no longer match them."""
    gen = torch.Generator().manual_seed(77)
    x, y, _ = _square_batch(12, gen)
    similarities = []
    for i in [i for i in range(12) if y[i] > 0][:4]:
        result = sanity_check(trained_toy, TOY_SPEC, x[i:i + 1], [method], level=1.0)[method]
        assert result.trained.shape == result.randomised.shape == (32, 32)
        similarities.append(result.similarity)
        # the same model compared with itself is identical: the score can tell the two cases apart
        same = sanity_check(trained_toy, TOY_SPEC, x[i:i + 1], [method], level=0.0)[method]
        assert rank_correlation(same.trained, result.trained) == pytest.approx(1.0)
    assert np.mean(similarities) < 0.5, f"{method}: randomised maps still similar ({similarities})"
    assert _hooks(trained_toy) == 0


def test_sanity_check_wants_one_image(trained_toy):
    with pytest.raises(ValueError):
        sanity_check(trained_toy, TOY_SPEC, torch.zeros(2, 3, 32, 32), ["cam"])
