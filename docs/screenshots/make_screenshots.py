"""Screenshots of the three pages from the real window, after real training runs through it.

    QT_QPA_PLATFORM=offscreen python docs/screenshots/make_screenshots.py [OUT_DIR] [--gpu] [--size 1600x1000]
    QT_QPA_PLATFORM=offscreen python docs/screenshots/make_screenshots.py [OUT_DIR] --only ecosystem

`--only ecosystem` shoots the model library, the import dialog and the monitor's TensorBoard hint
(library.png, import.png, tensorboard.png) after one short run.

CPU (default): a tiny random Llama (tests/tiny.py) is trained three times through the window:
double quant on, double quant off, and a longer run that is paused for the monitor shot and then
stopped; the setup page shows the demo preset (SmolLM2-135M-Instruct, from the bundled GGUF).
A run that diverges (a far too high learning rate) is shot first: its marks on the loss chart and its
dialog (`--only divergence` stops there).

GPU (--gpu, ~2 minutes on an H100; on the GPU machine after ../shared/tools/qt-on-gpu.sh's first
two calls: `source /tmp/qt/env.sh && source bench/gpu_setup.sh`): random-weight models of
public shapes (tests/shapes.py) on the bundled date rows: two Llama-3.2-1B runs (double quant on
and off) for the runs page, and a Llama-3.1-8B run paused mid-way for the monitor (real VRAM
curves against the detected card); the setup page shows that 8B config with the card detected.
`--model PATH` trains a real model (folder or .gguf) instead of the shapes.

Settings and runs go to a temporary folder; nothing of the user's is touched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_MS = int(os.environ.get("SHOTS_TIMEOUT_MS", "600000"))


def shots_home(prefix: str) -> Path:
    """The setting every screenshot script shoots in: offscreen Qt unless a platform is set, no Hub,
    settings in a fresh temporary folder (returned, for runs and models too), tests/ importable
    (its tiny models)."""
    import warnings

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes' CPU 4-bit kernels warn on every backward pass; the window never shows stderr
    warnings.filterwarnings("ignore", message=r"bitsandbytes::.*autograd kernel")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["QLORA_STUDIO_SETTINGS"] = str(work / "settings.ini")
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    return work


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


def wait_until(done: Callable[[], bool], timeout_ms: int = TIMEOUT_MS) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    poll = QTimer()
    poll.timeout.connect(lambda: done() and loop.quit())
    poll.start(50)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()
    poll.stop()
    if not done():
        raise TimeoutError(f"not done within {timeout_ms} ms")


def settle(ms: int = 400) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def setup_idle(window) -> None:
    """The Setup page's background work (X-ray, estimate, model info) is done."""
    from qlora_studio.gui.workers.tasks import DebouncedTask, TaskRunner

    runners = window.findChildren(TaskRunner)
    wait_until(lambda: not any(r.busy or (isinstance(r, DebouncedTask) and r.scheduled) for r in runners))


def shoot(window, page, path: Path) -> None:
    window.tabs.setCurrentWidget(page)
    settle()
    window.monitor.board.flush()
    settle(200)
    window.grab().save(str(path), "PNG")
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB", flush=True)


def train(window, config, expect: str = "finished") -> Any:
    window.setup.set_config(config)
    setup_idle(window)
    began = time.time()
    window.start_training()
    (result,) = wait_for(window.run_ended)
    print(f"run {config.run_name}: {result.status} at step {result.step} ({time.time() - began:.0f} s)", flush=True)
    assert result.status == expect, result.error
    return result


def shoot_divergence(window, base, out_dir: Path, model: Path) -> None:
    """A run whose loss turns NaN: a far too high learning rate (a real cause, with fp16 overflow); the
    run trains in its own child process, so nothing is injected into it."""
    train(window, base.with_overrides({"run_name": "dates-nan", "train.on_nan": "skip_step",
                                       "model.name_or_path": str(model), "train.learning_rate": 1e30,
                                       "train.max_steps": 60, "train.save_every_steps": 10}), expect="failed")
    box = window.last_error_box
    shoot(window, window.monitor, out_dir / "nan-monitor.png")
    box.grab().save(str(out_dir / "nan-dialog.png"), "PNG")
    print(f"{out_dir / 'nan-dialog.png'}: the dialog")
    box.close()


