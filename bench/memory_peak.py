"""What is alive at a training step's memory peak, next to what the planner predicted for each part.

Trains a few steps of the Llama-3.1-8B shape (random weights) at one point of the planner's
validation grid, with torch's allocator history on, replays the history to the moment of the
highest allocated total, and groups the live blocks by the innermost frame of our code or of the
libraries (transformers, peft, bitsandbytes, liger). Used to find which term of
core/planner/estimate.py is off when bench/validate_planner.py finds a wrong verdict.

  python bench/memory_peak.py --tokens 65536 --set train.offload_checkpoints=on [--card 24]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from common import add_trainer_callback, rows_of_lengths, shape_folder, simulate_card

from validate_planner import SHAPE, point_config

LIBRARIES = ("qlora_studio", "/core/", "transformers/", "peft/", "bitsandbytes/", "liger_kernel/", "accelerate/")
SKIP = ("torch/utils/checkpoint.py", "torch/nn/modules/module.py", "torch/autograd/", "/contextlib.py")


def where(frames: list[dict]) -> str:
    """The innermost frame from our code or a library, with the torch function it called."""
    inner = next((f for f in frames if not any(s in f["filename"] for s in SKIP)), frames[0] if frames else None)
    ours = next((f for f in frames if any(lib in f["filename"] for lib in LIBRARIES)), None)
    if ours is None:
        return f"{inner['filename'].rsplit('/', 2)[-1]}:{inner['name']}" if inner else "?"
    short = "/".join(ours["filename"].split("/")[-2:])
    return f"{short}:{ours['line']} {ours['name']}"


def peak_blocks(snapshot: dict) -> tuple[int, list[tuple[int, dict]], str]:
    """Replay the allocation trace: (peak bytes, the blocks live at the peak, what allocated last)."""
    live: dict[int, tuple[int, list]] = {}
    total = best = 0
    best_live: dict = {}
    last = ""
    for trace in snapshot["device_traces"]:
        for event in trace:
            action = event["action"]
            if action == "alloc":
                live[event["addr"]] = (event["size"], event.get("frames", []))
                total += event["size"]
                if total > best:
                    best, best_live, last = total, dict(live), where(event.get("frames", []))
            elif action in ("free_completed",) and event["addr"] in live:
                total -= live.pop(event["addr"])[0]
    return best, [(size, {"frames": frames}) for size, frames in best_live.values()], last


def main() -> None:
    import torch
    from transformers import TrainerCallback

    from qlora_studio.core.model.devices import configure_cuda_allocator

    configure_cuda_allocator()
    from qlora_studio.core.planner.plan import estimate_config
    from qlora_studio.core.quiet import quiet_libraries
    from qlora_studio.core.training import runner
    from tiny import build_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--shape", default=SHAPE, help="a shape of tests/shapes.py")
    parser.add_argument("--card", type=int, help="simulated card (GiB); none: the whole GPU")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE (lora_r too)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--work", default="/tmp/memory-peak")
    parser.add_argument("--top", type=int, default=22)
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()
    quiet_libraries()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = shape_folder(args.shape, work)
    train = {}
    for item in args.set:
        key, value = item.split("=", 1)
        train[key.removeprefix("train.")] = int(value) if value.isdigit() else value
    rows = rows_of_lengths(work / f"rows-{args.tokens}.jsonl", [args.tokens] * (args.steps + 1), build_tokenizer())
    config = point_config(folder, rows, args.tokens, args.steps, work, **dict(train))
    if args.card:
        config = config.with_overrides({"train.experimental.card_gb": args.card})
    e = estimate_config(config, args.card)
    print(e.breakdown(args.card), flush=True)
    simulate_card(args.card)

    before = {}

    class Record(TrainerCallback):
        def on_step_begin(self, a, state, c, **k):
            if state.global_step == 0:
                before["allocated"] = torch.cuda.memory_allocated()
                torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")

    add_trainer_callback(Record())
    started = time.time()
    result = runner.run_training(config, lambda event: None)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak, blocks, last = peak_blocks(snapshot)
    base = before.get("allocated", 0)
    groups: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for size, block in blocks:
        label = where(block["frames"])
        groups[label] += size
        counts[label] += 1
    gib = 1024**3
    print(f"\n{result.status} {result.error or ''} in {time.time() - started:.0f} s; "
          f"max_memory_allocated {torch.cuda.max_memory_allocated() / gib:.2f} GiB; "
          f"replayed peak {(base + peak) / gib:.2f} GiB = {base / gib:.2f} held before step 1 (weights, adapters) "
          f"+ {peak / gib:.2f} allocated in the steps, of which:")
    print(f"the allocation that set the peak: {last}")
    for label, size in sorted(groups.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {size / gib:7.3f} GiB  x{counts[label]:<5} {label}")
    parts = dict(e.parts())
    print("predicted: " + ", ".join(f"{k} {v / gib:.2f}" for k, v in parts.items())
          + f"; peak allocated {e.peak_allocated_bytes / gib:.2f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "tokens": args.tokens, "card": args.card, "train": train, "status": result.status,
            "max_allocated": torch.cuda.max_memory_allocated(), "before_steps": base, "replayed_peak": base + peak, "set_by": last,
            "groups": sorted(([k, v, counts[k]] for k, v in groups.items()), key=lambda g: -g[1])[:60],
            "predicted": {**{k: v for k, v in parts.items()}, "peak_allocated": e.peak_allocated_bytes,
                          "checkpoints": e.checkpoint_bytes, "layer": e.layer_activation_bytes,
                          "logits": e.logits_bytes, "assumptions": e.assumptions()},
        }, indent=1))


if __name__ == "__main__":
    main()
