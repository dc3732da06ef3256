"""A 7B-shaped model (Llama-2-7B, random weights) on a GPU, three measurements:

  train      `run_training` end to end at 2048 x 4: tokens/s and VRAM in metrics.jsonl, and the
             planner's predicted peak beside the measured one
  oom        the same run on a simulated 24 GB card (set_per_process_memory_fraction) starting at
             micro-batch 32: out-of-memory recovery must finish at the same effective batch
  reference  the plain recipe users copy (peft's prepare_model_for_kbit_training + Trainer, same
             shape and data): tokens/s and peak, to compare with `train`
    python bench/gpu_7b.py [--parts train,oom,reference]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

from common import fixed_length_rows, save, shape_folder

SEQ = 2048


def base_config(folder: Path, data: Path, work: Path, **train):
    from qlora_studio.core.config import RunConfig

    settings = {"micro_batch_size": 4, "grad_accum": 1, "max_steps": 12, "save_every_steps": 10**6,
                "warmup_ratio": 0.0, "learning_rate": 1e-4, "liger_kernels": "off"}
    settings.update(train)
    return RunConfig.model_validate({
        "model": {"name_or_path": str(folder), "random_init": True},
        "data": {"path": str(data), "max_length": SEQ, "validation_split": 0, "format": "text"},
        "train": settings,
        "output_dir": str(work / "runs"),
    })


def part_train(folder, data, work):
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.runs.store import RunFolder

    events = []
    result = run_training(base_config(folder, data, work), events.append)
    assert result.status == "finished", result.error
    metrics = RunFolder(result.run_dir).read_metrics()
    started = next(e for e in events if e.type == "run_started")
    return {
        "steps": result.step,
        "metrics_keys": sorted(metrics[-1]),
        "tokens_per_s_median": statistics.median(m["tokens_per_s"] for m in metrics[2:]),
        "peak_allocated_gb": max(m["vram_peak_gb"] for m in metrics),
        "reserved_gb": max(m["vram_reserved_gb"] for m in metrics),
        "device_used_gb": max(m.get("vram_device_used_gb", 0) for m in metrics),
        "predicted_peak_gb": started.predicted_peak_gb,
        "weights": started.quantization,
        "metrics_last": metrics[-1],
    }


def part_liger(folder, data, work):
    """`train` again with Liger kernels (fused cross-entropy, RMSNorm, SwiGLU, RoPE)."""
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.runs.store import RunFolder

    events = []
    result = run_training(base_config(folder, data, work, liger_kernels="on"), events.append)
    assert result.status == "finished", result.error
    metrics = RunFolder(result.run_dir).read_metrics()
    started = next(e for e in events if e.type == "run_started")
    return {"tokens_per_s_median": statistics.median(m["tokens_per_s"] for m in metrics[2:]),
            "peak_allocated_gb": max(m["vram_peak_gb"] for m in metrics), "predicted_peak_gb": started.predicted_peak_gb}


def part_oom(folder, data, work):
    import torch

    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.runs.store import RunFolder

    total = torch.cuda.get_device_properties(0).total_memory
    budget = 24 * 1024**3
    torch.cuda.set_per_process_memory_fraction(budget / total, 0)
    events = []
    try:
        config = base_config(folder, data, work, micro_batch_size=32, grad_accum=1, max_steps=4).with_overrides(
            {"data.packing": "off"})  # this part measures the micro-batch halving of unpacked runs
        result = run_training(config, events.append)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    changes = [e.to_dict() for e in events if e.type == "settings_changed"]
    metrics = RunFolder(result.run_dir).read_metrics()
    return {
        "budget_gb": 24,
        "status": result.status,
        "error": result.error,
        "steps": result.step,
        "changes": changes,
        "effective_batch": [m["micro_batch_size"] * m["grad_accum"] for m in metrics],
        "micro_batch": [m["micro_batch_size"] for m in metrics],
        "peak_allocated_gb": max(m["vram_peak_gb"] for m in metrics) if metrics else None,
    }


def part_reference(folder, data, work):
    """The recipe from the tutorials, written out plainly (this is what we compare against)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoConfig, AutoTokenizer, BitsAndBytesConfig, DataCollatorForLanguageModeling,
                              MODEL_FOR_CAUSAL_LM_MAPPING, PrinterCallback, Trainer, TrainingArguments)

    from qlora_studio.core.model.loading import random_state_dict

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(folder)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    state = random_state_dict(config, torch.device("cuda", 0), torch.bfloat16)
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
        None, config=config, state_dict=state, quantization_config=bnb, device_map={"": 0}, dtype=torch.bfloat16)
    del state
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    raw = load_dataset("json", data_files=str(data), split="train")
    dataset = raw.map(lambda b: tokenizer([t + tokenizer.eos_token for t in b["text"]], truncation=True, max_length=SEQ),
                      batched=True, remove_columns=["text"])
    args = TrainingArguments(output_dir=str(work / "reference"), per_device_train_batch_size=4, max_steps=12,
                             learning_rate=1e-4, bf16=True, gradient_checkpointing=True, logging_steps=1,
                             save_strategy="no", report_to="none", optim="adamw_torch_fused")
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.remove_callback(PrinterCallback)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    times = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    trainer.add_callback(Clock())
    trainer.train()
    step_tokens = 4 * SEQ
    return {"tokens_per_s_median": statistics.median(step_tokens / t for t in times[2:]),
            "peak_allocated_gb": torch.cuda.max_memory_allocated() / 1024**3}


def main() -> None:
    import torch

    from qlora_studio.core.quiet import quiet_libraries

    from tiny import build_tokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="train,oom,reference")
    parser.add_argument("--work", default="/tmp/bench7b")
    parser.add_argument("--shape", default="llama-2-7b")
    args = parser.parse_args()
    quiet_libraries()
    work = Path(args.work)
    folder = shape_folder(args.shape, work)
    data = fixed_length_rows(work / "rows.jsonl", 64, SEQ, build_tokenizer())
    results = {"shape": args.shape, "seq_len": SEQ}
    for part in args.parts.split(","):
        started = time.time()
        parts = {"train": part_train, "liger": part_liger, "oom": part_oom, "reference": part_reference}
        results[part] = parts[part](
            folder, data, work)
        results[part]["part_s"] = round(time.time() - started, 1)
        print(f"{part}: {results[part]}", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    save(f"gpu-{args.shape}-{args.parts.replace(',', '-')}", results)
    print("\npart        tokens/s   peak GiB")
    for part in ("train", "liger", "reference"):
        if part in results:
            print(f"{part:10} {results[part]['tokens_per_s_median']:9.0f} {results[part]['peak_allocated_gb']:9.2f}")
    if "oom" in results:
        o = results["oom"]
        print(f"oom (24 GB): {o['status']}, micro-batch {o['micro_batch'][:1]} -> {o['micro_batch'][-1:]}, "
              f"effective batch {sorted(set(o['effective_batch']))}")


if __name__ == "__main__":
    main()
