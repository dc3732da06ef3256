"""Loading a model for training: the quantized, frozen base with LoRA adapters, its tokenizer, and
the token ids generation stops on. Random weights of a model's shape rehearse memory and speed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from qlora_studio.core.config.schema import ModelSettings, RunConfig
from qlora_studio.core.errors import ModelLoadError
from qlora_studio.core.model.consent import check_remote_code, check_weights, pickle_allowed
from qlora_studio.core.model.devices import resolve_compute_dtype, resolve_device
from qlora_studio.core.model.lora import apply_lora
from qlora_studio.core.model.quantization import QuantizationReport, build_bnb_config, quantization_report
from qlora_studio.core.model.sources import ModelSource, Progress, first_line, resolve_model_source


@dataclass
class LoadedModel:
    model: Any  # a PeftModel once LoRA is applied
    tokenizer: Any
    source: ModelSource
    device: torch.device
    compute_dtype: torch.dtype
    quantization: QuantizationReport | None = None
    target_modules: list[str] = field(default_factory=list)


def load_tokenizer(source: ModelSource, settings: ModelSettings):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, revision=settings.revision, trust_remote_code=settings.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name_or_path: cannot load the tokenizer of {source.origin}: {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        # Padding is masked out of attention and loss, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_base_model(config: RunConfig, source: ModelSource, device: torch.device, compute_dtype: torch.dtype,
                    quant_storage: torch.dtype | None = None, device_map: Any = "auto"):
    """The (quantized) base model, frozen, ready for adapters."""
    from transformers import AutoModelForCausalLM

    bnb_config = build_bnb_config(config.quantization, compute_dtype, quant_storage)
    if device_map == "auto":
        device_map = {"": device}
    kwargs: dict[str, Any] = dict(
        dtype=compute_dtype,
        revision=config.model.revision,
        trust_remote_code=config.model.trust_remote_code,
        device_map=device_map,
    )
    if bnb_config is not None:
        kwargs["quantization_config"] = bnb_config
    if config.model.attn_implementation not in ("auto", "varlen"):  # varlen is switched on by the run's speed plan
        kwargs["attn_implementation"] = config.model.attn_implementation
    try:
        if config.model.random_init:
            from transformers import AutoConfig

            model_config = AutoConfig.from_pretrained(source.path, trust_remote_code=config.model.trust_remote_code)
            # Through from_pretrained, so the weights are quantized exactly as real ones would be.
            # The unquantized state starts on the CPU, like a checkpoint's: built on the GPU, an 8B
            # model's 16 GB of bf16 weights would not fit the 12-16 GB card being rehearsed.
            state = random_state_dict(model_config, torch.device("cpu"), compute_dtype)
            model = _causal_lm_class(model_config).from_pretrained(None, config=model_config, state_dict=state, **kwargs)
            del state
        else:
            local = Path(source.path).is_dir()
            may_pickle = check_weights(source.path, source.origin) if local else pickle_allowed(source.origin)
            if not may_pickle:
                kwargs["use_safetensors"] = True  # never fall back to pickled .bin weights without a yes
            model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        hint = " (without --allow-pickle only safetensors weights load)" if kwargs.get("use_safetensors") else ""
        raise ModelLoadError(f"model.name_or_path: cannot load {source.origin}: {first_line(exc)}{hint}") from None
    prepare_for_adapter_training(model)
    return model


def _causal_lm_class(model_config):
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(model_config)]
    except KeyError:
        raise ModelLoadError(f"model.random_init: {type(model_config).__name__} is not a causal LM transformers knows") from None


def random_state_dict(model_config, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random-looking weights for every tensor of the architecture (norms 1, biases 0).

    The values only have to be well-scaled: they carry no meaning. A pool of N(0, 0.02) draws is
    repeated, so even a 70B model fills at memory-copy speed. Every process builds its own copy
    (from_pretrained cannot take meta tensors in a state dict), so an FSDP rehearsal needs CPU RAM
    for one copy per process.
    """
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    # torch's meta-device context is thread-local (accelerate's init_empty_weights patches
    # nn.Module for the whole process, breaking a model load running on another thread).
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config)
    skip = set()
    if getattr(text_config, "tie_word_embeddings", False):
        # Like a real checkpoint of a tied model: no separate lm_head tensor, so loading ties it.
        output = skeleton.get_output_embeddings()
        skip = {f"{n}.weight" for n, m in skeleton.named_modules() if m is output}
    generator = torch.Generator(device="cpu").manual_seed(0)
    pool = torch.empty(1 << 20, dtype=torch.float32).normal_(0, 0.02, generator=generator).to(device=device, dtype=dtype)
    state = {}
    for name, tensor in skeleton.state_dict().items():
        if name in skip:
            continue
        if tensor.dim() == 1:
            value = torch.ones if "norm" in name else torch.zeros
            state[name] = value(tensor.shape, dtype=dtype, device=device)
            continue
        out = torch.empty(tensor.shape, dtype=dtype, device=device)
        if device.type != "meta":
            flat, size = out.view(-1), pool.numel()
            whole = flat.numel() // size
            if whole:
                flat[: whole * size].view(whole, size).copy_(pool.expand(whole, size))
            flat[whole * size:].copy_(pool[: flat.numel() - whole * size])
        state[name] = out
    return state


