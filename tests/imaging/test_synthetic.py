"""Generated out-of-scope images: deterministic, decodable, distinct per category."""
from __future__ import annotations

import numpy as np
import pytest

from mura_core.imaging.decode import decode_image
from mura_core.imaging.synthetic import CATEGORIES, generate, generate_set


@pytest.mark.parametrize("category", CATEGORIES)
def test_same_seed_same_bytes_and_decodes(category: str) -> None:
    name, data = generate(category, 7)
    assert generate(category, 7) == (name, data)
    assert generate(category, 8)[1] != data
    image = decode_image(data, name)
    assert image.pixels.ndim == 2 and float(image.pixels.std()) > 0.03


def test_categories_look_different() -> None:
    means = {c: decode_image(*reversed(generate(c, 1))).pixels.mean() for c in CATEGORIES}
    assert means["document"] > 0.8                       # a white page
    assert means["ct_mr"] < means["chest"]               # a round slice on black
    photo = generate("photo", 1)[1]
    assert photo[:3] == b"\xff\xd8\xff"                  # photographs come as JPEG, the rest as PNG


def test_generate_set_counts_and_unknown_category() -> None:
    items = generate_set(2, seed=3)
    assert [c for c, _, _ in items] == [c for c in CATEGORIES for _ in range(2)]
    assert len({data for _, _, data in items}) == len(items)
    with pytest.raises(ValueError):
        generate("banana", 1)