def pause_and_shoot(window, config, at_step: int, path: Path) -> None:
    """A longer run, paused at `at_step` for the monitor shot, then stopped (it stays resumable)."""
    from qlora_studio.core.runs import events as ev

    def steer(event) -> None:
        if isinstance(event, ev.StepLogged) and event.metrics.step >= at_step and not window.pause_action.isChecked():
            window.pause_action.trigger()

    window.setup.set_config(config)
    setup_idle(window)
    window.controller.event.connect(steer)
    window.start_training()
    wait_for(window.controller.event, lambda e: isinstance(e, ev.Paused))
    window.controller.event.disconnect(steer)
    shoot(window, window.monitor, path)
    window.stop_training()
    wait_for(window.run_ended)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--gpu", action="store_true", help="train model shapes on the GPU (see above)")
    parser.add_argument("--model", help="with --gpu: a real model (folder or .gguf) instead of random-weight shapes")
    parser.add_argument("--size", default="1600x1000", help="window size, WIDTHxHEIGHT")
    parser.add_argument("--only", choices=["divergence", "ecosystem"], help="shoot only this (CPU)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in args.size.lower().split("x"))

    work = shots_home("qlora-studio-shots-")

    from qlora_studio.core.config import RunConfig, load_config
    from qlora_studio.gui.app import create_app
    from qlora_studio.resources import PRESETS

    # models first: transformers' lazy modules imported here, before the window's worker threads import them
    from qlora_studio.core.training.runner import run_training  # noqa: F401

    if args.gpu:
        from shapes import shape_folder

        small = Path(args.model) if args.model else shape_folder("llama-3.2-1b", work)
        large = Path(args.model) if args.model else shape_folder("llama-3.1-8b", work)
    else:
        from tiny import build_tiny_llama

        model = build_tiny_llama(work / "tiny-llama", hidden=128, layers=4)
    app = create_app()
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.settings import Settings

    runs_dir = work / "runs"
    settings = Settings()
    settings.set("setup/output_dir", str(runs_dir))
    settings.set("memory/budget", "auto" if args.gpu else 8.0)
    window = MainWindow(settings)
    window.resize(*size)
    window.show()
    wait_until(lambda: window.gpus is not None)
    setup_idle(window)
    if args.gpu and not window.gpus:
        raise SystemExit("--gpu: the window found no NVIDIA GPU")

    if args.gpu:
        random_init = not args.model
        base = RunConfig.model_validate({
            "model": {"name_or_path": str(small), "random_init": random_init},
            "data": {"path": "sample:dates", "max_length": 256, "validation_split": 0.05},
            "lora": {"r": 16, "alpha": 32},
            "train": {"max_steps": 40, "micro_batch_size": 8, "grad_accum": 1, "learning_rate": 2e-3,
                      "save_every_steps": 20, "eval_every_steps": 10, "warmup_ratio": 0.05},
            "output_dir": str(runs_dir),
        })
        first = train(window, base.with_overrides({"run_name": "1b-r16-dq-on"}))
        second = train(window, base.with_overrides({"run_name": "1b-r16-dq-off", "quantization.double_quant": False}))
        big = base.with_overrides({"run_name": "8b-r16-dates", "model.name_or_path": str(large),
                                   "train.max_steps": 150, "train.save_every_steps": 50, "train.eval_every_steps": 25,
                                   "train.learning_rate": 1e-3})
        pause_and_shoot(window, big, 90, out_dir / "monitor.png")
        window.runs.refresh()
        window.runs.select_paths([first.run_dir, second.run_dir])
        shoot(window, window.runs, out_dir / "runs.png")
        window.setup.set_config(big)
        setup_idle(window)
    else:
        base = RunConfig.model_validate({
            "model": {"name_or_path": str(model)},
            "data": {"path": "sample:dates", "max_length": 128, "validation_split": 0.05},
            "lora": {"r": 8, "alpha": 16},
            "train": {"max_steps": 120, "micro_batch_size": 4, "grad_accum": 2, "learning_rate": 1e-2,
                      "save_every_steps": 40, "eval_every_steps": 10, "warmup_ratio": 0.05},
            "output_dir": str(runs_dir),
        })
        if args.only == "ecosystem":
            ecosystem_shots(window, work, out_dir, model, base)
            window.close()
            app.processEvents()
            return 0
        shoot_divergence(window, base, out_dir, build_tiny_llama(work / "tiny-llama-small"))  # the smallest: quick
        if args.only == "divergence":
            window.close()
            return 0
        dq_on = train(window, base.with_overrides({"run_name": "dates-r8-dq-on"}))
        dq_off = train(window, base.with_overrides({"run_name": "dates-r8-dq-off", "quantization.double_quant": False}))
        longer = base.with_overrides({"run_name": "dates-r16-lr5e-3", "lora.r": 16, "lora.alpha": 32,
                                      "train.learning_rate": 5e-3, "train.max_steps": 300})
        pause_and_shoot(window, longer, 170, out_dir / "monitor.png")
        window.runs.refresh()
        window.runs.select_paths([dq_on.run_dir, dq_off.run_dir])
        shoot(window, window.runs, out_dir / "runs.png")
        # setup page: the demo preset, with its X-ray and memory estimate
        window.setup.apply_preset("demo")
        demo = load_config(PRESETS / "demo.yaml")
        setup_idle(window)
        assert window.setup.config.model.name_or_path == demo.model.name_or_path
    window.setup.xray.tabs.setCurrentIndex(0)
    shoot(window, window.setup, out_dir / "setup.png")

    if args.model or not args.gpu:  # answers need real weights on the GPU (the shapes have none)
        from after_shots import shoot_after  # the probe grid, the playground, evaluation, export (beside this file)

        shoot_after(window, Path(args.model) if args.gpu else model, runs_dir, out_dir)
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
