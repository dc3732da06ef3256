"""Issue 12, the first hour: labels that said untrue or stale things, settings the mouse wheel
changed, a window wider than its screen."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QAbstractSpinBox, QApplication, QComboBox, QLabel

from qlora_studio.core.runs import events as ev


def step(n: int, total: int) -> ev.StepLogged:
    return ev.StepLogged(ev.StepMetrics(step=n, epoch=n / total, loss=2.0, learning_rate=1e-4, grad_norm=1.0,
                                        tokens=n * 100, tokens_per_s=100.0, elapsed_s=n * 1.0, micro_batch_size=4,
                                        grad_accum=1), total)


def test_labels_follow_what_happens(window, qtbot, tmp_path):
    from qlora_studio.core.config import load_config
    from qlora_studio.core.runs.store import RunFolder, list_runs
    from qlora_studio.resources import PRESETS

    setup, monitor = window.setup, window.monitor
    # the preset box names a preset only while Setup holds it (it said "12gb-mistral-7b" over the demo)
    assert setup.preset_combo.currentIndex() == -1 and setup.preset_combo.currentText() == ""
    setup._show_preset(load_config(PRESETS / "demo.yaml").with_overrides({"output_dir": str(tmp_path)}))
    assert setup.preset_combo.currentText() == "demo"
    setup._show_preset(setup.config)
    assert setup.preset_combo.currentIndex() == -1

    # a running run: the Runs row and the status bar follow each step and "+ steps" (not "Steps 0",
    # not "step 8 / 72" after the plan became 82)
    config = setup.config.with_overrides({"output_dir": str(tmp_path / "runs"), "run_name": "live"})
    folder = RunFolder.create(config)
    folder.mark_running(0)
    window.runs.set_output_dir(str(tmp_path / "runs"))
    window.runs.refresh()
    monitor.begin_live("live")
    monitor.run_dir = str(folder.path)
    for n in range(1, 9):
        window._on_event(step(n, 72))
    row = [r.name for r in window.runs.model.runs].index("live")
    cell = window.runs.model.data(window.runs.model.index(row, 2), Qt.ItemDataRole.DisplayRole)
    assert cell == "8/72" and list_runs(tmp_path / "runs")[0].step == 0  # shown before status.json says so
    window._on_event(ev.SettingsChanged(8, "extended", {"max_steps": [72, 82]}, "extended from 72 to 82 steps"))
    assert window.state_label.text() == "Training: step 8 / 82"
    assert monitor.header.progress.maximum() == 82
    assert window.runs.model.data(window.runs.model.index(row, 2), Qt.ItemDataRole.DisplayRole) == "8/82"

    # a run that fails before its first step: the progress bar no longer says "loading…"
    monitor.begin_live("doomed")
    monitor.handle_event(ev.Preparing("tokenize", "tokenizing 100 / 400 rows", 100, 400))
    assert monitor.header.progress.text().startswith("tokenizing 100 / 400 rows")
    monitor.handle_event(ev.Failed("data.path: bad", "", None, None, ev.FailureCause.DATA))
    monitor.end_live("failed")
    assert monitor.header.progress.text() == "failed before the first step"


def test_make_it_fit_message_holds_only_for_what_it_answered(window, qtbot):
    memory = window.setup.memory
    memory.select_budget(8.0)
    with qtbot.waitSignal(memory.fitted, timeout=60_000):
        memory.make_it_fit()
    assert memory.message.isVisibleTo(window) and memory.message.text()
    memory.select_budget(12.0)  # another budget: the answer was about 8 GB
    assert not memory.message.isVisibleTo(window)
    with qtbot.waitSignal(memory.fitted, timeout=60_000):
        memory.make_it_fit()
    assert memory.message.isVisibleTo(window)
    window.setup.widget("lora.r").setValue(32)  # another config (model, preset, any setting)
    assert not memory.message.isVisibleTo(window)


def test_the_wheel_changes_no_setting_it_passes_over(window):
    """Issue 12: scrolling the Setup form set LoRA rank 8 -> 1 when the pointer crossed a spin box.
    Every spin and combo box in the window takes the wheel only when focused."""
    boxes = [w for w in window.findChildren(QAbstractSpinBox) + window.findChildren(QComboBox) if w.isEnabled()]
    assert len(boxes) >= 20
    window.activateWindow()
    for box in boxes:
        box.clearFocus()
        before = box.value() if isinstance(box, QAbstractSpinBox) else box.currentIndex()
        centre = QPointF(box.rect().center())
        wheel = QWheelEvent(centre, QPointF(box.mapToGlobal(box.rect().center())), QPoint(0, 0), QPoint(0, -120),
                            Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase,
                            False)
        QApplication.sendEvent(box, wheel)
        after = box.value() if isinstance(box, QAbstractSpinBox) else box.currentIndex()
        assert after == before, f"the wheel changed {box.objectName() or type(box).__name__}"
    rank = window.setup.widget("lora.r")
    rank.setFocus()
    if rank.hasFocus():  # a focused box still takes the wheel (offscreen windows may not take focus)
        before = rank.value()
        QApplication.sendEvent(rank, QWheelEvent(QPointF(5, 5), QPointF(5, 5), QPoint(0, 0), QPoint(0, -120),
                                                 Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                                                 Qt.ScrollPhase.NoScrollPhase, False))
        assert rank.value() != before


def test_long_errors_wrap_instead_of_widening_the_window(window, qtbot):
    """Issue 12: a long one-line error pushed the window from 1400 to 1700+ px, off a 1600 px
    screen. Every label that can show an error wraps; the window's minimum width stays what a
    1024 px screen can hold."""
    long = "model.name_or_path: " + "a-very-long-reason-without-spaces-" * 6 + " and then " + "words " * 60
    setup = window.setup
    setup.model.info_label.setText(f"<span style='color:#b91c1c'>{long}</span>")
    setup.memory.total_label.setText(f"No estimate: {long}")
    setup.memory.dq_label.setText(long)
    setup.memory.message.setText(long)
    setup.memory.message.show()
    setup.xray.summary.setText(long)
    window.monitor.header.device.setText(long)
    window.runs.folder_label.setText("/home/someone/" + "deeply/nested/folder/" * 12)
    QApplication.processEvents()
    assert window.minimumSizeHint().width() <= 1000, window.minimumSizeHint()
    unwrapped = [label.objectName() or label.text()[:40] for label in window.findChildren(QLabel)
                 if not label.wordWrap() and label.sizeHint().width() > 600]
    assert unwrapped == []
