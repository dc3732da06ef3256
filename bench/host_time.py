"""The host's time per step with the 8B shape's module tree, on a CPU (issue #26, levers 16, 17, 20).

An 8B step on an H200 is host-bound: the GPU waits for Python's launches. This measures the host's
share where no GPU is needed: `narrow32` is Llama-3.1-8B's layer structure (32 layers, the same
seven adapted linears per layer, ~3,000 modules) at hidden size 64, so the CPU's kernels are tiny
and what a lever changes is host work. Each variant trains three epochs of the same packed rows
(512 tokens a step) in its own process; the table gives the median and mean step, the slowest step,
the second epoch's wall clock and the seconds Python's collector ran in the whole process (loading
included).

  python bench/host_time.py                    # default, stock (Python's collector, library walks), reentrant
  python bench/host_time.py --variants default,auto_gc --rows 48
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, save  # noqa: E402
from step_gaps import GcClock  # noqa: E402

VARIANTS = {
    "default": {},
    "stock": {"train.experimental.automatic_gc": True, "train.experimental.stock_loop_walks": True},
    "auto_gc": {"train.experimental.automatic_gc": True},
    "stock_walks": {"train.experimental.stock_loop_walks": True},
    "reentrant": {"train.experimental.reentrant_checkpoints": True},
}


def run_variant(name: str, rows: int, work: Path) -> dict:
    """One variant in this process."""
    import gc

    import side_by_side as sbs
    from shapes import SHAPES, shape_folder
    from transformers import TrainerCallback

    from common import add_trainer_callback

    SHAPES["narrow32"] = dict(SHAPES["tiny"], num_hidden_layers=32)
    folder = shape_folder("narrow32", work)
    rows_file = sbs.make_rows("b", work, 128, [128] * rows)
    marks: list[tuple[str, float]] = []
    clock = GcClock()

    class Marks(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            marks.append(("begin", time.perf_counter()))

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(("end", time.perf_counter()))

    add_trainer_callback(Marks())
    gc.callbacks.append(clock)
    overrides = {"train.experimental.sequential": True, **VARIANTS[name]}
    record = sbs.arm_studio(folder, rows_file, 128, 4, 0, work, overrides, epochs=3)
    gc.callbacks.remove(clock)
    steps = [(end - begin) * 1e3 for (_, begin), (_, end) in zip(marks[0::2], marks[1::2])]
    return {"variant": name, "overrides": VARIANTS[name], "steps": len(steps),
            "median_step_ms": round(statistics.median(steps), 1), "mean_step_ms": round(statistics.mean(steps), 1),
            "slowest_step_ms": round(max(steps), 1), "epoch_s": [e["seconds"] for e in record["epochs"]],
            "collection_s": round(clock.step_seconds, 3), "status": record["status"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="default,stock,reentrant", help=", ".join(VARIANTS))
    parser.add_argument("--rows", type=int, default=96, help="rows of 128 tokens per epoch (4 a step)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="/tmp/host-time")
    args = parser.parse_args()
    if args.one:
        from qlora_studio.core.quiet import quiet_libraries

        quiet_libraries()
        print("RESULT " + json.dumps(run_variant(args.one, args.rows, Path(args.work))), flush=True)
        return
    results = []
    for _ in range(args.repeats):
        for name in args.variants.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", name, "--rows", str(args.rows), "--work", args.work],
                                 capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(f"{name}: no result\n{out.stderr[-2000:]}")
                continue
            results.append(json.loads(lines[-1][len("RESULT "):]))
    save("host-time", {"shape": "narrow32 (Llama-3.1-8B's layers at hidden 64)", "rows": args.rows, "runs": results},
         RESULTS)
    print(f"{'variant':12} {'median ms':>9} {'mean ms':>8} {'slowest':>8} {'epoch 2 s':>9} {'gc s, run':>9}")
    for r in results:
        print(f"{r['variant']:12} {r['median_step_ms']:9.1f} {r['mean_step_ms']:8.1f} {r['slowest_step_ms']:8.1f} "
              f"{r['epoch_s'][1]:9.3f} {r['collection_s']:9.3f}")


if __name__ == "__main__":
    main()
