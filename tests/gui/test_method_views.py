"""Training methods in the window: Setup edits train.method and only the chosen method's settings
(GRPO's rewards and the python-reward consent included), the data format follows the method, and
the Monitor draws the method's charts from live events and from a replayed run folder."""

from __future__ import annotations

import numpy as np
from method_events import feed_run, method_values, record_run
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from qlora_studio.core.config import RunConfig, field_help
from qlora_studio.core.config.methods import (
    METHOD_FORMATS,
    METHOD_SUMMARIES,
    METHODS,
    DpoSettings,
    GrpoSettings,
    RewardSettings,
)
from qlora_studio.core.training.methods import METHOD_CHARTS, preset_curves
from qlora_studio.gui.pages.monitor_page import MonitorPage
from qlora_studio.gui.pages.setup_method import METHOD_KEYS

DATE = r"\d{4}-\d{2}-\d{2}"


def pick(setup, qtbot, method: str) -> None:
    qtbot.mouseClick(setup.widget("train.method").buttons[method], Qt.MouseButton.LeftButton)
    assert setup.config.train.method == method, setup.problem_label.text()


def format_items(setup) -> list[str]:
    combo = setup.widget("data.format")
    return [combo.itemText(i) for i in range(combo.count())]


def answer_next_box(button: QMessageBox.StandardButton, seen: list[str]) -> None:
    """Click `button` of the next modal message box, noting its text."""
    def click() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(10, click)
            return
        seen.append(box.text())
        box.button(button).click()

    QTimer.singleShot(0, click)


def test_each_methods_settings_are_all_in_the_form():
    for method in METHODS[1:]:
        fields = set(type(getattr(RunConfig().train, method)).model_fields) - {"rewards", "allow_python_rewards"}
        assert {key.rsplit(".", 1)[1] for key, _ in METHOD_KEYS[method]} == fields


def test_setup_shows_only_the_chosen_methods_settings_and_writes_them(window, qtbot):
    setup = window.setup
    box = setup.groups.method
    assert setup.config.train.method == "sft" and not any(box.sections[m].isVisible() for m in METHODS[1:])
    # the picker explains each method; the line under it, the chosen one
    assert box.picker.buttons["kto"].toolTip() == METHOD_SUMMARIES["kto"]
    pick(setup, qtbot, "dpo")
    assert METHOD_SUMMARIES["dpo"][1:] in box.summary.text()
    assert [m for m in METHODS if box.sections[m].isVisible()] == ["dpo"]
    beta = setup.widget("train.dpo.beta")
    assert beta.isVisible() and not setup.widget("train.grpo.num_generations").isVisible()
    assert beta.toolTip() == field_help("train.dpo.beta")  # the schema's docs, as everywhere in the form
    beta.setValue(0.25)
    setup.widget("train.dpo.loss_type").setCurrentText("ipo")
    assert setup.config.train.dpo == DpoSettings(beta=0.25, loss_type="ipo")

    pick(setup, qtbot, "grpo")
    assert [m for m in METHODS if box.sections[m].isVisible()] == ["grpo"]
    setup.widget("train.grpo.num_generations").setValue(4)
    rewards = setup.widget("train.grpo.rewards")
    qtbot.mouseClick(rewards.add_button, Qt.MouseButton.LeftButton)
    row = rewards.rows[-1]
    row.bindings["preset"].widget.setCurrentText("regex")
    assert not setup.valid and "the regex reward needs a pattern" in setup.problem_label.text()  # core's word
    qtbot.keyClicks(row.bindings["pattern"].widget, DATE)
    row.bindings["weight"].widget.setValue(0.5)
    assert setup.valid, setup.problem_label.text()
    grpo = setup.config.train.grpo
    assert grpo.num_generations == 4
    assert grpo.rewards == [RewardSettings(), RewardSettings(preset="regex", pattern=DATE, weight=0.5)]
    assert not row.bindings["min_chars"].widget.isEnabled()  # what the preset does not read is greyed out
    row.bindings["preset"].widget.setCurrentText("length")
    assert not setup.valid  # a length reward needs bounds
    row.bindings["max_chars"].widget.setValue(40)
    assert setup.valid and setup.config.train.grpo.rewards[1].max_chars == 40
    row.bindings["preset"].widget.setCurrentText("regex")

    # the config round-trips: shown again after a preset, the editors give back the same config
    edited = setup.config
    setup.apply_preset("demo")
    assert setup.config.train.method == "sft" and len(rewards.rows) == 1
    setup.set_config(edited)
    assert len(rewards.rows) == 2 and rewards.rows[1].bindings["pattern"].widget.text() == DATE
    assert [m for m in METHODS if box.sections[m].isVisible()] == ["grpo"]
    read_back = {key: b.get() for key, b in setup.bindings.items() if key.startswith("train.")}
    assert setup.config.with_overrides(read_back) == edited

    # a reward can go, the last one cannot
    qtbot.mouseClick(rewards.rows[1].remove_button, Qt.MouseButton.LeftButton)
    assert setup.config.train.grpo.rewards == [RewardSettings()]
    assert not rewards.rows[0].remove_button.isEnabled()


