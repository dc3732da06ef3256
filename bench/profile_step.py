"""Where a training step's time goes: torch.profiler over a few steps of the demo-shaped run.
    python bench/profile_step.py [--shape smollm2-135m] [--set train.micro_batch_size=16 ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import add_trainer_callback, profile_window, shape_folder


def main() -> None:
    from qlora_studio.core.training import runner
    from qlora_studio.core.config import load_config
    from qlora_studio.core.quiet import quiet_libraries
    from qlora_studio.resources import PRESETS

    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="smollm2-135m")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--work", default="/tmp/profile")
    parser.add_argument("--no-table", action="store_true", help="only print tokens/s per step")
    args = parser.parse_args()
    quiet_libraries()
    folder = shape_folder(args.shape, Path(args.work))
    config = load_config(PRESETS / "demo.yaml", [f"model.name_or_path={folder}", "model.random_init=true",
                                                 "train.max_steps=8", f"output_dir={args.work}/runs",
                                                 "data.validation_split=0", *args.set])
    if not args.no_table:
        add_trainer_callback(profile_window(4, 7, None))
    events = []
    result = runner.run_training(config, events.append)
    print(result.status, result.error)
    print("tokens/s per step:", [round(e.metrics["tokens_per_s"]) for e in events if e.type == "step"], args.set)


if __name__ == "__main__":
    main()
