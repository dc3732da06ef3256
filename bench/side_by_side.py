"""Side by side: the plain tutorial QLoRA recipe against QLoRA Studio's defaults, one process per arm.

Llama-3.1-8B shape with random weights (model.random_init; the plain arm fills the same weights),
LoRA r16 / alpha 32 / dropout 0.05 on all linear layers, bf16, the same rows in the same order
(both arms read the file sequentially), the same number of optimizer steps, grad_accum 1.

Workloads
  a    variable-length chat rows: 256 rows, log-normal lengths (median ~860 tokens, ~7% cut at
       max_length 2048), micro-batch 4 rows (plain) / its token budget 4 x 2048 (studio)
  b    fixed 2,048-token rows, micro-batch 4
  c24  the longest context that trains on a simulated 24 GB card: one row of T tokens per step
  c16  the same on a simulated 16 GB card
  d    32,768-token rows on the whole card: what each long-context lever costs (studio variants)

Arms
  plain            BitsAndBytesConfig nf4 + double quant, peft's prepare_model_for_kbit_training,
                   get_peft_model, Trainer with gradient checkpointing, sdpa, adamw_torch_fused and
                   DataCollatorForLanguageModeling (pads to the longest row); the default allocator
  studio           run_training with the defaults (packing auto, varlen attention, Liger, chunked
                   loss / offload / tiled MLP auto, expandable segments)
  studio:VARIANT   one lever switched (see VARIANTS): attention paths, Liger off, torch.compile,
                   sparser checkpointing, packing off (with or without length-grouped sampling), ...

Reported per arm: real (non-pad) tokens/s (median over the steps after the first two), peak
allocated and peak reserved GiB (torch.cuda counters from after loading), and for a pair the ratio.

  python bench/side_by_side.py --workload a --arm plain          # one arm, this process
  python bench/side_by_side.py --run a,b --arms plain,studio      # each in its own subprocess, then the table
  python bench/side_by_side.py --run c24,c16 --quick              # longest context (planner's T, one try)
  python bench/side_by_side.py --report                           # the table from the part files in --out (any machine)

Part files go to --out (default bench/results/side-by-side/), one JSON per (workload, arm); the
report merges them into side-by-side-<gpu>.json beside that folder (bench/results/).

Estimated time on one H100 (process start ~15 s, 8B random-weight load ~5 s, each included):
  a   plain ~60 s, studio ~50 s; each studio:VARIANT ~50 s (flex_attention and compile ~+60 s)
  b   plain ~50 s, studio ~45 s
  c24 studio ~2 min at ~96k tokens (3 steps); plain ladder 4k/8k/16k ~40 s per rung (--quick: 3 rungs)
  c16 studio ~1.5 min; plain ladder ~40 s per rung
  d   studio and each lever variant ~50 s
  --quick: 8 steps instead of 12 for a/b, 2 steps instead of 3 for c/d, plain ladder 4k, 8k, 16k only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, add_trainer_callback, chat_lengths, profile_window, rows_of_lengths, save, shape_folder, simulate_card

SHAPE = "llama-3.1-8b"
PARTS = RESULTS / "side-by-side"
WORKLOADS = {
    "a": {"title": "variable-length chat rows (median ~860, max_length 2048), batch 4", "max_length": 2048, "batch": 4},
    "b": {"title": "fixed 2,048-token rows, batch 4", "max_length": 2048, "batch": 4},
    "c24": {"title": "longest context on a simulated 24 GB card", "card": 24, "batch": 1},
    "c16": {"title": "longest context on a simulated 16 GB card", "card": 16, "batch": 1},
    "d": {"title": "32,768-token rows, whole card: cost of the long-context levers", "max_length": 32768, "batch": 1},
}
# name: config overrides; every variant is the studio arm with one thing changed
VARIANTS = {
    "sdpa": {"model.attn_implementation": "sdpa", "data.packing": "on"},
    "flex": {"model.attn_implementation": "flex_attention", "data.packing": "on"},
    "varlen_rows": {"train.experimental.varlen_rows_only": True},
    "noliger": {"train.liger_kernels": "off"},
    "chunked": {"train.chunked_loss": "on"},
    "compile": {"train.experimental.compile_layers": True},
    "ckpt2": {"train.experimental.every_n_layers": 2},
    "peft_lora": {"train.experimental.peft_lora": True},
    "unpacked": {"data.packing": "off"},
    "unpacked_grouped": {"data.packing": "off", "train.experimental.group_by_length": True},
    "offload": {"train.offload_checkpoints": "on"},
    "sync_offload": {"train.offload_checkpoints": "on", "train.experimental.sync_offload": True},
    "sync_logs": {"train.experimental.sync_logs": True},
    "tiled": {"train.tiled_mlp": "on"},
    "offload_tiled": {"train.offload_checkpoints": "on", "train.tiled_mlp": "on"},
    "expandable_off": ({}, {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}),
}
PLAIN_LADDER = [4096, 8192, 12288, 16384, 24576, 32768]


def steps_for(workload: str, quick: bool) -> int:
    if workload in ("a", "b"):
        return 8 if quick else 12
    return 2 if quick else 3


def make_rows(workload: str, work: Path, context: int | None, steps: int, smoke: bool = False) -> Path:
    from tiny import build_tokenizer

    tokenizer = build_tokenizer()
    if workload == "a":
        lengths = chat_lengths(48, median=60, longest=128) if smoke else chat_lengths(256)
    elif workload == "b":
        lengths = [context] * 64
    else:
        lengths = [context] * (steps + 1)
    return rows_of_lengths(work / f"rows-{workload}-{context or 0}.jsonl", lengths, tokenizer)


# ---- the arms (each runs in its own process) -----------------------------------------------------

def arm_plain(folder: Path, rows: Path, max_length: int, batch: int, steps: int, work: Path, callbacks=()) -> dict:
    """The recipe from the tutorials, written out plainly."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoTokenizer, BitsAndBytesConfig,
                              DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainerCallback,
                              TrainingArguments)

    from qlora_studio.core.model.loading import random_state_dict

    cuda = torch.cuda.is_available()
    device, dtype = (torch.device("cuda", 0), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(folder)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=dtype)
    state = random_state_dict(config, torch.device("cpu"), dtype)  # as a checkpoint would load: from the host
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
        None, config=config, state_dict=state, quantization_config=bnb, device_map={"": device}, dtype=dtype)
    del state
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    raw = load_dataset("json", data_files=str(rows), split="train")
    dataset = raw.map(lambda b: tokenizer([t + tokenizer.eos_token for t in b["text"]], truncation=True,
                                          max_length=max_length), batched=True, remove_columns=["text"])
    args = TrainingArguments(output_dir=str(work / "plain"), per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=1e-4, bf16=cuda, use_cpu=not cuda, gradient_checkpointing=True,
                             logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                             optim="adamw_torch_fused" if cuda else "adamw_torch",
                             train_sampling_strategy="sequential", include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.remove_callback(PrinterCallback)
    steps_seen: list[tuple[float, int]] = []

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, c, **k):
            sync()
            self.t, self.tokens = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, a, state, c, **k):
            sync()
            steps_seen.append((time.perf_counter() - self.t, int(state.num_input_tokens_seen - self.tokens)))

    trainer.add_callback(Clock())
    for callback in callbacks:
        trainer.add_callback(callback)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer.train()
        status = "trained"
    except torch.OutOfMemoryError:
        status = "oom"
    return {"status": status, **_throughput(steps_seen), **_peaks(), "batching": f"padded to the longest of {batch} rows"}


