"""Screenshots of what comes after training: the taste-test grid on the Monitor page, the Playground
(base and tuned side by side), its Evaluate tab and the Export dialog, from a real tiny-model run.

    QT_QPA_PLATFORM=offscreen python docs/screenshots/after_shots.py [OUT_DIR]

make_screenshots.py calls `shoot_after` with its own window; run alone, this file makes a window and
a tiny random Llama of its own (tests/tiny.py) in a temporary folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROBES = ["Normalize the date: March 5, 2021", "Date: 21 June 2021. Give it as YYYY-MM-DD.",
          "When is 1 Jan 1999 in ISO form?"]


def shoot_after(window, model: Path, runs_dir: Path, out_dir: Path) -> None:
    from make_screenshots import settle, shoot, wait_for  # noqa: I001 - the shared helpers, beside this file

    from qlora_studio.core.config import RunConfig

    config = RunConfig.model_validate({
        "model": {"name_or_path": str(model)},
        "data": {"path": "sample:dates", "max_length": 128, "validation_split": 0.05},
        "lora": {"r": 8, "alpha": 16},
        "train": {"max_steps": 80, "micro_batch_size": 4, "grad_accum": 2, "learning_rate": 1e-2,
                  "save_every_steps": 20, "eval_every_steps": 10, "warmup_ratio": 0.05, "probe_max_new_tokens": 16},
        "probes": PROBES, "output_dir": str(runs_dir), "run_name": "dates-probes",
    })
    window.setup.set_config(config)
    window.start_training()
    (result,) = wait_for(window.run_ended)
    run_dir = result.run_dir if hasattr(result, "run_dir") else result["run_dir"]
    window.monitor.splitter.setSizes([380, 360, 90])  # the grid in view
    shoot(window, window.monitor, out_dir / "probes.png")

    window.playground.set_output_dir(str(runs_dir))
    window.open_playground(str(run_dir))
    wait_for(window.playground.controller.busy_changed, lambda busy: not busy)
    page = window.playground
    page.max_new_tokens.setValue(24)
    for prompt in PROBES[:2]:
        page.send(prompt)
        wait_for(page.controller.busy_changed, lambda busy: not busy)
    page.input.setPlainText("Normalize the date: 4th of July 1976")
    shoot(window, page, out_dir / "playground.png")

    page.tabs.setCurrentWidget(page.evaluation)
    page.evaluation.limit.setValue(20)
    page.evaluation.max_new_tokens.setValue(16)
    page.evaluation.run_button.click()
    wait_for(page.controller.busy_changed, lambda busy: not busy)
    shoot(window, page, out_dir / "evaluation.png")

    dialog = window.open_export(str(run_dir))
    dialog.format.setValue("ollama")
    wait_for(dialog.task.result, timeout_ms=120_000) if dialog.start() else None
    settle(300)
    dialog.grab().save(str(out_dir / "export.png"), "PNG")
    print(f"{out_dir / 'export.png'}: written")
    dialog.close()


def main(out_dir: Path) -> int:
    sys.path.insert(0, str(HERE))
    from make_screenshots import SIZE, settle, shots_home

    work = shots_home("qlora-studio-after-shots-")
    from tiny import build_tiny_llama

    from qlora_studio.gui.app import create_app

    app = create_app()
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.settings import Settings

    model = build_tiny_llama(work / "tiny-llama", hidden=128, layers=4)
    runs_dir = work / "runs"
    settings = Settings()
    settings.set("setup/output_dir", str(runs_dir))
    window = MainWindow(settings)
    window.resize(*SIZE)
    window.show()
    settle()
    shoot_after(window, model, runs_dir, out_dir)
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    target.mkdir(parents=True, exist_ok=True)
    sys.exit(main(target))
