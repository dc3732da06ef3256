"""Screenshots of the three pages from the real window, after real tiny-model training runs.

    QT_QPA_PLATFORM=offscreen python docs/screenshots/make_screenshots.py [OUT_DIR]
    QT_QPA_PLATFORM=offscreen python docs/screenshots/make_screenshots.py [OUT_DIR] --only ecosystem

`--only ecosystem` shoots the model library, the import dialog and the monitor's TensorBoard hint
(library.png, import.png, tensorboard.png) after one short run.

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
TIMEOUT_MS = int(os.environ.get("SHOTS_TIMEOUT_MS", "300000"))


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


def train(window, config, steer: Callable[[Any], None] | None = None):
    if steer is not None:
        window.controller.event.connect(steer)
    window.setup.set_config(config)
    if not window.start_training():
        raise RuntimeError(f"the run did not start: {window.setup.problem_label.text()} "
                           f"{window.last_error_box.text() if window.last_error_box else ''}")
    (result,) = wait_for(window.run_ended)
    if steer is not None:
        window.controller.event.disconnect(steer)
    print(f"run {config.run_name}: {result.status} at step {result.step}")
    return result


def ecosystem_shots(window, work: Path, out_dir: Path, model: Path, base) -> None:
    """The model library (a temporary Hugging Face cache holding the tiny model, and the bundled GGUF's
    folder), the import dialog on an axolotl example, and a replayed run with its TensorBoard hint."""
    import huggingface_hub

    sys.path.insert(0, str(ROOT / "tests"))
    from fakehub import cache_model

    from qlora_studio.core.model.sources import bundled_smollm2_gguf

    cache = work / "hub"
    huggingface_hub.constants.HF_HUB_CACHE = str(cache)
    files = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    cache_model(cache, "you/tiny-llama-4l", files)
    gguf = bundled_smollm2_gguf()
    if gguf is not None:
        window.settings.set("library/gguf_folders", str(gguf.parent))
    dialog = window.setup.model.open_library()
    wait_for(dialog.fitted)
    dialog.select("you/tiny-llama-4l")
    dialog.downloads.repo_edit.setText("Qwen/Qwen2.5-0.5B-Instruct")
    dialog.resize(1100, 420)
    settle()
    dialog.grab().save(str(out_dir / "library.png"), "PNG")
    print(f"{out_dir / 'library.png'}")
    dialog.close()

    imported = window.setup.import_config(ROOT / "tests" / "core" / "import_examples" / "axolotl_llama3_qlora.yml")
    imported.resize(1000, 480)
    settle()
    imported.grab().save(str(out_dir / "import.png"), "PNG")
    print(f"{out_dir / 'import.png'}")
    imported.reject()

    run = train(window, base.with_overrides({"run_name": "dates-tensorboard", "train.max_steps": 8, "train.eval_every_steps": 4,
                                             "train.report_to": ["tensorboard"]}))
    window.history_loader.request(run.run_dir, tag=run.run_dir)
    wait_for(window.monitor.history_loaded)
    shoot(window, window.monitor, out_dir / "tensorboard.png")


def main(out_dir: Path, only: str | None = None) -> int:
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
    if only == "ecosystem":
        ecosystem_shots(window, work, out_dir, model, base)
        window.close()
        app.processEvents()
        return 0
    dq_on = train(window, base.with_overrides({"run_name": "dates-r8-dq-on"}))
    dq_off = train(window, base.with_overrides({"run_name": "dates-r8-dq-off", "quantization.double_quant": False}))

    # a longer run, paused for the monitor shot, then stopped (it stays resumable)
    def pause_at(step: int) -> Callable[[Any], None]:
        def steer(event) -> None:
            if event.type == "step" and event.metrics.step >= step and not window.pause_action.isChecked():
                window.pause_action.trigger()
        return steer

    longer = base.with_overrides({"run_name": "dates-r16-lr5e-3", "lora.r": 16, "lora.alpha": 32,
                                  "train.learning_rate": 5e-3, "train.max_steps": 300})
    window.setup.set_config(longer)
    steer = pause_at(170)
    window.controller.event.connect(steer)
    window.start_training()
    wait_for(window.controller.event, lambda e: e.type == "paused")
    window.controller.event.disconnect(steer)
    shoot(window, window.monitor, out_dir / "monitor.png")
    window.stop_training()
    wait_for(window.run_ended)

    # runs page: compare double quant on and off
    window.runs.refresh()
    window.runs.select_paths([dq_on.run_dir, dq_off.run_dir])
    shoot(window, window.runs, out_dir / "runs.png")

    # setup page: the demo preset, with its X-ray and memory estimate
    window.setup.apply_preset("demo")
    demo = load_config(PRESETS / "demo.yaml")
    wait_for(window.setup.xray.report_ready, lambda r: r.source == demo.data.path)
    if window.setup.memory.estimate is None or window.setup.memory.estimate.model != demo.model.name_or_path:
        wait_for(window.setup.memory.estimate_ready, lambda e: e.model == demo.model.name_or_path)
    if "parameters" not in window.setup.model.info_label.text():
        wait_for(window.setup.model.info_task.result)
    window.setup.xray.tabs.setCurrentIndex(0)
    shoot(window, window.setup, out_dir / "setup.png")

    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--only")]
    only = next((a.split("=", 1)[1] if "=" in a else sys.argv[sys.argv.index(a) + 1]
                 for a in sys.argv[1:] if a.startswith("--only")), None)
    args = [a for a in args if a != only]
    target = Path(args[0]) if args else Path(__file__).resolve().parent
    target.mkdir(parents=True, exist_ok=True)
    sys.exit(main(target, only))
