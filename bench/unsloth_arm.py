"""The unsloth arm of bench/side_by_side.py: Unsloth with its own defaults on the same rows.

Started by `side_by_side.py --workload a|b --arm unsloth` (which writes the rows and a checkpoint of
the random weights first) in a child whose PYTHONPATH is Unsloth's own (UNSLOTH_PYTHONPATH, see
bench/unsloth_setup.sh): Unsloth pins older transformers, trl and datasets than the project, so it
never shares the project's environment. Imports nothing from qlora_studio.

What it trains, as Unsloth's docs and notebooks set it up:
  FastLanguageModel.from_pretrained(folder, max_seq_length, load_in_4bit=True)  nf4 + double quant, bf16
  FastLanguageModel.get_peft_model(r=16, lora_alpha=32, lora_dropout=0, all seven linear projections,
                                   use_gradient_checkpointing="unsloth")  (dropout 0: Unsloth's fast
                                   LoRA kernels; any other value makes it fall back to peft's layers)
  trl's SFTTrainer / SFTConfig (as patched by Unsloth): padding_free left unset, so Unsloth decides
  (auto padding-free on text-only SFT), packing off (its default), micro-batch 4, grad_accum 1, the
  rows in file order, learning rate 1e-4, fused AdamW (the optimizer of the other arms), logging
  every step (as the other arms).
Measured as the other arms: the epoch clock and step clock of bench/common.py, peaks from after
loading. Writes the part file (with this environment's versions) and prints RESULT {json}.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import sys
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", required=True, help="model folder with config, tokenizer and model.safetensors")
    parser.add_argument("--rows", required=True, help="jsonl file of {'text': ...} rows")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--real-tokens", type=int, required=True, help="real tokens of the rows (one epoch)")
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--arm", default="unsloth")
    parser.add_argument("--out", required=True, help="folder for the part file")
    parser.add_argument("--work", default="/tmp/side-by-side/unsloth")
    args = parser.parse_args()
    started = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no machine beside it can be reached anyway
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(work / "unsloth_compiled_cache"))

    # Unsloth first, as it asks: it patches transformers, peft and trl on import
    import unsloth  # noqa: F401, I001
    from unsloth import FastLanguageModel

    import torch
    from datasets import load_dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from common import epoch_figures, save
    from side_by_side import train_measured

    cuda = torch.cuda.is_available()
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=args.folder, max_seq_length=args.max_length,
                                                         dtype=None, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=args.lora_dropout,
                                             target_modules=TARGETS, bias="none",
                                             use_gradient_checkpointing="unsloth", random_state=3407)
    loaded_s = round(time.time() - started, 1)
    dataset = load_dataset("json", data_files=args.rows, split="train")
    config = SFTConfig(output_dir=str(work / "out"), dataset_text_field="text", max_length=args.max_length,
                       per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                       num_train_epochs=args.epochs, learning_rate=1e-4, warmup_steps=0, optim="adamw_torch_fused",
                       bf16=cuda, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                       train_sampling_strategy="sequential", include_num_input_tokens_seen="non_padding",
                       seed=3407)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=config)
    trainer.remove_callback(PrinterCallback)
    batching = (f"padding_free={getattr(trainer.args, 'padding_free', None)}, packing={getattr(trainer.args, 'packing', None)}, "
                f"{args.batch} rows per micro-batch")
    print(f"unsloth arm: {batching}; attention: {attention_backend()}", flush=True)
    measured = train_measured(trainer)
    epochs_seen = measured.pop("epochs")
    record = {**measured,
              **epoch_figures(epochs_seen, args.real_tokens), "rows": len(dataset), "batching": batching,
              "attention": attention_backend(), "lora_dropout": args.lora_dropout, "load_s": loaded_s,
              "unsloth_versions": versions(), "workload": args.workload, "arm": args.arm,
              "context": args.max_length, "card_gb": None, "wall_s": round(time.time() - started, 1),
              "allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
              "gpu": torch.cuda.get_device_name(0) if cuda else "CPU"}
    save(f"side-by-side-{args.workload}-{args.arm.replace(':', '-')}", record, Path(args.out))
    print("RESULT " + json.dumps(record), flush=True)


def attention_backend() -> str:
    """What Unsloth's dispatcher has to choose from here (flash-attn, xformers, else torch's SDPA)."""
    try:
        from unsloth.utils import attention_dispatch as d

        return (f"flash_attn={getattr(d, 'HAS_FLASH_ATTENTION', None)}, xformers={getattr(d, 'HAS_XFORMERS', None)}, "
                f"SDPA fallback")
    except Exception as error:  # noqa: BLE001 - a label only
        return f"unknown ({type(error).__name__})"


def versions() -> dict:
    found = {}
    for name in ("unsloth", "unsloth_zoo", "trl", "transformers", "peft", "datasets", "bitsandbytes", "xformers",
                 "torch", "triton", "torchao"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
