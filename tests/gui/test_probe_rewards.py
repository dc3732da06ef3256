"""GRPO's probes: each sampled answer shows the rewards training gives it."""

from __future__ import annotations

from qlora_studio.core.runs import events as ev
from qlora_studio.gui.widgets.probe_grid import ProbeGrid


def test_grpo_probe_answers_show_their_rewards(qtbot):
    grid = ProbeGrid()
    qtbot.addWidget(grid)
    grid.clear(["What is 2+2?", "What is 3+3?"])
    answers = [{"prompt": "What is 2+2?", "reply": "4", "tokens": 2, "stopped": True,
                "rewards": {"exact_match": None, "length": 1.0, "total": 0.5}},
               {"prompt": "What is 3+3?", "reply": "six", "tokens": 2, "stopped": True}]  # no rewards: another method
    grid.add(ev.ProbesAnswered(10, False, answers, 0.1))
    assert grid.table.item(0, 0).text() == "4\n[reward 0.50 · exact_match – · length 1.00]"
    assert grid.table.item(1, 0).text() == "six"
