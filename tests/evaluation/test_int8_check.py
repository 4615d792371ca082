"""`evaluation.int8_check` and ``python -m mura_core int8-check``: float32 vs int8 scores on the same images,
the int8 ranges calibrated on the train split. Tiny random-weight models on the CPU (seconds)."""
from __future__ import annotations

from pathlib import Path

import pytest

from mura_core.commands import SUBCOMMANDS
from mura_core.commands import int8_check as check_cli
from mura_core.evaluation.int8_check import compare_float_int8
from mura_core.explain.quantize import QuantizeError, engine_available
from mura_core.models.weights import load_weights

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not engine_available("x86"), reason="this torch build has no x86 (fbgemm) quantised engine"),
]


def test_comparison_scores_every_readable_valid_image_with_both(int8_weights: Path, int8_data: Path) -> None:
    result = compare_float_int8(load_weights("tiny", weights_dir=int8_weights), int8_data, split="valid",
                                calibration_count=4, progress=False)
    assert 1 <= result.calibration <= 4 and result.images >= 1      # the tiny train split has fewer than 4
    assert 0.0 <= result.mean_abs_diff <= result.max_abs_diff < 0.2
    assert 0 <= result.flips <= result.images and result.float_s > 0 and result.int8_s > 0
    assert any("AUC float32" in line for line in result.lines())


def test_comparing_the_calibration_split_is_refused(int8_weights: Path, int8_data: Path) -> None:
    with pytest.raises(QuantizeError, match="other than train"):
        compare_float_int8(load_weights("tiny", weights_dir=int8_weights), int8_data, split="train", progress=False)


def test_int8_check_command_prints_the_comparison(capsys, int8_weights: Path, int8_data: Path) -> None:
    assert SUBCOMMANDS["int8-check"][0] == "mura_core.commands.int8_check"
    code = check_cli.cli_main(["--weights-dir", str(int8_weights), "--data", str(int8_data), "--split", "valid",
                               "--calibration-images", "4", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("tiny (shallow_cnn") and "|delta probability|: max" in out and "AUC float32" in out
    assert check_cli.cli_main(["--weights-dir", str(int8_weights), "--weights", "tok", "--data", str(int8_data),
                               "--calibration-images", "2", "--no-progress"]) == 2
    assert "'hybrid'" in capsys.readouterr().err