def arm_studio(folder: Path, rows: Path, max_length: int, batch: int, steps: int, work: Path, overrides: dict) -> dict:
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.runs.store import RunFolder

    config = RunConfig.model_validate({
        "model": {"name_or_path": str(folder), "random_init": True},
        "data": {"path": str(rows), "format": "text", "max_length": max_length, "validation_split": 0},
        "train": {"micro_batch_size": batch, "grad_accum": 1, "max_steps": steps, "save_every_steps": 10**6,
                  "warmup_ratio": 0.0, "learning_rate": 1e-4, "on_oom": "stop"},
        "output_dir": str(work / "runs"),
    }).with_overrides(overrides)
    events = []
    result = run_training(config, events.append)
    started = next((e for e in events if e.type == "run_started"), None)
    metrics = RunFolder(result.run_dir).read_metrics() if result.run_dir else []
    status = "trained" if result.status == "finished" else ("oom" if result.cause and result.cause.value == "oom"
                                                           else f"failed: {result.error}")
    rates = [m["tokens_per_s"] for m in metrics[2:] or metrics]  # real tokens: packed batches hold no padding
    timing = {"steps": len(metrics), "real_tokens": metrics[-1]["tokens"] if metrics else 0,
              "tokens_per_s": round(statistics.median(rates), 1) if rates else None}
    return {"status": status, **timing, **_peaks(),
            "predicted_total_gb": started.predicted_total_gb if started else None,
            "predicted_peak_gb": started.predicted_peak_gb if started else None,
            "prediction": started.prediction if started else "", "batching": started.batching if started else "",
            "warnings": [e.message for e in events if e.type == "warning"]}