def test_grpo_settings_show_while_core_rejects_them_and_the_fix_takes(window, qtbot):
    setup = window.setup
    setup.set_config(setup.config.with_overrides({"train.micro_batch_size": 4, "train.grad_accum": 1}))
    qtbot.mouseClick(setup.widget("train.method").buttons["grpo"], Qt.MouseButton.LeftButton)
    # 8 answers per prompt cannot share a step of 4 rows: core says so, and the settings to fix it show
    assert setup.config.train.method == "sft" and "num_generations (8) must divide" in setup.problem_label.text()
    assert setup.groups.method.sections["grpo"].isVisible() and not window.start_action.isEnabled()
    setup.widget("train.grpo.num_generations").setValue(4)
    assert setup.valid and setup.config.train.method == "grpo" and setup.config.train.grpo.num_generations == 4


def test_the_format_combo_offers_the_methods_formats(window, qtbot):
    setup = window.setup
    combo = setup.widget("data.format")
    assert format_items(setup) == ["auto", *METHOD_FORMATS["sft"]]
    combo.setCurrentText("messages")
    assert setup.config.data.format == "messages"
    pick(setup, qtbot, "dpo")  # messages rows do not fit DPO: back to auto, not a rejected edit
    assert setup.valid and setup.config.data.format == "auto" and combo.currentText() == "auto"
    assert format_items(setup) == ["auto", "preference"]
    combo.setCurrentText("preference")
    assert setup.config.data.format == "preference"
    pick(setup, qtbot, "kto")  # KTO splits pairs: the format stays
    assert format_items(setup) == ["auto", *METHOD_FORMATS["kto"]] and setup.config.data.format == "preference"
    pick(setup, qtbot, "sft")
    assert setup.config.data.format == "auto" and format_items(setup) == ["auto", *METHOD_FORMATS["sft"]]
    # a loaded config shows its method's formats
    setup.set_config(setup.config.with_overrides({"train.method": "orpo", "data.format": "preference"}))
    assert format_items(setup) == ["auto", "preference"] and combo.currentText() == "preference"
    assert setup.widget("train.method").buttons["orpo"].isChecked()


def test_a_python_reward_runs_only_after_an_explicit_yes(window, qtbot):
    setup = window.setup
    box = setup.groups.method
    pick(setup, qtbot, "grpo")
    assert not box.python_warning.isVisible() and not box.allow_python.isVisible()
    rewards = setup.widget("train.grpo.rewards")
    qtbot.mouseClick(rewards.add_button, Qt.MouseButton.LeftButton)
    row = rewards.rows[-1]
    row.bindings["preset"].widget.setCurrentText("python")
    assert row.bindings["function"].widget.isVisible() and not row.bindings["pattern"].widget.isVisible()
    qtbot.keyClicks(row.bindings["function"].widget, "rewards.py:brevity")
    assert setup.config.train.grpo.rewards[1] == RewardSettings(preset="python", function="rewards.py:brevity")
    assert box.python_warning.isVisible() and "runs your own code (rewards.py:brevity)" in box.python_warning.text()
    allow = setup.widget("train.grpo.allow_python_rewards")
    assert allow.isVisible() and not allow.isChecked()
    assert "Allow Python rewards" in setup.start_blocker and not window.start_action.isEnabled()

    seen: list[str] = []
    answer_next_box(QMessageBox.StandardButton.No, seen)
    qtbot.mouseClick(allow, Qt.MouseButton.LeftButton)
    assert len(seen) == 1 and "rewards.py:brevity" in seen[0]
    assert not allow.isChecked() and not setup.config.train.grpo.allow_python_rewards

    answer_next_box(QMessageBox.StandardButton.Yes, seen)
    qtbot.mouseClick(allow, Qt.MouseButton.LeftButton)
    assert len(seen) == 2 and allow.isChecked() and setup.config.train.grpo.allow_python_rewards
    assert "python" not in setup.start_blocker and "allowed in this config" in box.python_warning.text()

    qtbot.mouseClick(allow, Qt.MouseButton.LeftButton)  # taking the yes back asks nothing
    assert len(seen) == 2 and not setup.config.train.grpo.allow_python_rewards
    # a config that allows them (a file the user wrote) sets the box without asking
    setup.set_config(setup.config.with_overrides({"train.grpo.allow_python_rewards": True}))
    assert len(seen) == 2 and allow.isChecked()


