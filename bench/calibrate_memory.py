"""Calibration grid for the memory planner: predicted vs measured peak GPU memory.

Each model shape is loaded once (random weights, quantized through from_pretrained exactly as
real ones) per double-quant setting; every grid point then adds fresh LoRA adapters, trains a
few steps with the same TrainingArguments the runner uses, and records the peak. Run on a GPU
through the device tool:  python bench/calibrate_memory.py  (writes bench/results/estimator-<gpu>.json)
"""

from __future__ import annotations

import argparse
import gc
import time

from common import SHAPES, save, shape_folder

# (shape, double_quant, seq_len, micro_batch, lora_r, gradient_checkpointing)
GRID = [
    ("qwen2.5-0.5b", True, 512, 8, 16, True),
    ("qwen2.5-0.5b", True, 2048, 2, 64, False),
    ("llama-3.2-1b", True, 1024, 4, 8, True),
    ("llama-3.2-1b", False, 4096, 1, 16, True),
    ("llama-3.2-3b", True, 2048, 2, 32, True),
    ("llama-3.2-3b", True, 1024, 1, 16, False),
    ("llama-2-7b", True, 2048, 1, 16, True),
    ("llama-2-7b", True, 2048, 4, 16, True),
    ("llama-2-7b", False, 8192, 1, 16, True),
    ("llama-2-7b", True, 512, 8, 64, False),
    ("llama-3.1-8b", True, 2048, 2, 16, True),
    ("llama-3.1-8b", True, 8192, 1, 8, True),
    ("llama-3.1-8b", False, 4096, 1, 32, True),
    ("llama-3.1-8b", True, 1024, 2, 16, False),
]
# The same planner with Liger kernels (fused cross-entropy, RMSNorm, SwiGLU), measured when liger-kernel is installed.
LIGER_GRID = [
    ("llama-3.2-1b", True, 4096, 2, 16, True),
    ("llama-2-7b", True, 2048, 4, 16, True),
    ("llama-3.1-8b", True, 8192, 1, 8, True),
    ("llama-3.1-8b", True, 2048, 4, 16, True),
    ("llama-3.1-8b", True, 1024, 2, 16, False),
]
SMOKE_GRID = [("tiny", True, 64, 2, 8, True), ("tiny", False, 128, 1, 16, False)]


def run_config(shape: str, folder, double_quant: bool, seq: int, batch: int, r: int, ckpt: bool, steps: int,
               liger: bool = False):
    from qlora_studio.core.config import RunConfig

    return RunConfig.model_validate({
        "model": {"name_or_path": str(folder), "random_init": True},
        "quantization": {"double_quant": double_quant},
        "lora": {"r": r, "alpha": 2 * r},
        "data": {"max_length": seq},
        "train": {"micro_batch_size": batch, "grad_accum": 1, "max_steps": steps, "gradient_checkpointing": ckpt,
                  "save_every_steps": 10**6, "warmup_ratio": 0.0, "liger_kernels": "on" if liger else "off"},
    })