def _throughput(steps: list[tuple[float, int]]) -> dict:
    """Median real tokens/s over the steps after the first two (warm-up, allocator growth)."""
    measured = steps[2:] or steps
    rates = [tokens / seconds for seconds, tokens in measured if seconds > 0]
    return {"steps": len(steps), "real_tokens": sum(t for _, t in steps),
            "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
            "step_s": [round(s, 3) for s, _ in steps]}


def _peaks() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"peak_allocated_gb": None, "peak_reserved_gb": None}
    return {"peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 3),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1024**3, 3)}


def longest_planned_context(folder: Path, card_gb: float, overrides: dict) -> int:
    """The largest multiple of 4,096 tokens the planner says fits the card with the studio's defaults."""
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.planner.plan import estimate_config

    best = 4096
    for tokens in range(4096, 262144 + 1, 4096):
        config = RunConfig.model_validate({"model": {"name_or_path": str(folder)}, "data": {"max_length": tokens},
                                           "train": {"micro_batch_size": 1, "grad_accum": 1}}).with_overrides(overrides)
        if estimate_config(config, card_gb).fits(card_gb):
            best = tokens
        else:
            break
    return best


def run_one(args) -> dict:
    """One (workload, arm) in this process; saved as a part file."""
    import torch

    workload = WORKLOADS[args.workload]
    arm, _, variant = args.arm.partition(":")
    # every studio arm keeps the data's order, so all arms see the same rows; a card is the config's too
    overrides = {**VARIANTS.get(variant, {}), "train.experimental.sequential": True}
    if workload.get("card"):
        overrides["train.experimental.card_gb"] = workload["card"]
    if arm == "studio":
        from qlora_studio.core.model.devices import configure_cuda_allocator

        configure_cuda_allocator()  # before CUDA starts, as the app's entry points do
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = shape_folder("tiny" if args.smoke else SHAPE, work)
    card = workload.get("card")
    if torch.cuda.is_available():
        simulate_card(card)
    steps = steps_for(args.workload, args.quick)
    context = args.context or (128 if args.smoke else workload.get("max_length"))
    if context is None:  # c24 / c16 without --context: the planner's longest
        context = longest_planned_context(folder, card, overrides)
    rows = make_rows(args.workload, work, context, steps, args.smoke)
    started = time.time()
    window = None
    if args.profile:  # kernels of steps 4-5, printed and saved beside the part file
        name = f"profile-{args.workload}-{args.arm.replace(':', '-')}.txt"
        window = profile_window(3, min(5, steps - 1), Path(args.out) / name)
        if arm != "plain":
            add_trainer_callback(window)
    if arm == "plain":
        record = arm_plain(folder, rows, context, workload["batch"], steps, work, [window] if window else [])
    else:
        record = arm_studio(folder, rows, context, workload["batch"], steps, work, overrides)
    record.update(workload=args.workload, arm=args.arm, context=context, card_gb=card, wall_s=round(time.time() - started, 1),
                  allocator=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                  gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU")
    suffix = f"-{context}" if args.workload.startswith("c") else ""
    if not args.profile:  # the profiler slows the steps it watches: their tokens/s is no measurement
        save(f"side-by-side-{args.workload}{suffix}-{args.arm.replace(':', '-')}", record, Path(args.out))
    print("RESULT " + json.dumps(record), flush=True)
    return record


# ---- orchestration and the table ------------------------------------------------------------------

def spawn(workload: str, arm: str, args, context: int | None = None) -> dict | None:
    command = [sys.executable, __file__, "--workload", workload, "--arm", arm, "--out", args.out, "--work", args.work]
    command += ["--quick"] * args.quick + ["--smoke"] * args.smoke + ["--profile"] * args.profile
    if context:
        command += ["--context", str(context)]
    env = dict(os.environ)
    if arm == "plain":
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)  # the plain recipe runs with PyTorch's default allocator
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"{workload} {arm}: timed out after {args.timeout} s", flush=True)
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        print(f"{workload} {arm} {context or ''}: no result (exit {done.returncode})\n{done.stderr[-3000:]}", flush=True)
        return None
    record = json.loads(lines[-1][len("RESULT "):])
    print(f"{workload} {arm} {record['context']}: {record['status']}, {record['tokens_per_s']} tok/s, "
          f"peak {record['peak_allocated_gb']} / reserved {record['peak_reserved_gb']} GiB", flush=True)
    return record


