"""Merge a run's LoRA adapter into its base and save a plain transformers folder (safetensors,
tokenizer with the chat template training used, generation_config that stops where the tuned
model was taught to), loadable with `AutoModelForCausalLM.from_pretrained(OUT)`.

The recipe: the base is loaded exactly as training loaded it (core/model/loading.py: the same
4-bit settings, the same dtype cast before quantizing, so the same NF4 codes), each 4-bit layer is
turned back into an ordinary Linear holding its dequantized weight (transformers' `dequantize()`:
the very matrix the 4-bit matmul used), then peft merges the adapter. The merged model computes
what (4-bit base + adapter) computed in training: measured next-token logits 0.15% (tiny Llama)
and 0.08% (SmolLM2-135M) from it in fp16. The alternatives lose: merging into the original 16-bit
weights adds back the whole NF4 error the adapter was trained around (46-52% logits error), and
merging into the still-4-bit model re-quantizes W + BA and rounds most of the adapter away (6%,
closer to the base without adapter than with it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from qlora_studio.core.after.adapters import AdapterRef
from qlora_studio.core.after.export import ExportCancelled, ExportError, load_tokenizer, staged_output_dir
from qlora_studio.core.after.jobs import CancelFn, Job, ProgressFn
from qlora_studio.core.model.sources import first_line

MERGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# End-of-turn tokens of the chat formats we know; generation must stop on them.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def merge_to_folder(ref: AdapterRef, out_dir: str | Path, dtype: torch.dtype = torch.float16,
                    progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Path:
    """The adapter `ref` merged into its base, saved as a `dtype` transformers folder at `out_dir`.

    Memory: the dequantized model in the training compute dtype (fp32 on a CPU: 4 bytes per
    parameter); on a GPU the work happens there. Cancel is checked between the stages (load,
    attach, merge, save); a stage itself runs to its end.
    """
    from peft import PeftModel

    from qlora_studio.core.model.devices import resolve_device
    from qlora_studio.core.model.loading import load_base_model, stop_token_ids
    from qlora_studio.core.model.sources import resolve_model_source

    job = Job(progress, cancel, cancelled=ExportCancelled)
    if dtype not in MERGE_DTYPES.values():
        raise ExportError(f"merged dtype must be float16, bfloat16 or float32, not {dtype}")
    config = ref.config
    with staged_output_dir(Path(out_dir)) as staging:
        job.report(0.0, "loading the base model as training did")
        device = resolve_device(config.train.device)
        source = resolve_model_source(config.model)
        model = load_base_model(config, source, device, ref.compute_dtype(device))
        if config.quantization.mode != "none":
            model = model.dequantize()
        job.check()
        job.report(0.35, "attaching the adapter")
        try:
            model = PeftModel.from_pretrained(model, str(ref.adapter_dir))
        except (ValueError, KeyError, RuntimeError) as exc:  # shape mismatch = an adapter of another base model
            raise ExportError(f"{ref.adapter_dir}: the adapter does not fit {source.origin}: {first_line(exc)}") from None
        job.check()
        job.report(0.45, "merging")
        # safe_merge checks every merged weight for NaN/inf before replacing it.
        model = model.merge_and_unload(safe_merge=True).to(device="cpu", dtype=dtype)
        _clean_config(model, dtype)
        job.check()
        job.report(0.55, "saving the weights")
        model.save_pretrained(staging, safe_serialization=True, max_shard_size="5GB")
        job.check()
        job.report(0.9, "saving the tokenizer and generation config")
        tokenizer = load_tokenizer(ref.adapter_dir if _has_tokenizer(ref.adapter_dir) else Path(source.path))
        tokenizer.save_pretrained(staging)
        _save_generation_config(source.path, model, tokenizer, stop_token_ids(tokenizer, source.path), staging)
        job.check()
    out = Path(out_dir).expanduser().resolve()
    job.report(1.0, f"merged model saved to {out}")
    return out


def _clean_config(model, dtype: torch.dtype) -> None:
    """The saved config describes a plain model: no quantization_config, the KV cache back on."""
    model.hf_quantizer = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.config.dtype = dtype
    model.config.use_cache = True  # training switched it off


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()


def _save_generation_config(base: str, model, tokenizer, stops: list[int], out: Path) -> None:
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(base)
    except (OSError, ValueError):
        gen = GenerationConfig.from_model_config(model.config)
    eos = list(stops)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        for marker in END_OF_TURN_MARKERS:
            if marker in template and marker in tokenizer.get_vocab():
                eos.append(tokenizer.convert_tokens_to_ids(marker))
    eos = list(dict.fromkeys(i for i in eos if i is not None))
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(str(out))
