"""The real window on a GPU (marked `gpu`; skipped without CUDA or without Qt). On the GPU machine,
after ../shared/tools/qt-on-gpu.sh's first two device calls:
    source /tmp/qt/env.sh && source bench/gpu_setup.sh && python3 -m pytest -m gpu tests/gpu/test_window_gpu.py -q

Starts MainWindow offscreen, waits for the GPU probe, trains a few steps through Start (a
random-init SmolLM2-135M shape on the bundled date rows) and checks that the VRAM curves hold real
CUDA values, the predicted peak is shown, and the y-axis follows the run, not the card. Plain
QEventLoop waits (no pytest-qt needed on the GPU machine). With $OUT set, it saves the Monitor.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

STEPS = 8


def wait_until(done, timeout_s: float) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    timer = QTimer()
    timer.timeout.connect(lambda: done() and loop.quit())
    timer.start(50)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    timer.stop()
    assert done(), f"not done within {timeout_s} s"


def test_the_window_trains_on_the_gpu_and_draws_real_vram(tmp_path):
    from PySide6.QtCore import QSettings

    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.model.devices import device_used_bytes
    from qlora_studio.gui.app import create_app
    from qlora_studio.gui.settings import Settings
    from shapes import shape_folder

    # transformers' lazy modules, imported here before the window's worker threads import them too
    from qlora_studio.core.training.runner import run_training  # noqa: F401

    folder = shape_folder("smollm2-135m", tmp_path)
    app = create_app()
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.workers.tasks import DebouncedTask, TaskRunner

    settings = Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    settings.set("setup/output_dir", str(tmp_path / "runs"))
    window = MainWindow(settings)
    window.resize(1600, 1000)
    window.show()
    wait_until(lambda: window.gpus is not None, 60)
    assert window.gpus and not window.banner.isVisible()  # a real card, detected
    capacity = window.gpus[0].total_gb
    assert window.monitor.vram_chart.capacity_gb == pytest.approx(capacity)

    config = RunConfig.model_validate({
        "model": {"name_or_path": str(folder), "random_init": True},
        "data": {"path": "sample:dates", "max_length": 256, "validation_split": 0},
        "train": {"max_steps": STEPS, "micro_batch_size": 8, "grad_accum": 1, "save_every_steps": 1000,
                  "warmup_ratio": 0.0},
        "output_dir": str(tmp_path / "runs"),
    })
    window.setup.set_config(config)
    runners = window.findChildren(TaskRunner)
    wait_until(lambda: not any(r.busy or (isinstance(r, DebouncedTask) and r.scheduled) for r in runners), 120)
    results = []
    window.run_ended.connect(results.append)
    window.start_action.trigger()
    wait_until(lambda: bool(results), 300)
    result = results[0]
    assert result.status == "finished", result.error

    monitor = window.monitor
    vram = monitor.vram_chart
    window.tabs.setCurrentWidget(monitor)
    monitor.board.flush()
    image = window.grab()
    allocated, reserved = vram.series["allocated"].y, vram.series["reserved"].y
    assert len(allocated) == STEPS and (allocated > 0.05).all()  # real CUDA figures, in GiB
    assert (reserved >= allocated).all()
    if device_used_bytes(0) is not None:
        assert vram.series["device"].n == STEPS  # NVML's whole-device line too
    assert len(vram.curves["allocated"].getData()[1]) == STEPS  # drawn, not just buffered
    assert vram.measured_peak_gb >= allocated.max() and vram.peak_line.isVisible()
    assert vram.predicted_peak_gb and vram.predicted_line.isVisible()
    assert f"predicted {vram.predicted_peak_gb:.2f} GiB" in vram.labels["predicted"].toPlainText()
    assert "predicted" in monitor.header.stat_vram.value.text()
    # the y-axis follows the run (a few GiB), the card is a marker above it unless the run nears it
    top = vram.getPlotItem().getViewBox().viewRange()[1][1]
    assert top <= max(vram.run_top() * 1.5, 1.0) or vram.wall_in_view()
    assert f"card {capacity:.1f} GiB" in vram.labels["capacity"].toPlainText()
    if os.environ.get("OUT"):
        image.save(str(Path(os.environ["OUT"]) / "gpu-window-test-monitor.png"))
    window.close()
    app.processEvents()
