"""Box-labelled training windows (`training.windows`)."""
from __future__ import annotations

import pytest
import torch

from mura_core.training.windows import (
    ON_BOX_CHANCE,
    WHOLE_CHANCE,
    WINDOW_SHARE,
    draw_window,
    place_window,
    window_label,
)

BOX = (0.60, 0.60, 0.70, 0.70)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_window_is_abnormal_only_when_it_holds_half_a_box() -> None:
    assert window_label([BOX], 0.5, 0.5, 0.4) == 1.0            # the whole box inside
    assert window_label([BOX], 0.0, 0.0, 0.4) == 0.0            # far from it
    assert window_label([BOX], 0.0, 0.0, 0.68) == 1.0           # 0.64 of its area inside
    assert window_label([BOX], 0.0, 0.0, 0.64) == 0.0           # 0.16 of its area inside
    assert window_label([], 0.0, 0.0, 1.0) == 0.0
    # a box larger than the window counts when it covers half the window
    assert window_label([(0.0, 0.0, 1.0, 1.0)], 0.3, 0.3, 0.4) == 1.0


def test_windows_stay_inside_the_image_and_most_aim_at_a_box() -> None:
    draws = [place_window(torch.rand(5, generator=_generator(i)).tolist(), [BOX]) for i in range(400)]
    assert all(WINDOW_SHARE[0] <= side <= WINDOW_SHARE[1] and 0 <= x0 <= 1 - side + 1e-9 and 0 <= y0 <= 1 - side + 1e-9
               for x0, y0, side in draws)
    holding = sum(window_label([BOX], *draw) for draw in draws) / len(draws)
    assert holding > ON_BOX_CHANCE - 0.05                       # every aimed window holds the box
    unboxed = [place_window(torch.rand(5, generator=_generator(i)).tolist(), []) for i in range(400)]
    assert min(x0 for x0, _, _ in unboxed) < 0.02 and max(x0 + side for x0, _, side in unboxed) > 0.98


def test_a_window_is_cut_where_it_was_placed_and_enlarged() -> None:
    image = torch.zeros(100, 100, dtype=torch.uint8)
    image[60:70, 60:70] = 255                                    # the boxed finding
    for seed in range(30):
        window, label = draw_window(image, 1.0, [BOX], _generator(seed), 48)
        assert window.shape == (48, 48) and window.dtype == torch.uint8
        assert label == float(window.max() > 200) or window.float().mean() < 3  # a finding seen <=> labelled
        again, same_label = draw_window(image, 1.0, [BOX], _generator(seed), 48)
        assert torch.equal(window, again) and label == same_label


def _shrunk(image: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(image[None, None].float(), size=(size, size), mode="bilinear",
                                           align_corners=False, antialias=True)[0, 0].round().to(torch.uint8)


@pytest.mark.parametrize("label, boxes, always_whole", [(0.0, [BOX], False), (0.0, [], False), (1.0, [BOX], False),
                                                        (1.0, [], True)])
def test_some_draws_show_the_whole_image_with_its_label(label: float, boxes: list, always_whole: bool) -> None:
    """A share of the draws is the whole image; an abnormal image without boxes always is. Normal images give
    normal windows."""
    image = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64).div(16).to(torch.uint8)
    whole = 0
    for seed in range(300):
        window, got = draw_window(image, label, boxes, _generator(seed), 32)
        assert window.shape == (32, 32) and (got == 0.0 if label == 0.0 else got in (0.0, 1.0))
        if torch.equal(window, _shrunk(image, 32)):
            whole += 1
            assert got == label
    assert whole == 300 if always_whole else abs(whole / 300 - WHOLE_CHANCE) < 0.08
