"""Training from the window: a real tiny-model run on a QThread, steering, failures, quitting."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest
import shiboken6
from gui_helpers import collect_events, read_metrics, run_to_end
from PySide6.QtCore import QCoreApplication, QEvent, QThread

from qlora_studio.core.runs import events as ev
from qlora_studio.core.runs.store import RunFolder


def test_a_tiny_run_completes_and_the_charts_hold_its_points(window, qtbot, tiny_config):
    probes = ["Normalize the date: March 5, 2021", "Date: June 21, 2021\nGive it as YYYY-MM-DD."]
    window.setup.set_config(tiny_config.with_overrides({"probes": probes, "train.probe_max_new_tokens": 6}))
    events = collect_events(window)
    grid_while_running = []  # (its column, columns shown, monitor status) as each probe round is handed on
    window.controller.event.connect(lambda e: isinstance(e, ev.ProbesAnswered) and grid_while_running.append(
        (e.label, list(window.monitor.probes.labels), window.monitor.status)))
    result = run_to_end(qtbot, window, window.start_action.trigger)
    assert result.status == "finished", result.error
    assert window.tabs.currentWidget() is window.monitor

    monitor = window.monitor
    steps = [e for e in events if isinstance(e, ev.StepLogged)]
    assert len(steps) == 12
    assert list(monitor.loss_chart.series["raw"].x) == list(range(1, 13))
    assert len(monitor.smoothed) == 12 and len(monitor.lr_chart.series["lr"]) == 12
    assert len(monitor.tps_chart.series["tps"]) == 12 and len(monitor.grad_chart.series["grad"]) == 12
    assert len(monitor.loss_chart.series["eval"]) >= 1
    x, y = monitor.loss_chart.curves["raw"].getData()
    assert len(x) == 12  # drawn, not just buffered
    assert monitor.header.progress.value() == 12 and monitor.header.progress.maximum() == 12
    assert monitor.status == "finished" and monitor.header.badge.text() == "finished"
    assert monitor.header.stat_loss.value.text() == f"{steps[-1].metrics.loss:.4f}"
    log = monitor.log_text()
    assert "checkpoint saved" in log and "Finished at step 12" in log
    assert "CPU run" in monitor.vram_chart._message.toPlainText()  # no GPU here: said, not drawn

    # the taste test: a column per checkpoint, live, with the answers of probes.jsonl
    columns = ["base", "step 5", "step 10", "step 12"]
    # each round's column is on the grid by the time its event is handed on (events cross in batches, so a
    # later round of the same batch may already be there too)
    assert [label for label, _, _ in grid_while_running] == columns
    assert all(shown[:columns.index(label) + 1] == columns[:columns.index(label) + 1]
               for label, shown, _ in grid_while_running)
    # live: the first rounds came while the run was running (the last ones may share Finished's batch)
    assert all(status == "running" for _, _, status in grid_while_running[:2])
    grid = monitor.probes
    assert grid.prompts == probes and grid.table.columnCount() == 4 and grid.table.rowCount() == 2
    recorded = RunFolder(result.run_dir).history().probes
    assert grid.answer(1, "step 12") == recorded[-1].answers[1]["reply"]
    assert "eval" in grid.table.horizontalHeaderItem(1).text()  # the eval loss of that step beside the answers

    # the runs page refreshed itself when the run ended
    assert [r.name for r in window.runs.model.runs] == [Path(result.run_dir).name]
    assert window.runs.model.runs[0].status == "finished"
    assert window.start_action.isEnabled() and not window.pause_action.isEnabled()

    # nothing holds the model after the run (earlier tests' survivors included: conftest froze them)
    gc.unfreeze()
    gc.collect()
    from peft import PeftModel

    assert not [o for o in gc.get_objects() if issubclass(type(o), PeftModel)]


def test_the_training_thread_finishes_and_is_cleaned_up(window, qtbot, tiny_config):
    window.setup.set_config(tiny_config.with_overrides({"train.max_steps": 2}))
    finished = []
    seen_threads: list[str] = []
    window.controller.event.connect(lambda e: seen_threads.append(threading.current_thread().name))
    window.controller.start(window.setup.config)
    thread = window.controller._thread
    assert isinstance(thread, QThread) and thread is not QThread.currentThread()
    window.controller.finished.connect(lambda result: finished.append(thread.isFinished()))
    with qtbot.waitSignal(window.controller.finished, timeout=120_000) as blocker:
        pass
    assert blocker.args[0].status == "finished"
    assert finished == [True] and not window.controller.running  # the thread had ended, not just the work
    assert set(seen_threads) == {threading.main_thread().name}  # events reach widgets on the GUI thread
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert not shiboken6.isValid(thread)  # the QThread object itself is gone


def test_pause_holds_the_step_count_and_stop_saves_a_checkpoint(window, qtbot, tiny_config):
    window.setup.set_config(tiny_config.with_overrides({"train.max_steps": 500, "train.save_every_steps": 1000}))
    events = collect_events(window)

    def pause_on_first_step(e):
        if isinstance(e, ev.StepLogged) and not window.pause_action.isChecked():
            window.pause_action.trigger()

    window.controller.event.connect(pause_on_first_step)
    with qtbot.waitSignal(window.controller.event, timeout=120_000, check_params_cb=lambda e: isinstance(e, ev.Paused)):
        window.start_training()
    held = window.monitor.step
    assert window.monitor.status == "paused" and window.pause_action.text() == "Resume"
    count = len([e for e in events if isinstance(e, ev.StepLogged)])
    qtbot.wait(1500)  # a training step takes well under this on the tiny model
    assert len([e for e in events if isinstance(e, ev.StepLogged)]) == count and window.monitor.step == held
    assert not window.playground.training  # paused: its checkpoints may be chatted with meanwhile

    with qtbot.waitSignal(window.run_ended, timeout=120_000) as blocker:
        window.stop_action.trigger()
    result = blocker.args[0]
    assert result.status == "stopped" and result.step == held
    checkpoints = [e for e in events if isinstance(e, ev.CheckpointSaved)]
    assert [(c.step, c.reason) for c in checkpoints] == [(held, "stop")]
    assert [step for step, _ in RunFolder(result.run_dir).checkpoints()] == [held]
    assert window.monitor.status == "stopped" and "checkpoint saved (stop)" in window.monitor.log_text()
    assert not window.pause_action.isChecked() and window.start_action.isEnabled()


def test_save_now_and_more_steps_while_training(window, qtbot, tiny_config):
    window.setup.set_config(tiny_config.with_overrides({"train.max_steps": 40, "train.save_every_steps": 1000}))
    window.extend_spin.setValue(4)
    events = collect_events(window)

    def steer(e):  # events reach the window in batches: each request waits for the last one's answer
        if isinstance(e, ev.StepLogged) and e.metrics.step == 1:
            window.save_action.trigger()
        if isinstance(e, ev.CheckpointSaved) and e.reason == "requested":
            window.extend_button.click()

    window.controller.event.connect(steer)
    # 40 planned steps: room for both requests to arrive (events cross in 200 ms batches) on a fast machine
    result = run_to_end(qtbot, window, window.start_training)
    assert result.status == "finished" and result.step == 44
    checkpoints = [(c.step, c.reason) for c in events if isinstance(c, ev.CheckpointSaved)]
    # each request is served right after the step that was training when it arrived
    assert [reason for _, reason in checkpoints] == ["requested", "extend", "scheduled"]
    assert checkpoints[0][0] < checkpoints[1][0] < checkpoints[2][0] == 44
    changed = [e for e in events if isinstance(e, ev.SettingsChanged)]
    assert changed and changed[0].changes["max_steps"] == [40, 44]
    assert window.monitor.header.progress.maximum() == 44 and window.monitor.header.progress.value() == 44
    assert "extended from 40 to 44 steps" in window.monitor.log_text()
    assert [m["step"] for m in read_metrics(result.run_dir)] == list(range(1, 45))


def test_a_failed_run_shows_the_reason_and_the_window_goes_on(window, qtbot, tiny_config, tmp_path):
    missing = tmp_path / "missing.jsonl"
    window.setup.set_config(tiny_config.with_overrides({"data.path": str(missing)}))
    result = run_to_end(qtbot, window, window.start_training)
    assert result.status == "failed" and result.cause.is_users_to_fix
    box = window.last_error_box
    assert box is not None and box.isVisible()
    assert "missing.jsonl" in box.text() and "\n" not in box.text()  # one line
    assert "Traceback" in box.detailedText()
    assert result.run_dir is None and not any((tmp_path / "runs").glob("*"))  # it never trained: no folder left
    assert window.monitor.status == "failed"
    box.close()

    # still usable: fix the data (Setup holds Start while it shows the unreadable file) and train
    window.setup.widget("data.path").setText("sample:dates")
    window.setup.widget("train.max_steps").setValue(2)
    qtbot.waitUntil(window.start_action.isEnabled, timeout=30_000)
    result = run_to_end(qtbot, window, window.start_action.trigger)
    assert result.status == "finished" and result.step == 2


def test_a_bug_in_the_supervisor_travels_as_data(window, qtbot, tiny_config, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom in the runner")

    monkeypatch.setattr(window.controller, "train", explode)
    window.setup.set_config(tiny_config)
    result = run_to_end(qtbot, window, window.start_training)
    assert result.status == "failed" and not result.cause.is_users_to_fix
    box = window.last_error_box
    assert box.text() == "RuntimeError: boom in the runner"
    assert "Traceback" in box.detailedText() and "explode" in box.detailedText()
    assert not window.controller.running and window.start_action.isEnabled()
    assert window.monitor.status == "failed"


def test_a_question_from_the_training_thread_is_answered_on_the_gui_thread(window, qtbot):
    from qlora_studio.core.training.control import TrainControl

    controller = window.controller
    controller.control = TrainControl()
    asked_on = []

    def answer(question, options):
        asked_on.append(threading.current_thread() is threading.main_thread())
        return "shrink"

    controller.answer_question = answer
    answers = []
    question = ("Out of memory. Shrink?", ["shrink", "stop"])
    worker = threading.Thread(target=lambda: answers.append(controller._ask(*question)))
    worker.start()
    qtbot.waitUntil(lambda: bool(answers), timeout=10_000)
    worker.join()
    assert answers == ["shrink"] and asked_on == [True]

    # a stop while a question waits never leaves the training thread hanging
    controller.answer_question = lambda q, o: pytest.fail("asked after a stop")
    controller.control.request_stop()
    assert controller._ask("Out of memory. Shrink?", ["shrink", "stop"]) == "stop"
    controller.control = TrainControl()


def test_quitting_during_a_run_stops_saves_and_then_closes(window, qtbot, tiny_config, monkeypatch):
    window.setup.set_config(tiny_config.with_overrides({"train.max_steps": 500, "train.save_every_steps": 1000}))
    asked = []
    monkeypatch.setattr(window, "confirm_quit_during_run", lambda: asked.append(True) or True)
    with qtbot.waitSignal(window.controller.event, timeout=120_000, check_params_cb=lambda e: isinstance(e, ev.StepLogged)):
        window.start_training()
    assert window.close() is False  # not yet: the run saves first
    assert window.isVisible() and asked == [True]
    with qtbot.waitSignal(window.run_ended, timeout=120_000) as blocker:
        pass
    result = blocker.args[0]
    assert result.status == "stopped"
    assert RunFolder(result.run_dir).latest_checkpoint() is not None
    assert not window.isVisible()  # closed itself once the worker was done


def test_resume_a_stopped_run_from_the_runs_page(window, qtbot, tiny_config):
    window.setup.set_config(tiny_config.with_overrides({"train.max_steps": 20, "train.save_every_steps": 1000}))

    def stop_at_three(e):
        if isinstance(e, ev.StepLogged) and e.metrics.step >= 3:
            window.stop_training()

    window.controller.event.connect(stop_at_three)  # 20 planned steps: the stop arrives well before the end
    first = run_to_end(qtbot, window, window.start_training)
    window.controller.event.disconnect(stop_at_three)
    assert first.status == "stopped"
    stopped_at = first.step

    runs = window.runs
    runs.select_paths([first.run_dir])
    assert runs.resume_button.isEnabled()
    events = collect_events(window)
    second = run_to_end(qtbot, window, runs.resume_button.click)
    assert second.status == "finished" and second.step == 20 and second.run_dir == first.run_dir
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert started.start_step == stopped_at
    assert [m["step"] for m in read_metrics(first.run_dir)] == list(range(1, 21))
    assert runs.model.runs[0].status == "finished"
    # the monitor drew the steps before the checkpoint too: one continuous curve
    assert list(window.monitor.loss_chart.series["raw"].x) == list(range(1, 21))
    # and the log goes on from the first session (issue 12: a resume cleared it)
    log = window.monitor.log_text()
    assert "checkpoint saved (stop)" in log and log.index("checkpoint saved (stop)") < log.index("Finished at step 20")

    # a finished run has nothing to resume: "Train more…" adds steps (issue 12: a resume trained one more)
    runs.select_paths([first.run_dir])
    assert runs.resume_button.text() == "Train more…"
    third = run_to_end(qtbot, window, lambda: window.resume_run(first.run_dir, extend=2))
    assert third.status == "finished" and third.step == 22
    assert [m["step"] for m in read_metrics(first.run_dir)] == list(range(1, 23))


def test_gpu_selector_starts_several_processes(window, qtbot, tiny_config):
    """Processes > 1 in the GPUs group: the same Start, charts and result, from worker processes."""
    setup = window.setup
    setup.set_config(tiny_config.with_overrides({"train.max_steps": 4, "train.micro_batch_size": 2,
                                                 "train.grad_accum": 1}))
    setup.widget("distributed.num_processes").setValue(2)
    setup.widget("distributed.gpus").setText("0, x")
    assert "distributed.gpus" in setup._problems  # core rejects it, the field says so
    setup.widget("distributed.gpus").setText("")
    assert setup.config.distributed.num_processes == 2 and setup.config.distributed.gpus is None
    setup.widget("distributed.strategy").setCurrentText("ddp")
    result = run_to_end(qtbot, window, window.start_action.trigger, timeout=240_000)
    assert result.status == "finished", result.error
    assert list(window.monitor.loss_chart.series["raw"].x) == [1, 2, 3, 4]
    run = RunFolder(result.run_dir)
    assert run.load_config().distributed.num_processes == 2
    assert sorted(p.name for p in (run.path / "ranks").iterdir()) == ["rank-0.json", "rank-1.json"]