def run_many(args) -> None:
    for workload in args.run.split(","):
        for arm in args.arms.split(","):
            if workload in ("c24", "c16") and arm == "plain":
                ladder = [4096, 8192, 16384] if args.quick else PLAIN_LADDER
                for context in ladder:  # up the ladder until the plain recipe runs out of memory
                    record = spawn(workload, arm, args, context)
                    if record is None or record["status"] != "trained":
                        break
            elif workload in ("c24", "c16") and not args.quick:
                record = spawn(workload, arm, args)
                if record is not None and record["status"] == "oom":  # one step down, to find what trains
                    spawn(workload, arm, args, record["context"] - 8192)
            else:
                spawn(workload, arm, args)
    report(args)


def report(args) -> None:
    parts = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("side-by-side-*.json"))]
    gpus = sorted({p["environment"]["gpu"] for p in parts}, key=lambda g: -sum(p["environment"]["gpu"] == g for p in parts))
    parts = [p for p in parts if gpus and p["environment"]["gpu"] == gpus[0]]  # one GPU's runs per table
    if not parts:
        print(f"no part files in {args.out}")
        return
    rows = []
    for workload in WORKLOADS:
        mine = [p for p in parts if p["workload"] == workload]
        plain = [p for p in mine if p["arm"] == "plain" and p["status"] == "trained"]
        base = max(plain, key=lambda p: p["context"]) if plain else None
        for p in sorted(mine, key=lambda p: (p["arm"], p["context"])):
            ratio = mem = None
            if base and p is not base and p["tokens_per_s"] and base["tokens_per_s"] and p["context"] == base["context"]:
                ratio = round(p["tokens_per_s"] / base["tokens_per_s"], 2)
                if p["peak_allocated_gb"] and base["peak_allocated_gb"]:
                    mem = round(p["peak_allocated_gb"] / base["peak_allocated_gb"], 2)
            rows.append({k: p.get(k) for k in ("workload", "arm", "context", "card_gb", "status", "tokens_per_s",
                                               "peak_allocated_gb", "peak_reserved_gb", "predicted_total_gb")}
                        | {"speed_vs_plain": ratio, "memory_vs_plain": mem})
    longest = {}
    for p in parts:
        if p["workload"] in ("c24", "c16") and p["status"] == "trained":
            key = (p["workload"], p["arm"])
            longest[key] = max(longest.get(key, 0), p["context"])
    save("side-by-side", {"workloads": {k: v["title"] for k, v in WORKLOADS.items()}, "rows": rows,
                          "longest_context": {f"{w}/{a}": t for (w, a), t in longest.items()}, "parts": parts},
         Path(args.out).parent, measured_on=parts[0]["environment"])
    print(f"\n{'workload':8} {'arm':24} {'tokens':>7} {'status':8} {'tok/s':>9} {'peak':>7} {'reserved':>8} "
          f"{'pred':>6} {'x plain':>7} {'mem x':>6}")
    for r in rows:
        print(f"{r['workload']:8} {r['arm']:24} {r['context']:7} {r['status'][:8]:8} {r['tokens_per_s'] or 0:9.0f} "
              f"{r['peak_allocated_gb'] or 0:7.2f} {r['peak_reserved_gb'] or 0:8.2f} {r['predicted_total_gb'] or 0:6.2f} "
              f"{r['speed_vs_plain'] or '':>7} {r['memory_vs_plain'] or '':>6}")
    for (w, a), t in sorted(longest.items()):
        print(f"longest context that trained, {w} {a}: {t:,} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=list(WORKLOADS), help="run one arm on this workload in this process")
    parser.add_argument("--arm", default="studio", help="plain | studio | studio:VARIANT")
    parser.add_argument("--context", type=int, help="tokens per row (c and d workloads)")
    parser.add_argument("--run", help="workloads to run, each arm in its own subprocess (e.g. a,b)")
    parser.add_argument("--arms", default="plain,studio", help=f"with --run; variants: {', '.join(VARIANTS)}")
    parser.add_argument("--report", action="store_true", help="print the table from the part files in --out")
    parser.add_argument("--quick", action="store_true", help="fewer steps, a shorter plain ladder")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and short rows: checks the script on a CPU")
    parser.add_argument("--profile", action="store_true", help="profile steps 4-5 of each arm (GPU kernels by kind, idle gaps)")
    parser.add_argument("--out", default=str(PARTS), help="folder for the part files")
    parser.add_argument("--work", default="/tmp/side-by-side")
    parser.add_argument("--timeout", type=int, default=420, help="seconds per subprocess")
    args = parser.parse_args()
    if args.workload:
        run_one(args)
    elif args.run:
        run_many(args)
    elif args.report:
        report(args)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
