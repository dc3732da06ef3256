"""bench/side_by_side.py's arms on the CPU (issue #26): the studio's defaults and the tutorial
recipe, each from the same random weights, train the same first steps on the same rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.filterwarnings("ignore:Could not find a config file")  # peft, saving the recipe's adapter
def test_the_studio_and_the_plain_recipe_agree_on_the_same_rows(tmp_path, monkeypatch):
    from qlora_studio.core.training import runner

    monkeypatch.setattr(runner, "build_trainer", runner.build_trainer)  # the arms wrap it: undone after the test
    monkeypatch.syspath_prepend(str(BENCH))
    import side_by_side as sbs

    folder = sbs.shape_folder("tiny", tmp_path)
    lengths = sbs.row_lengths("b", 128, 0, 16, smoke=True)  # 16 rows of 128 tokens: 4 steps of 4 rows, no padding
    rows = sbs.make_rows("b", tmp_path, 128, lengths)
    plain = sbs.arm_plain(folder, rows, 128, 4, 0, tmp_path, epochs=1)
    studio = sbs.arm_studio(folder, rows, 128, 4, 0, tmp_path, {"train.experimental.sequential": True}, epochs=1)
    assert plain["status"] == studio["status"] == "trained"
    assert len(plain["losses"]) == len(studio["losses"]) == 4
    # the same weights and rows, adapters still zero: the first step's loss is the base model's on both
    # sides, but for the EOS that ends each row, which the recipe's collator leaves untrained (its pad
    # token is the EOS): one token in 127
    assert studio["losses"][0] == pytest.approx(plain["losses"][0], rel=1e-3)
    assert studio["losses"] == pytest.approx(plain["losses"], rel=0.02)
    sys.modules.pop("side_by_side", None)
