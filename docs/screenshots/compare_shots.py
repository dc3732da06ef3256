"""Screenshots of the Playground comparing two runs of one base: base · SFT run · DPO run in three
columns, at 1600×1000 and 1024×700, from real tiny-model runs (tests/tiny.py) in a temporary folder.

    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/screenshots/compare_shots.py [OUT_DIR]

(QT_QPA_PLATFORM=offscreen works too.) Writes OUT_DIR/playground-compare-1600.png and
playground-compare-1024.png (OUT_DIR defaults to /tmp/shots).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SIZES = ((1600, 1000), (1024, 700))
MESSAGES = ["Normalize the date: March 5, 2021", "Date: 21 June 2021. Give it as YYYY-MM-DD."]


def train_runs(model: Path, runs_dir: Path) -> tuple[str, str]:
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training

    common = {"model": {"name_or_path": str(model)}, "lora": {"r": 8, "alpha": 16}, "output_dir": str(runs_dir),
              "probes": []}
    sft = RunConfig.model_validate(common | {
        "data": {"path": "sample:dates", "max_length": 128, "validation_split": 0.05},
        "train": {"max_steps": 60, "micro_batch_size": 4, "grad_accum": 2, "learning_rate": 1e-2,
                  "save_every_steps": 30, "warmup_ratio": 0.05},
        "run_name": "dates-sft"})
    dpo = RunConfig.model_validate(common | {
        "data": {"path": "sample:dates-pairs", "max_length": 128, "validation_split": 0},
        "train": {"method": "dpo", "max_steps": 30, "micro_batch_size": 4, "grad_accum": 1, "learning_rate": 5e-3,
                  "save_every_steps": 15, "warmup_ratio": 0.0},
        "run_name": "dates-dpo"})
    dirs = []
    for config in (sft, dpo):
        result = run_training(config)
        assert result.status == "finished", result.error
        print(f"run {config.run_name}: {result.status}", flush=True)
        dirs.append(result.run_dir)
    return dirs[0], dirs[1]


def shoot_compare(window, runs_dir: Path, sft_dir: str, dpo_dir: str, out_dir: Path) -> None:
    from make_screenshots import settle, shoot, wait_for, wait_until  # noqa: I001 - the shared helpers, beside this file

    page = window.playground
    page.set_output_dir(str(runs_dir))
    window.open_playground(sft_dir)
    wait_until(lambda: not page.busy)
    page.compare_with.select(dpo_dir)
    wait_for(page.controller.compared)
    wait_until(lambda: not page.busy)
    page.max_new_tokens.setValue(24)
    for message in MESSAGES:
        page.send(message)
        wait_for(page.controller.busy_changed, lambda busy: not busy)
    page.input.setPlainText("Normalize the date: 4th of July 1976")
    for width, height in SIZES:
        window.resize(width, height)
        settle(300)
        shoot(window, page, out_dir / f"playground-compare-{width}.png")


def main(out_dir: Path) -> int:
    sys.path.insert(0, str(HERE))
    from make_screenshots import settle, shots_home

    work = shots_home("qlora-studio-compare-shots-")
    from tiny import build_tiny_llama

    from qlora_studio.gui.app import create_app

    app = create_app()
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.settings import Settings

    model = build_tiny_llama(work / "tiny-llama", hidden=128, layers=4)
    runs_dir = work / "runs"
    sft_dir, dpo_dir = train_runs(model, runs_dir)
    settings = Settings()
    settings.set("setup/output_dir", str(runs_dir))
    window = MainWindow(settings)
    window.resize(*SIZES[0])
    window.show()
    settle()
    shoot_compare(window, runs_dir, sft_dir, dpo_dir, out_dir)
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/shots")
    target.mkdir(parents=True, exist_ok=True)
    sys.exit(main(target))