def main() -> None:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, Trainer

    from qlora_studio.core.data.pipeline import make_collator
    from qlora_studio.core.model.devices import device_used_bytes
    from qlora_studio.core.model.shape import model_shape
    from qlora_studio.core.planner.estimate import GIB, estimate
    from qlora_studio.core.model.loading import load_base_model, load_tokenizer
    from qlora_studio.core.model.lora import apply_lora
    from qlora_studio.core.model.sources import resolve_model_source
    from qlora_studio.core.quiet import quiet_libraries
    from qlora_studio.core.training.runner import training_arguments

    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny grid on any device (checks the script)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work", default="/tmp/calibration")
    parser.add_argument("--only", help="comma-separated shape names")
    parser.add_argument("--tag", default="estimator", help="result file name (before the GPU's name)")
    parser.add_argument("--liger", action="store_true", help="measure the Liger grid instead")
    args = parser.parse_args()
    quiet_libraries()
    from pathlib import Path

    work = Path(args.work)
    grid = SMOKE_GRID if args.smoke else (LIGER_GRID if args.liger else GRID)
    if args.only:
        grid = [g for g in grid if g[0] in args.only.split(",")]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    results, loads = [], []
    groups: dict[tuple[str, bool], list] = {}
    for point in grid:
        groups.setdefault((point[0], point[1]), []).append(point)
    for (shape, dq), points in groups.items():
        folder = shape_folder(shape, work)
        base_cfg = run_config(shape, folder, dq, 512, 1, 8, True, args.steps)
        if cuda:
            torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device) if cuda else 0
        started = time.time()
        source = resolve_model_source(base_cfg.model)
        tokenizer = load_tokenizer(source, base_cfg.model)
        model = load_base_model(base_cfg, source, device, dtype)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        loaded_bytes = (torch.cuda.memory_allocated(device) - before) if cuda else None
        from transformers import AutoConfig

        shp = model_shape(AutoConfig.from_pretrained(folder))
        predicted_weights = estimate(shp, double_quant=dq).weights_bytes
        loads.append({"shape": shape, "double_quant": dq, "allocated_after_load": loaded_bytes,
                      "predicted_weights": predicted_weights, "load_s": round(time.time() - started, 1)})
        measured = f"{loaded_bytes / GIB:.3f} GiB" if loaded_bytes is not None else "-"
        print(f"loaded {shape} dq={dq}: {measured} measured, {predicted_weights / GIB:.3f} GiB predicted", flush=True)
        for (_, _, seq, batch, r, ckpt) in points:
            cfg = run_config(shape, folder, dq, seq, batch, r, ckpt, args.steps, liger=args.liger)
            peft_model, _ = apply_lora(model, cfg.lora)
            vocab = min(shp.vocab, 32000)
            generator = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab, (batch * args.steps, seq), generator=generator).tolist()
            dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
            targs = training_arguments(cfg, device, dtype, str(work / "out"), has_eval=False)
            targs.save_strategy = "no"
            trainer = Trainer(model=peft_model, args=targs, train_dataset=dataset,
                              data_collator=make_collator(tokenizer, 8 if cuda else None))
            trainer.remove_callback(PrinterCallback)
            gc.collect()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            start_alloc = torch.cuda.memory_allocated(device) if cuda else None
            record = {"shape": shape, "double_quant": dq, "seq_len": seq, "micro_batch": batch, "lora_r": r,
                      "gradient_checkpointing": ckpt, "liger": args.liger, "steps": args.steps,
                      "allocated_before_train": start_alloc}
            t0 = time.time()
            try:
                trainer.train()
                if cuda:
                    torch.cuda.synchronize()
                record.update(
                    seconds=round(time.time() - t0, 2),
                    tokens_per_s=round(batch * seq * args.steps / (time.time() - t0), 1),
                    peak_allocated=torch.cuda.max_memory_allocated(device) if cuda else None,
                    peak_reserved=torch.cuda.max_memory_reserved(device) if cuda else None,
                    device_used=device_used_bytes(0) if cuda else None,
                )
            except torch.OutOfMemoryError:
                record["oom"] = True
            predicted = estimate(shp, double_quant=dq, seq_len=seq, micro_batch=batch, lora_r=r,
                                 gradient_checkpointing=ckpt, liger=args.liger, lean_lora=False)
            record["predicted_peak"] = predicted.peak_allocated_bytes
            results.append(record)
            if record.get("peak_allocated"):
                err = predicted.peak_allocated_bytes / record["peak_allocated"] - 1
                print(f"  {shape} dq={dq} seq={seq} b={batch} r={r} gc={ckpt}: measured "
                      f"{record['peak_allocated'] / GIB:.2f} GiB, predicted {predicted.peak_allocated_bytes / GIB:.2f} "
                      f"({err:+.1%}), {record['tokens_per_s']:.0f} tok/s", flush=True)
            del trainer, dataset
            model = peft_model.unload()
            if hasattr(model, "gradient_checkpointing_disable"):
                model.gradient_checkpointing_disable()
            del peft_model
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    payload = {"loads": loads, "grid": results, "shapes": {k: v for k, v in SHAPES.items() if k != "tiny"}}
    save(f"{args.tag}-smoke" if args.smoke else args.tag, payload, work if args.smoke else None)
    print("\nshape           dq   seq  b   r  gc   measured  predicted   error")
    for rec in results:
        if rec.get("peak_allocated"):
            print(f"{rec['shape']:15} {int(rec['double_quant'])} {rec['seq_len']:5} {rec['micro_batch']:2} {rec['lora_r']:3} "
                  f"{int(rec['gradient_checkpointing'])} {rec['peak_allocated'] / GIB:9.2f} {rec['predicted_peak'] / GIB:9.2f}"
                  f" {rec['predicted_peak'] / rec['peak_allocated'] - 1:+7.1%}")


if __name__ == "__main__":
    main()
