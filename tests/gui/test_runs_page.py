"""The runs page: list the output folder, replay a run's charts, overlay runs' loss curves."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import read_metrics
from PySide6.QtCore import Qt


def open_runs(window, qtbot, out):
    window.setup.widget("output_dir").setText(str(out))
    assert window.runs.output_dir == str(out)
    window.tabs.setCurrentWidget(window.runs)
    return window.runs


def test_lists_every_run_with_status_loss_settings_and_time(window, qtbot, two_runs):
    out, dirs = two_runs
    runs = open_runs(window, qtbot, out)
    model = runs.model
    assert model.rowCount() == 2
    by_name = {r.name: r for r in model.runs}
    assert set(by_name) == {"dq-on", "dq-off"}
    assert by_name["dq-on"].quantization == "4bit nf4 +DQ" and by_name["dq-off"].quantization == "4bit nf4"
    row = model.runs.index(by_name["dq-on"])
    cell = lambda col: model.data(model.index(row, col), Qt.ItemDataRole.DisplayRole)  # noqa: E731
    assert cell(1) == "finished" and cell(2) == "12/12"
    assert cell(3) == f"{read_metrics(dirs[0])[-1]['loss']:.4f}"
    assert cell(8) != "–"  # training time
    with qtbot.waitSignal(runs.refreshed):
        qtbot.mouseClick(runs.refresh_button, Qt.MouseButton.LeftButton)
    assert model.rowCount() == 2


def test_replay_loads_a_run_folder_into_the_monitor(window, qtbot, two_runs):
    out, dirs = two_runs
    runs = open_runs(window, qtbot, out)
    runs.select_paths([dirs[0]])
    assert runs.replay_button.isEnabled() and runs.resume_button.isEnabled()
    with qtbot.waitSignal(window.monitor.history_loaded, timeout=30_000):
        qtbot.mouseClick(runs.replay_button, Qt.MouseButton.LeftButton)
    monitor = window.monitor
    assert window.tabs.currentWidget() is monitor
    metrics = read_metrics(dirs[0])
    assert list(monitor.loss_chart.series["raw"].y) == [m["loss"] for m in metrics]
    assert len(monitor.lr_chart.series["lr"]) == 12 and len(monitor.grad_chart.series["grad"]) == 12
    evals = (Path(dirs[0]) / "evals.jsonl").read_text().splitlines()
    assert len(monitor.loss_chart.series["eval"]) == len(evals) >= 1
    x, _ = monitor.loss_chart.curves["raw"].getData()
    assert len(x) == 12
    assert monitor.header.title.text() == "dq-on" and monitor.status == "finished"
    assert monitor.header.progress.value() == 12 and "4-bit nf4 + double quant" in monitor.header.device.text()
    # Issue 12: a replay logged "Training on CPU" stamped with the current time; it shows the run's
    # own recorded lines with the times they happened
    import json
    import time

    started = next(json.loads(line) for line in (Path(dirs[0]) / "events.jsonl").read_text().splitlines()
                   if '"run_started"' in line)
    lines = monitor.log_text().splitlines()
    training = next(line for line in lines if "Training on" in line)
    assert training.startswith(time.strftime("%H:%M:%S", time.localtime(started["time"])))
    assert any("Finished at step 12 of 12" in line for line in lines)
    assert runs.resume_button.text() == "Train more…"  # finished: nothing to resume, more steps to train


def test_overlay_compares_two_runs_loss_curves(window, qtbot, two_runs):
    out, dirs = two_runs
    runs = open_runs(window, qtbot, out)
    with qtbot.waitSignal(runs.overlay_changed):
        runs.select_paths(dirs)
    assert not runs.replay_button.isEnabled()  # replay takes one run
    overlay = runs.overlay
    assert sorted(overlay.curves) == sorted(str(Path(d)) for d in dirs)
    for d in dirs:
        series = overlay.series[str(Path(d))]
        assert list(series.x) == list(range(1, 13))
        x, _ = overlay.curves[str(Path(d))].getData()
        assert len(x) == 12
    names = [label.text for _, label in overlay.legend.items]
    assert any("dq-on" in n and "+DQ" in n for n in names) and any("dq-off" in n and "+DQ" not in n for n in names)
    # the two runs trained the same data with the same seed: curves close, not identical
    on, off = (overlay.series[str(Path(d))].y for d in dirs)
    assert abs(on[-1] - off[-1]) < 0.5 * max(on[0], off[0])

    with qtbot.waitSignal(runs.overlay_changed):
        runs.select_paths([dirs[1]])
    assert len(overlay.curves) == 2  # one run: its train and eval curves
