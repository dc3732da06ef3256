"""The GUI thread's cost during a run, without training: the window's share of a run's time.

The real main window (offscreen, Monitor page shown) is started through its Start path, but the
training thread runs a stand-in for `run_training` that only emits the events a CUDA run emits
(RunStarted, a StepLogged every 1/rate s with VRAM figures, Finished) and sleeps in between. The
GUI thread's CPU time per second of wall time is what it takes from the interpreter that trains
(an upper bound of its GIL time); unlike a real run's tokens/s it hardly depends on what else the
machine runs, so it shows each change to the window's redraw and event path on a shared CPU.

    QT_QPA_PLATFORM=offscreen python bench/gui_cost.py [--rate 3] [--seconds 20] [--page monitor]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def fake_training(rate: float, seconds: float, marks: dict):
    """A `run_training` stand-in: the events of a CUDA run at `rate` steps per second."""
    from qlora_studio.core.model.quantization import QuantizationReport
    from qlora_studio.core.runs import events as ev

    def run_training(config, emit, control, resume_from=None):
        total = int(rate * seconds)
        emit(ev.RunStarted(run_dir="/tmp/fake-run", config={}, total_steps=total, start_step=0, device="cuda:0",
                           device_name="Fake GPU", train_rows=1000, eval_rows=0, trainable_params=1, total_params=2,
                           quantization=QuantizationReport("4bit", "nf4", True, "bfloat16"), predicted_peak_gb=10.2))
        began = time.monotonic()
        for step in range(1, total + 1):
            while time.monotonic() < began + step / rate:
                time.sleep(min(0.005, max(0.0, began + step / rate - time.monotonic())))
            if control.stop_requested:
                break
            emit(ev.StepLogged(ev.StepMetrics(
                step=step, epoch=step / total, loss=2.0 + 1.0 / step, learning_rate=1e-4 * (1 - step / total),
                grad_norm=0.5 + (step % 5) / 10, tokens=step * 8192, tokens_per_s=23000.0 + step % 17,
                elapsed_s=time.monotonic() - began, micro_batch_size=4, grad_accum=1, vram_allocated_gb=6.0 + step % 3 / 10,
                vram_reserved_gb=9.5, vram_peak_gb=9.8, vram_device_used_gb=10.1), total))
        emit(ev.Finished("finished", total, total, 2.0, None, "/tmp/fake-run", time.monotonic() - began, 9.8))
        return ev.RunResult("finished", "/tmp/fake-run", total, 2.0, None)

    return run_training


def measure(rate: float, seconds: float, page: str, profile: int = 0) -> dict:
    from PySide6.QtCore import QEventLoop, QSettings

    import qlora_studio.core.training.runner as runner
    from qlora_studio.core.runs import events as ev
    from qlora_studio.gui.app import create_app

    app = create_app()
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="gui-cost-"))
    window = MainWindow(Settings(QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat)))
    window.resize(1600, 1000)
    window.show()
    marks: dict = {}
    runner.run_training = fake_training(rate, seconds, marks)
    first, last = max(2, int(rate)), int(rate * seconds)
    board = window.monitor.board

    profiler = cProfile.Profile(time.thread_time) if profile else None

    def on_event(event) -> None:
        if isinstance(event, ev.StepLogged) and event.metrics.step in (first, last):
            marks[event.metrics.step] = (time.thread_time(), time.monotonic(), board.frames)
            if profiler is not None:
                profiler.enable() if event.metrics.step == first else profiler.disable()

    window.controller.event.connect(on_event)
    loop = QEventLoop()
    window.run_ended.connect(loop.quit)
    window.controller.start(window.setup.config)
    window.tabs.setCurrentIndex({"setup": 0, "monitor": 1, "runs": 2}[page])
    loop.exec()
    (c0, w0, f0), (c1, w1, f1) = marks[first], marks[last]
    window.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
    return {"rate": rate, "page": page, "gui_busy_fraction": (c1 - c0) / (w1 - w0),
            "gui_ms_per_step": 1000 * (c1 - c0) / (last - first), "frames_per_s": (f1 - f0) / (w1 - w0),
            "frame_ms": round(getattr(board, "frame_cost", 0.0) * 1000, 2), "threads": threading.active_count()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, action="append", help="steps per second (repeatable; default 3 and 30)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--page", default="monitor", choices=["setup", "monitor", "runs"])
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="print the GUI thread's N hottest functions")
    args = parser.parse_args()
    for rate in args.rate or [3.0, 30.0]:
        print(json.dumps(measure(rate, args.seconds, args.page, args.cprofile)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