def prepare_for_adapter_training(model: torch.nn.Module) -> None:
    """Freeze the base and switch off the KV cache.

    Written here rather than calling peft's `prepare_model_for_kbit_training`, which up-casts
    every unquantized weight (embeddings, lm_head, norms) to fp32: for Llama-3-8B that is 2 GiB
    more for frozen weights, and fp32 norm outputs make every following activation fp32 as well.
    The frozen weights stay in the compute dtype; losses are still computed in fp32.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    # On AVX512-BF16 CPUs bitsandbytes repacks a 4-bit weight for fast inference the first time
    # it runs in eval mode (an evaluation pass), and the repacked matmul has no backward: later
    # training steps would pass no gradient through the frozen weights. Keep the trainable layout.
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_for_training(config: RunConfig, *, note: Callable[[str], None] | None = None,
                      device_map: Any = "auto", quant_storage: torch.dtype | None = None,
                      progress: Progress | None = None) -> LoadedModel:
    """The quantized base model with LoRA adapters; `progress(stage, message)` hears each stage."""
    say = progress or (lambda stage, message: None)
    device = resolve_device(config.train.device)
    compute_dtype = resolve_compute_dtype(config.quantization.compute_dtype, device)
    if device.type == "cpu" and compute_dtype != torch.float32 and config.quantization.mode == "8bit":
        raise ModelLoadError("quantization.compute_dtype: 8-bit on CPU needs float32 (or auto)")
    say("model", f"finding {config.model.name_or_path}")
    source = resolve_model_source(config.model, progress=say)
    if source.note and note:
        note(source.note)
    check_remote_code(source.path, config.model, note)
    if config.model.random_init and note:
        note("model.random_init is on: the weights are random, so only memory and speed mean anything")
    tokenizer = load_tokenizer(source, config.model)
    say("model", f"loading the weights{_QUANTIZING[config.quantization.mode]} on {device.type.upper()}")
    model = load_base_model(config, source, device, compute_dtype, quant_storage=quant_storage, device_map=device_map)
    report = quantization_report(model, config.quantization, compute_dtype)
    say("adapters", f"adding LoRA adapters (rank {config.lora.r})")
    peft_model, targets = apply_lora(model, config.lora)
    return LoadedModel(peft_model, tokenizer, source, device, compute_dtype, report, targets)


_QUANTIZING = {"4bit": " and quantizing them to 4-bit", "8bit": " and quantizing them to 8-bit",
               "none": " (not quantized)"}


def stop_token_ids(tokenizer, source_path: str | None) -> list[int]:
    """The token ids generation stops on: EOS plus the model's generation_config eos ids."""
    ids = [tokenizer.eos_token_id]
    if source_path:
        try:
            from transformers import GenerationConfig

            extra = GenerationConfig.from_pretrained(source_path).eos_token_id
            ids += extra if isinstance(extra, list) else [extra]
        except (OSError, ValueError):
            pass
    return [i for i in ids if i is not None]
