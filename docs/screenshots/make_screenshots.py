"""Screenshots of the pages from the real window, after real tiny-model training runs.

    QT_QPA_PLATFORM=offscreen python docs/screenshots/make_screenshots.py [OUT_DIR]

Trains a tiny random Llama (tests/tiny.py) three times through the window: double quant on,
double quant off, and a longer run that is paused for the monitor shot and then stopped. The
setup page is shown on the demo preset (SmolLM2-135M-Instruct, from the bundled GGUF when
offline). Settings and runs go to a temporary folder; nothing of the user's is touched.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
SIZE = (1400, 900)
TIMEOUT_MS = 300_000


def wait_for(signal, accept: Callable[..., bool] = lambda *a: True, timeout_ms: int = TIMEOUT_MS) -> tuple[Any, ...]:
    """Run the event loop until `signal` fires with arguments `accept` likes."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    got: list[tuple[Any, ...]] = []

    def on_signal(*args: Any) -> None:
        if accept(*args):
            got.append(args)
            loop.quit()

    signal.connect(on_signal)
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(loop.quit)
    timer.start(timeout_ms)
    loop.exec()
    signal.disconnect(on_signal)
    if not got:
        raise TimeoutError(f"no {signal} within {timeout_ms} ms")
    return got[0]


def settle(ms: int = 400) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def shoot(window, page, path: Path) -> None:
    window.tabs.setCurrentWidget(page)
    settle()
    window.monitor.board.flush()
    settle(200)
    window.grab().save(str(path), "PNG")
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


def train(window, config, steer: Callable[[dict], None] | None = None) -> dict:
    if steer is not None:
        window.controller.event.connect(steer)
    window.setup.set_config(config)
    window.start_training()
    (result,) = wait_for(window.run_ended)
    if steer is not None:
        window.controller.event.disconnect(steer)
    print(f"run {config.run_name}: {result['status']} at step {result['step']}")
    return result


def main(out_dir: Path) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes' CPU 4-bit kernels warn on every backward pass; the window never shows stderr
    import warnings

    warnings.filterwarnings("ignore", message=r"bitsandbytes::.*autograd kernel")
    work = Path(tempfile.mkdtemp(prefix="qlora-studio-shots-"))
    os.environ["QLORA_STUDIO_SETTINGS"] = str(work / "settings.ini")
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import build_tiny_llama

    from qlora_studio.core.config import RunConfig, load_config
    from qlora_studio.gui.app import create_app
    from qlora_studio.resources import PRESETS

    app = create_app()
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.settings import Settings

    model = build_tiny_llama(work / "tiny-llama", hidden=128, layers=4)
    runs_dir = work / "runs"
    settings = Settings()
    settings.set("setup/output_dir", str(runs_dir))
    settings.set("memory/budget", 8.0)
    window = MainWindow(settings)
    window.resize(*SIZE)
    window.show()
    settle()

    base = RunConfig.model_validate({
        "model": {"name_or_path": str(model)},
        "data": {"path": "sample:dates", "max_length": 128, "validation_split": 0.05},
        "lora": {"r": 8, "alpha": 16},
        "train": {"max_steps": 120, "micro_batch_size": 4, "grad_accum": 2, "learning_rate": 1e-2,
                  "save_every_steps": 40, "eval_every_steps": 10, "warmup_ratio": 0.05},
        "output_dir": str(runs_dir),
    })
    dq_on = train(window, base.with_overrides({"run_name": "dates-r8-dq-on"}))
    dq_off = train(window, base.with_overrides({"run_name": "dates-r8-dq-off", "quantization.double_quant": False}))

    # a longer run, paused for the monitor shot, then stopped (it stays resumable)
    def pause_at(step: int) -> Callable[[dict], None]:
        def steer(event: dict) -> None:
            if event["type"] == "step" and event["metrics"]["step"] >= step and not window.pause_action.isChecked():
                window.pause_action.trigger()
        return steer

    longer = base.with_overrides({"run_name": "dates-r16-lr5e-3", "lora.r": 16, "lora.alpha": 32,
                                  "train.learning_rate": 5e-3, "train.max_steps": 300})
    window.setup.set_config(longer)
    steer = pause_at(170)
    window.controller.event.connect(steer)
    window.start_training()
    wait_for(window.controller.event, lambda e: e["type"] == "paused")
    window.controller.event.disconnect(steer)
    shoot(window, window.monitor, out_dir / "monitor.png")
    window.stop_training()
    wait_for(window.run_ended)

    # runs page: compare double quant on and off
    window.runs.refresh()
    window.runs.select_paths([dq_on["run_dir"], dq_off["run_dir"]])
    shoot(window, window.runs, out_dir / "runs.png")

    # setup page: the demo preset, with its X-ray and memory estimate
    window.setup.apply_preset("demo")
    demo = load_config(PRESETS / "demo.yaml")
    wait_for(window.setup.xray.report_ready, lambda r: r.source == demo.data.path)
    if window.setup.memory.estimate is None or window.setup.memory.estimate.model != demo.model.name_or_path:
        wait_for(window.setup.memory.estimate_ready, lambda e: e.model == demo.model.name_or_path)
    if "parameters" not in window.setup.model_info_label.text():
        wait_for(window.setup.model_info_runner.result)
    window.setup.xray.tabs.setCurrentIndex(0)
    shoot(window, window.setup, out_dir / "setup.png")

    from after_shots import shoot_after  # the probe grid, the playground, evaluation, export (beside this file)

    shoot_after(window, model, runs_dir, out_dir)
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    target.mkdir(parents=True, exist_ok=True)
    sys.exit(main(target))
