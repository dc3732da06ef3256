"""The window trains in a child process: when that child dies (SIGKILL, SIGSEGV) at a random step of
a window-driven run, the window stays responsive, marks the run failed with cause `crash`, offers
Resume, and `qlora-studio train --resume` continues the folder exactly."""

from __future__ import annotations

import os
import random
import signal

import pytest
from gui_helpers import run_to_end
from PySide6.QtCore import QTimer

from qlora_studio.core.cli import main
from qlora_studio.core.errors import FailureCause
from qlora_studio.core.runs import events as ev
from qlora_studio.core.runs.store import RunFolder, summarize_run

STEPS, SAVE_EVERY = 14, 3


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=lambda s: s.name)
def test_the_window_outlives_its_trainer_and_the_run_resumes_exactly(window, qtbot, tiny_config, sig):
    moment = random.Random(int(sig)).randint(4, 9)  # a random step, the same on every run of the suite
    window.setup.set_config(tiny_config.with_overrides({"train.max_steps": STEPS, "train.save_every_steps": SAVE_EVERY}))
    losses: dict[int, float] = {}
    killed: list[int] = []

    def kill_at_the_moment(e):
        if isinstance(e, ev.StepLogged):
            losses[e.metrics.step] = e.metrics.loss
            if e.metrics.step >= moment and not killed:
                killed.append(window.controller.control.process_id)
                os.kill(killed[0], sig)

    window.controller.event.connect(kill_at_the_moment)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(20)
    result = run_to_end(qtbot, window, window.start_training)
    timer.stop()
    window.controller.event.disconnect(kill_at_the_moment)

    # a failed run with the cause and the signal, not a dead window; the GUI thread kept turning
    assert killed and killed[0] != os.getpid() and window.controller.control.process_id is None
    assert result.status == "failed" and result.cause is FailureCause.CRASH
    verb = "was killed by" if sig == signal.SIGKILL else "crashed with"
    assert result.error.startswith(f"the training process {verb} {sig.name}; the checkpoint of step ")
    assert len(ticks) > 10 and window.monitor.status == "failed" and window.start_action.isEnabled()
    box = window.last_error_box
    assert box.isVisible() and box.text() == result.error
    assert any(b.objectName() == "resumeCrashedRun" for b in box.buttons())  # Resume is offered
    box.close()

    # the folder says what happened and can be resumed from its last checkpoint
    folder = RunFolder(result.run_dir)
    status = folder.read_status()
    assert status["status"] == "failed" and status["cause"] == "crash" and status["reason"] == result.error
    summary = summarize_run(folder.path)
    assert summary.resumable and summary.status == "failed"
    checkpoint = folder.checkpoints()[-1][0]
    assert checkpoint == result.step and checkpoint % SAVE_EVERY == 0 and checkpoint <= max(losses)

    # `qlora-studio train --resume` retrains the lost steps to the same losses and ends
    assert main(["train", "--resume", result.run_dir]) == 0
    metrics = folder.read_metrics()
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # every step once
    for m in metrics:
        if m["step"] in losses:
            assert m["loss"] == pytest.approx(losses[m["step"]], rel=1e-5), m["step"]
    assert folder.read_status()["status"] == "finished"
