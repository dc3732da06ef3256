"""Side by side: the plain tutorial QLoRA recipe against QLoRA Studio's defaults, one process per arm.

Llama-3.1-8B shape with random weights (model.random_init; the plain arm fills the same weights),
LoRA r16 / alpha 32 / dropout 0.05 on all linear layers, bf16, the same rows in the same order
(every arm reads the file sequentially), grad_accum 1. Workloads a and b train two epochs of the
rows (per arm its own number of optimizer steps: the studio packs rows into token budgets); c and d
a fixed number of steps.

Workloads
  a    variable-length chat rows: 256 rows (--quick 96), log-normal lengths (median ~860 tokens,
       ~7% cut at max_length 2048), micro-batch 4 rows (plain, unsloth) / its token budget 4 x 2048
       (studio)
  b    fixed 2,048-token rows: 64 rows (--quick 48), micro-batch 4
  c24  the longest context that trains on a simulated 24 GB card: one row of T tokens per step
  c16  the same on a simulated 16 GB card
  c12  the same on a simulated 12 GB card
  d    32,768-token rows on the whole card: what each long-context lever costs (studio variants)

Arms
  plain            BitsAndBytesConfig nf4 + double quant, peft's prepare_model_for_kbit_training,
                   get_peft_model, Trainer with gradient checkpointing, sdpa, adamw_torch_fused and
                   DataCollatorForLanguageModeling (pads to the longest row); the default allocator
  studio           run_training with the defaults (packing auto, varlen attention, Liger, chunked
                   loss / offload / tiled MLP auto, expandable segments)
  studio:VARIANT   one lever switched (see VARIANTS): attention paths, Liger off, torch.compile,
                   sparser checkpointing, packing off (with or without length-grouped sampling), ...
  unsloth          Unsloth with its own defaults (bench/unsloth_arm.py): FastLanguageModel 4-bit
                   (nf4 + double quant) from the same random weights written as a checkpoint,
                   get_peft_model r16 / alpha 32 / dropout 0 (its fast path) / "unsloth" gradient
                   checkpointing, trl's SFTTrainer with Unsloth's auto padding-free batches, fused
                   AdamW as the other arms. It runs under its own PYTHONPATH (UNSLOTH_PYTHONPATH,
                   default /tmp/us:/tmp/base: bench/unsloth_setup.sh), since it pins older
                   transformers / trl / datasets than the project.

Reported per arm: for a and b the headline, real (non-pad) tokens of the rows over the second
epoch's wall-clock time (`common.epoch_clock`, the same for every arm: from on_epoch_begin, after
torch.cuda.synchronize, to the end of the epoch's last optimizer step on the GPU's timeline, so the
studio's end-of-training checkpoint, which no other arm writes, is left out); per-step real tokens/s (median over the
steps after the first two); peak allocated and peak reserved GiB (torch.cuda counters from after
loading); ratios against plain and against unsloth.

  python bench/side_by_side.py --workload a --arm plain          # one arm, this process
  python bench/side_by_side.py --run a,b --arms plain,studio      # each in its own subprocess, then the table
  python bench/side_by_side.py --run c24,c16 --quick              # longest context (planner's T, one try)
  python bench/side_by_side.py --run a,b --arms plain,studio,unsloth --quick   # against Unsloth (GPU machine)
  python bench/side_by_side.py --report                           # the table from the part files in --out (any machine)

Part files go to --out (default bench/results/side-by-side/), one JSON per (workload, arm); the
report merges them into side-by-side-<gpu>.json beside that folder (bench/results/): the parts of
one GPU, --gpu or else the GPU of the newest part file.

Estimated time on one H100 (process start ~15 s, 8B random-weight load ~5 s, each included):
  a   plain ~60 s, studio ~50 s; each studio:VARIANT ~50 s (flex_attention and compile ~+60 s)
  b   plain ~50 s, studio ~45 s
  c24 studio ~2 min at ~96k tokens (3 steps); plain ladder 4k/8k/16k ~40 s per rung (--quick: 3 rungs)
  c16 studio ~1.5 min; plain ladder ~40 s per rung
  d   studio and each lever variant ~50 s
  unsloth a ~60 s, b ~65 s on one H200 (import and load ~35 s; the checkpoint of random weights is
  written once per --work folder, ~10 s)
  --quick: 96 / 48 rows per epoch for a / b instead of 256 / 64, 2 steps instead of 3 for c/d,
  plain ladder 4k, 8k, 16k only.
  Measured with --quick on one H200 (two epochs per arm): a plain 76 s, studio 35 s, unsloth 62 s;
  b plain 43 s, studio 33 s, unsloth 66 s (the whole a,b x plain,studio,unsloth run: 6.3 min).
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

from common import (RESULTS, add_trainer_callback, bf16_matmul_tflops, chat_lengths, epoch_clock, epoch_figures, gpu_slug,
                    model_flops_per_token, profile_window, rows_of_lengths, save, shape_folder, simulate_card, step_clock)

SHAPE = "llama-3.1-8b"
PARTS = RESULTS / "side-by-side"
WORKLOADS = {
    "a": {"title": "variable-length chat rows (median ~860, max_length 2048), batch 4", "max_length": 2048, "batch": 4,
          "epochs": 2},
    "b": {"title": "fixed 2,048-token rows, batch 4", "max_length": 2048, "batch": 4, "epochs": 2},
    "c24": {"title": "longest context on a simulated 24 GB card", "card": 24, "batch": 1},
    "c16": {"title": "longest context on a simulated 16 GB card", "card": 16, "batch": 1},
    "c12": {"title": "longest context on a simulated 12 GB card", "card": 12, "batch": 1},
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
    "offload_prefetch": {"train.offload_checkpoints": "on", "train.experimental.prefetch_offload": True},
    "sync_logs": {"train.experimental.sync_logs": True},
    "tiled": {"train.tiled_mlp": "on"},
    "offload_tiled": {"train.offload_checkpoints": "on", "train.tiled_mlp": "on"},
    "expandable_off": ({}, {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}),
    "auto_gc": {"train.experimental.automatic_gc": True},
    "stock_walks": {"train.experimental.stock_loop_walks": True},
    "reentrant": {"train.experimental.reentrant_checkpoints": True},
    "card8": {"train.experimental.card_gb": 8},  # issue #26's 8 GB target: the planner's levers on a simulated 8 GB card
    "tiled_norms": {"train.experimental.tiled_norms": True},  # long context: with c12 / c16 / c24
    "ram32": {"train.experimental.host_ram_gb": 32},  # long context planned for a 32 GB workstation's pinned memory
    "dropout05": {"lora.dropout": 0.05},  # the default before lever 19 (bench/NOTES-speed.md)
}
PLAIN_LADDER = [4096, 8192, 12288, 16384, 24576, 32768]


def steps_for(workload: str, quick: bool) -> int:
    """Optimizer steps of the c and d workloads (a and b train whole epochs)."""
    return 2 if quick else 3


def rows_for(workload: str, quick: bool, smoke: bool, rows: int | None = None) -> int:
    if rows:
        return rows
    if smoke:
        return 48 if workload == "a" else 16
    return {"a": 96 if quick else 256, "b": 48 if quick else 64}[workload]


def row_lengths(workload: str, context: int, steps: int, rows: int, smoke: bool = False) -> list[int]:
    """Token counts of the rows, EOS included (all within max_length: no row is cut)."""
    if workload == "a":
        return chat_lengths(rows, median=60, longest=128) if smoke else chat_lengths(rows)
    if workload == "b":
        return [context] * rows
    return [context] * (steps + 1)


def make_rows(workload: str, work: Path, context: int | None, lengths: list[int]) -> Path:
    from tiny import build_tokenizer

    return rows_of_lengths(work / f"rows-{workload}-{context or 0}-{len(lengths)}.jsonl", lengths, build_tokenizer())


# ---- the arms (each runs in its own process) -----------------------------------------------------

def arm_plain(folder: Path, rows: Path, max_length: int, batch: int, steps: int, work: Path, callbacks=(),
              epochs: int | None = None) -> dict:
    """The recipe from the tutorials, written out plainly."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoTokenizer, BitsAndBytesConfig,
                              DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments)

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
    args = TrainingArguments(output_dir=str(work / "plain"), per_device_train_batch_size=batch,
                             max_steps=-1 if epochs else steps, num_train_epochs=epochs or 1,
                             learning_rate=1e-4, bf16=cuda, use_cpu=not cuda, gradient_checkpointing=True,
                             logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                             optim="adamw_torch_fused" if cuda else "adamw_torch",
                             train_sampling_strategy="sequential", include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.remove_callback(PrinterCallback)
    for callback in callbacks:
        trainer.add_callback(callback)
    return {**train_measured(trainer), "batching": f"padded to the longest of {batch} rows"}


def train_measured(trainer) -> dict:
    """Train with the step and epoch clocks, peaks counted from here: status, throughput, peaks, epochs
    (the plain and Unsloth arms alike)."""
    import torch

    steps_seen: list[tuple[float, int]] = []
    epochs_seen: list[dict] = []
    trainer.add_callback(step_clock(steps_seen))
    trainer.add_callback(epoch_clock(epochs_seen))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer.train()
        status = "trained"
    except torch.OutOfMemoryError:
        status = "oom"
    losses = [round(h["loss"], 5) for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    return {"status": status, **_throughput(steps_seen), **_peaks(), "epochs": epochs_seen, "losses": losses}


def arm_studio(folder: Path, rows: Path, max_length: int, batch: int, steps: int, work: Path, overrides: dict,
               epochs: int | None = None) -> dict:
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.runs.store import RunFolder

    config = RunConfig.model_validate({
        "model": {"name_or_path": str(folder), "random_init": True},
        "data": {"path": str(rows), "format": "text", "max_length": max_length, "validation_split": 0},
        "train": {"micro_batch_size": batch, "grad_accum": 1, "save_every_steps": 10**6,
                  **({"epochs": epochs} if epochs else {"max_steps": steps}),
                  "warmup_ratio": 0.0, "learning_rate": 1e-4, "on_oom": "stop"},
        "output_dir": str(work / "runs"),
    }).with_overrides(overrides)
    epochs_seen: list[dict] = []
    add_trainer_callback(epoch_clock(epochs_seen))
    events = []
    result = run_training(config, events.append)
    started = next((e for e in events if e.type == "run_started"), None)
    metrics = RunFolder(result.run_dir).read_metrics() if result.run_dir else []
    status = "trained" if result.status == "finished" else ("oom" if result.cause and result.cause.value == "oom"
                                                           else f"failed: {result.error}")
    rates = [m["tokens_per_s"] for m in metrics[2:] or metrics]  # real tokens: packed batches hold no padding
    timing = {"steps": len(metrics), "real_tokens": metrics[-1]["tokens"] if metrics else 0,
              "tokens_per_s": round(statistics.median(rates), 1) if rates else None}
    return {"status": status, **timing, **_peaks(), "epochs": epochs_seen, "losses": [round(m["loss"], 5) for m in metrics],
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


def run_one(args) -> dict | None:
    """One (workload, arm) in this process; saved as a part file."""
    workload = WORKLOADS[args.workload]
    arm, _, variant = args.arm.partition(":")
    if arm == "unsloth":
        return run_unsloth(args)
    import torch

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
    epochs = workload.get("epochs")
    context = args.context or (128 if args.smoke else workload.get("max_length"))
    if context is None:  # c24 / c16 / c12 without --context: the planner's longest
        context = longest_planned_context(folder, card, overrides)
    lengths = row_lengths(args.workload, context, steps, rows_for(args.workload, args.quick, args.smoke, args.rows)
                          if epochs else 0, args.smoke)
    rows = make_rows(args.workload, work, context, lengths)
    started = time.time()
    window = None
    if args.profile:  # kernels of steps 4-5, printed and saved beside the part file
        name = f"profile-{args.workload}-{args.arm.replace(':', '-')}.txt"
        window = profile_window(3, 5 if epochs else min(5, steps - 1), Path(args.out) / name)
        if arm != "plain":
            add_trainer_callback(window)
    if arm == "plain":
        record = arm_plain(folder, rows, context, workload["batch"], steps, work, [window] if window else [], epochs)
    else:
        record = arm_studio(folder, rows, context, workload["batch"], steps, work, overrides, epochs)
    if epochs:
        record.update(rows=len(lengths), **epoch_figures(record.pop("epochs"), sum(min(n, context) for n in lengths)))
        if args.workload == "b" and not args.smoke:  # model FLOP utilisation of the fixed rows, against this GPU's matmuls
            record.update(flops_per_token=model_flops_per_token(SHAPE, context), bf16_matmul_tflops=bf16_matmul_tflops())
    record.update(workload=args.workload, arm=args.arm, context=context, card_gb=card, wall_s=round(time.time() - started, 1),
                  allocator=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                  gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU")
    suffix = f"-{context}" if args.workload.startswith("c") else ""
    if not args.profile:  # the profiler slows the steps it watches: their tokens/s is no measurement
        save(f"side-by-side-{args.workload}{suffix}-{args.arm.replace(':', '-')}", record, Path(args.out))
    print("RESULT " + json.dumps(record), flush=True)
    return record


def run_unsloth(args) -> None:
    """The unsloth arm: rows and a checkpoint of the random weights are made here (the project's
    environment), then bench/unsloth_arm.py trains in a child under Unsloth's own PYTHONPATH and
    writes the part file; its output passes through."""
    workload = WORKLOADS[args.workload]
    if not workload.get("epochs"):
        raise SystemExit("the unsloth arm runs the a and b workloads only")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    context = args.context or (128 if args.smoke else workload["max_length"])
    lengths = row_lengths(args.workload, context, 0, rows_for(args.workload, args.quick, args.smoke, args.rows), args.smoke)
    rows = make_rows(args.workload, work, context, lengths)
    folder = weights_folder(shape_folder("tiny" if args.smoke else SHAPE, work))
    command = [sys.executable, str(Path(__file__).with_name("unsloth_arm.py")), "--folder", str(folder),
               "--rows", str(rows), "--max-length", str(context), "--batch", str(workload["batch"]),
               "--epochs", str(workload["epochs"]), "--real-tokens", str(sum(min(n, context) for n in lengths)),
               "--workload", args.workload, "--arm", args.arm, "--out", args.out, "--work", str(work / "unsloth")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.environ.get("UNSLOTH_PYTHONPATH", "/tmp/us:/tmp/base")
    env.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)  # Unsloth picks its own allocator settings
    sys.stdout.flush()
    done = subprocess.run(command, env=env, timeout=max(60, args.timeout - 20), check=False)
    if done.returncode:
        raise SystemExit(f"unsloth arm: exit {done.returncode}")


def weights_folder(folder: Path) -> Path:
    """`folder` (config.json and tokenizer) plus model.safetensors holding the random weights the
    plain arm loads (the same random_state_dict, bf16), for loaders that read a checkpoint from
    disk. Written once per work folder."""
    target = folder.with_name(folder.name + "-weights")
    checkpoint = target / "model.safetensors"
    if checkpoint.exists():
        return target
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from qlora_studio.core.model.loading import random_state_dict

    target.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file():
            shutil.copy2(f, target / f.name)
    started = time.time()
    state = random_state_dict(AutoConfig.from_pretrained(folder), torch.device("cpu"), torch.bfloat16)
    partial = target / "model.safetensors.partial"
    save_file(state, str(partial), metadata={"format": "pt"})
    partial.rename(checkpoint)
    print(f"wrote {checkpoint} ({checkpoint.stat().st_size / 1e9:.1f} GB, {time.time() - started:.0f} s)", flush=True)
    return target


# ---- orchestration and the table ------------------------------------------------------------------

def spawn(workload: str, arm: str, args, context: int | None = None) -> dict | None:
    command = [sys.executable, __file__, "--workload", workload, "--arm", arm, "--out", args.out, "--work", args.work]
    command += ["--quick"] * args.quick + ["--smoke"] * args.smoke + ["--profile"] * args.profile
    command += ["--rows", str(args.rows), "--timeout", str(args.timeout)] if args.rows else ["--timeout", str(args.timeout)]
    if context:
        command += ["--context", str(context)]
    env = dict(os.environ)
    if arm == "plain":
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)  # the plain recipe runs with PyTorch's default allocator
    # a session of its own, so that a timeout ends the arm's children too (the unsloth arm has one)
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = child.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, 9)
        stdout, stderr = child.communicate()
        timed_out = True
    log = Path(args.work) / f"log-{workload}-{arm.replace(':', '-')}{f'-{context}' if context else ''}.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(command)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    if timed_out:
        print(f"{workload} {arm}: timed out after {args.timeout} s\n{stderr[-3000:]}", flush=True)
        return None
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        print(f"{workload} {arm} {context or ''}: no result (exit {child.returncode})\n{stderr[-3000:]}", flush=True)
        return None
    record = json.loads(lines[-1][len("RESULT "):])
    print(f"{workload} {arm} {record['context']}: {record['status']}, epoch 2 {record.get('epoch2_tokens_per_s')} tok/s, "
          f"per step {record['tokens_per_s']} tok/s, peak {record['peak_allocated_gb']} / reserved "
          f"{record['peak_reserved_gb']} GiB, {record.get('wall_s')} s", flush=True)
    return record


def run_many(args) -> None:
    for workload in args.run.split(","):
        for arm in args.arms.split(","):
            if workload.startswith("c") and arm == "plain":
                ladder = [4096, 8192, 16384] if args.quick else PLAIN_LADDER
                for context in ladder:  # up the ladder until the plain recipe runs out of memory
                    record = spawn(workload, arm, args, context)
                    if record is None or record["status"] != "trained":
                        break
            elif workload.startswith("c") and not args.quick:
                record = spawn(workload, arm, args)
                if record is not None and record["status"] == "oom":  # one step down, to find what trains
                    spawn(workload, arm, args, record["context"] - 8192)
            else:
                spawn(workload, arm, args)
    report(args)


def _ratio(p: dict, base: dict | None, per_step: bool = False) -> float | None:
    """p's speed over base's: second-epoch tokens/s where both have it, per-step tokens/s where
    neither has (c and d), else none (the two figures are not the same measurement)."""
    if base is None or p is base or p["context"] != base["context"]:
        return None
    a, b = p.get("epoch2_tokens_per_s"), base.get("epoch2_tokens_per_s")
    if per_step or (a is None and b is None):
        a, b = p.get("tokens_per_s"), base.get("tokens_per_s")
    return round(a / b, 2) if a and b else None


def _memory_ratio(p: dict, base: dict | None) -> float | None:
    if base is None or p is base or p["context"] != base["context"] or not (p["peak_allocated_gb"] and base["peak_allocated_gb"]):
        return None
    return round(p["peak_allocated_gb"] / base["peak_allocated_gb"], 2)


def _utilisation(p: dict) -> dict:
    """Model (and hardware: with the recompute) FLOP utilisation from the second epoch's rate."""
    flops, peak, rate = p.get("flops_per_token"), p.get("bf16_matmul_tflops"), p.get("epoch2_tokens_per_s")
    if not (flops and peak and rate):
        return {}
    return {"model_tflops": round(rate * flops["model"] / 1e12, 1), "mfu": round(rate * flops["model"] / (peak * 1e12), 3),
            "hfu": round(rate * flops["hardware"] / (peak * 1e12), 3), "bf16_matmul_tflops": peak}


def report(args) -> None:
    files = sorted(Path(args.out).glob("side-by-side-*.json"), key=lambda f: f.stat().st_mtime)
    parts = [json.loads(f.read_text()) for f in files]
    if not parts:
        print(f"no part files in {args.out}")
        return
    # one GPU's runs per table: --gpu (a name or its slug), else the GPU of the newest part file
    wanted = getattr(args, "gpu", None)
    gpu = next((p["environment"]["gpu"] for p in reversed(parts) if not wanted
                or wanted.lower() in (p["environment"]["gpu"].lower(), gpu_slug(p["environment"]["gpu"]))), None)
    parts = [p for p in parts if p["environment"]["gpu"] == gpu]
    if not parts:
        print(f"no part files of {wanted} in {args.out}")
        return
    parts.sort(key=lambda p: (p["workload"], p["arm"], p["context"]))
    rows = []
    for workload in WORKLOADS:
        mine = [p for p in parts if p["workload"] == workload]
        plain = [p for p in mine if p["arm"] == "plain" and p["status"] == "trained"]
        base = max(plain, key=lambda p: p["context"]) if plain else None
        unsloth = next((p for p in mine if p["arm"] == "unsloth" and p["status"] == "trained"), None)
        for p in mine:
            rows.append({k: p.get(k) for k in ("workload", "arm", "context", "card_gb", "status", "rows", "epoch2_s",
                                               "epoch2_tokens_per_s", "tokens_per_s", "peak_allocated_gb",
                                               "peak_reserved_gb", "predicted_total_gb")}
                        | {"speed_vs_plain": _ratio(p, base), "memory_vs_plain": _memory_ratio(p, base),
                           "speed_vs_unsloth": _ratio(p, unsloth), "step_speed_vs_unsloth": _ratio(p, unsloth, True),
                           "memory_vs_unsloth": _memory_ratio(p, unsloth)} | _utilisation(p))
    longest = {}
    for p in parts:
        if p["workload"].startswith("c") and p["status"] == "trained":
            key = (p["workload"], p["arm"])
            longest[key] = max(longest.get(key, 0), p["context"])
    # the project's environment heads the file; the unsloth arm's own is in its part
    measured_on = next((p["environment"] for p in parts if p["arm"] != "unsloth"), parts[0]["environment"])
    save("side-by-side", {"workloads": {k: v["title"] for k, v in WORKLOADS.items()}, "rows": rows,
                          "longest_context": {f"{w}/{a}": t for (w, a), t in longest.items()}, "parts": parts},
         Path(args.out).parent, measured_on=measured_on)
    print(f"\n{gpu}: tok/s are real (non-pad) tokens per second; ep2 = the second epoch's wall clock, step = median step")
    print(f"{'workload':8} {'arm':20} {'tokens':>6} {'status':8} {'ep2 tok/s':>9} {'step tok/s':>10} {'peak':>6} "
          f"{'reserved':>8} {'x plain':>7} {'mem x':>5} {'x unsl':>6} {'step x':>6} {'mem x u':>7}")
    for r in rows:
        print(f"{r['workload']:8} {r['arm']:20} {r['context']:6} {r['status'][:8]:8} {r['epoch2_tokens_per_s'] or 0:9.0f} "
              f"{r['tokens_per_s'] or 0:10.0f} {r['peak_allocated_gb'] or 0:6.2f} {r['peak_reserved_gb'] or 0:8.2f} "
              f"{r['speed_vs_plain'] or '':>7} {r['memory_vs_plain'] or '':>5} {r['speed_vs_unsloth'] or '':>6} "
              f"{r['step_speed_vs_unsloth'] or '':>6} {r['memory_vs_unsloth'] or '':>7}")
    for workload in WORKLOADS:  # the first steps' losses of each arm on the same rows (issue #26: they agree)
        first = {p["arm"]: p.get("losses", [])[:5] for p in parts if p["workload"] == workload and p.get("losses")}
        if first:
            print(f"{workload} first losses: " + "; ".join(f"{arm} {', '.join(f'{v:.4f}' for v in losses)}"
                                                       for arm, losses in first.items()))
    for r in rows:
        if r.get("mfu"):
            print(f"{r['workload']} {r['arm']}: {r['model_tflops']} model TFLOP/s = MFU {r['mfu']:.1%} "
                  f"(with the recompute {r['hfu']:.1%}) of the measured bf16 matmul rate, {r['bf16_matmul_tflops']} TFLOP/s")
    for (w, a), t in sorted(longest.items()):
        print(f"longest context that trained, {w} {a}: {t:,} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=list(WORKLOADS), help="run one arm on this workload in this process")
    parser.add_argument("--arm", default="studio", help="plain | studio | studio:VARIANT | unsloth")
    parser.add_argument("--context", type=int, help="tokens per row (c and d workloads)")
    parser.add_argument("--run", help="workloads to run, each arm in its own subprocess (e.g. a,b)")
    parser.add_argument("--arms", default="plain,studio", help=f"with --run; variants: {', '.join(VARIANTS)}")
    parser.add_argument("--report", action="store_true", help="print the table from the part files in --out")
    parser.add_argument("--quick", action="store_true", help="fewer rows (a 96, b 48) or steps, a shorter plain ladder")
    parser.add_argument("--rows", type=int, help="rows per epoch of the a and b workloads (default 256 / 64, --quick 96 / 48)")
    parser.add_argument("--gpu", help="with --report: the GPU whose part files to merge (default: the newest part's)")
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