def shown_monitor(qtbot) -> MonitorPage:
    monitor = MonitorPage()
    qtbot.addWidget(monitor)
    monitor.resize(1400, 900)
    monitor.show()
    monitor.board.stop()  # frames are drawn by flush() here
    return monitor


def curve(chart, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The points handed to the curve (getData() gives those drawn: clipped to the view, downsampled)."""
    item = chart.curves[key]
    return np.asarray(item.xData), np.asarray(item.yData)


def expected(method: str, key: str, steps: int) -> np.ndarray:
    return np.array([method_values(method, s)[key] for s in range(1, steps + 1)])


def assert_dpo_charts(monitor, steps: int) -> None:
    method_charts = monitor.charts.method_charts
    assert method_charts.isVisible()
    charts = method_charts.charts
    assert list(charts) == [chart.title for chart in METHOD_CHARTS["dpo"]]
    rewards = charts["Rewards: chosen vs rejected"]
    x, y = curve(rewards, "rewards/margins")
    assert list(x) == list(range(1, steps + 1)) and np.allclose(y, expected("dpo", "rewards/margins", steps))
    assert np.allclose(curve(rewards, "rewards/chosen")[1], expected("dpo", "rewards/chosen", steps))
    x, y = curve(charts["Preference accuracy"], "rewards/accuracies")
    assert len(x) == steps and np.allclose(y, expected("dpo", "rewards/accuracies", steps))
    assert [p.caption.text() for p in method_charts.panels] == [chart.better for chart in METHOD_CHARTS["dpo"]]
    assert all(p.caption.isVisible() for p in method_charts.panels)


def test_the_monitor_draws_a_dpo_runs_margin_and_accuracy(qtbot):
    monitor = shown_monitor(qtbot)
    feed_run(monitor, "dpo", steps=30)
    assert_dpo_charts(monitor, 30)
    assert len(monitor.loss_chart.series["raw"]) == 30  # the loss chart is fed as for SFT
    feed_run(monitor, "sft", steps=5)  # an SFT run after it: no method charts
    assert not monitor.charts.method_charts.isVisible() and monitor.charts.method_charts.panels == []


def test_the_monitor_draws_one_curve_per_grpo_reward(qtbot):
    monitor = shown_monitor(qtbot)
    feed_run(monitor, "grpo", steps=20)
    charts = monitor.charts.method_charts.charts
    assert list(charts) == [chart.title for chart in METHOD_CHARTS["grpo"]]
    by_preset = charts["Reward by preset"]
    assert sorted(by_preset.curves) == ["exact_match", "format"]
    assert sorted(label.text for _, label in by_preset.legend.items) == ["exact_match", "format"]
    for name in ("exact_match", "format"):
        x, y = curve(by_preset, name)
        want = [preset_curves(method_values("grpo", s))[name] for s in range(1, 21)]
        assert list(x) == list(range(1, 21)) and np.allclose(y, want)
    assert np.allclose(curve(charts["Reward"], "reward")[1], expected("grpo", "reward", 20))
    assert np.allclose(curve(charts["Answer length"], "completions/mean_length")[1],
                       expected("grpo", "completions/mean_length", 20))


def test_a_replayed_run_draws_the_same_charts_and_the_runs_table_names_its_method(qtbot, tmp_path):
    from qlora_studio.core.runs.store import RunFolder
    from qlora_studio.gui.pages.runs_page import RunsPage

    dpo = record_run(tmp_path, "dpo", steps=12)
    record_run(tmp_path, "sft", steps=3)
    assert '"method"' in (dpo / "metrics.jsonl").read_text().splitlines()[0]
    monitor = shown_monitor(qtbot)
    monitor.load_history(RunFolder(dpo).history())
    assert_dpo_charts(monitor, 12)

    runs = RunsPage()
    qtbot.addWidget(runs)
    runs.set_output_dir(str(tmp_path))
    model = runs.model
    column = model.COLUMNS.index("Method")
    assert {model.index(r, 0).data(): model.index(r, column).data() for r in range(model.rowCount())} == {
        "dpo-run": "DPO", "sft-run": "SFT"}
    with qtbot.waitSignal(runs.overlay_changed):
        runs.select_paths([dpo])
    assert runs.overlay.legend.items[0][1].text == "dpo-run · 4bit nf4 +DQ · r16 all-linear · DPO"  # not an SFT loss


def test_grpo_settings_default_to_one_exact_match_reward():
    # what a fresh GRPO form shows: core's default list, one row
    assert GrpoSettings().rewards == [RewardSettings()]
