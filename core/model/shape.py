"""The shape of an architecture, read from config.json alone: the model is built on the meta device
(no weights, any architecture transformers knows) and its layers are listed. The memory planner
and the model picker both read it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qlora_studio.core.config.schema import ModelSettings
from qlora_studio.core.errors import ModelLoadError
from qlora_studio.core.model.consent import check_remote_code


@dataclass
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass
class ModelShape:
    """What the estimator needs to know about an architecture."""

    model_type: str
    num_layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    norms_per_layer: int
    linears: list[Linear]  # every linear layer but the output head
    lm_head: Linear | None  # None when tied to the embeddings
    embedding_params: int
    other_params: int  # norms and anything else that is not a linear or embedding weight
    max_position: int | None = None

    @property
    def layer_linears(self) -> list[Linear]:
        """The linears of one decoder layer (layer 0)."""
        marker = ".0."
        return [lin for lin in self.linears if marker in f".{lin.name}." and _layer_index(lin.name) == 0]

    @property
    def total_params(self) -> int:
        params = sum(lin.in_features * lin.out_features + (lin.out_features if lin.bias else 0) for lin in self.linears)
        if self.lm_head is not None:
            params += self.lm_head.in_features * self.lm_head.out_features
        return params + self.embedding_params + self.other_params


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a in ("layers", "h", "blocks", "layer") and b.isdigit():
            return int(b)
    return None


def load_model_config(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    """config.json of a local folder (weights not needed), a .gguf file, or a Hub id. A popular
    Hub model that cannot be had yet (offline, not downloaded, gated) gets its shape from the
    built-in table; `builtin_shape_note(config)` says so."""
    from transformers import AutoConfig

    path = Path(name_or_path).expanduser()
    try:
        if path.is_file() and path.suffix.lower() == ".gguf":
            stat = path.stat()
            return _gguf_config(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if path.is_dir():
            check_remote_code(str(path), ModelSettings(name_or_path=name_or_path, trust_remote_code=trust_remote_code), None)
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        from qlora_studio.core.model.sources import resolve_model_source

        settings = ModelSettings(name_or_path=name_or_path, revision=revision, trust_remote_code=trust_remote_code)
        try:
            source = resolve_model_source(settings)
        except ModelLoadError as exc:
            config = builtin_config(name_or_path)
            if config is None:
                raise
            setattr(config, UNAVAILABLE, str(exc).removeprefix("model.name_or_path: "))
            return config
        check_remote_code(source.path, settings, None)
        return AutoConfig.from_pretrained(source.path, revision=revision if source.kind == "hub" else None,
                                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name_or_path: cannot read the config of {name_or_path}: {str(exc).splitlines()[0]}") from None


UNAVAILABLE = "qlora_studio_unavailable"  # set on a built-in config: why the model's own could not be read


@lru_cache(maxsize=1)
def _builtin_table() -> dict[str, dict]:
    from qlora_studio.resources import MODEL_SHAPES

    families = json.loads(MODEL_SHAPES.read_text(encoding="utf-8"))["families"]
    return {model_id.lower(): family["config"] for family in families for model_id in family["ids"]}


def builtin_config(name: str):
    """The built-in shape of a popular Hub model (resources/model_shapes.json), or None."""
    from transformers import AutoConfig

    fields = _builtin_table().get(name.strip().lower())
    if fields is None:
        return None
    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def builtin_shape_note(config) -> str | None:
    """What to say about a config that came from the built-in table instead of the model."""
    reason = getattr(config, UNAVAILABLE, None)
    return f"shape from the built-in table ({reason})" if reason else None


@lru_cache(maxsize=16)
def _gguf_config(path: str, size: int, mtime_ns: int):
    """A .gguf file's config, read once per file version: transformers parses every metadata array of
    the file (the whole vocabulary) to get it, seconds each time."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(Path(path).parent, gguf_file=Path(path).name)


@lru_cache(maxsize=16)
def _shape_from_json(config_json: str, trust_remote_code: bool) -> ModelShape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(config_json)
    model_type = data.pop("model_type")
    config = AutoConfig.for_model(model_type, **data)
    # torch's meta-device context is thread-local (accelerate's init_empty_weights patches
    # nn.Module for the whole process, breaking a model load running on another thread).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    output = model.get_output_embeddings()
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    # Meta-device models are not tied by from_config, so the config decides.
    tied = output is not None and (output.weight is model.get_input_embeddings().weight
                                   or bool(getattr(text_config, "tie_word_embeddings", False)))
    linears, lm_head = [], None
    embedding_params = other_params = 0
    counted: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if module is output:
                if not tied:
                    lm_head = Linear(name, module.in_features, module.out_features, module.bias is not None)
                counted.add(id(module.weight))
                continue
            linears.append(Linear(name, module.in_features, module.out_features, module.bias is not None))
            counted.add(id(module.weight))
            if module.bias is not None:
                counted.add(id(module.bias))
        elif isinstance(module, torch.nn.Embedding):
            embedding_params += module.weight.numel()
            counted.add(id(module.weight))
    for param in model.parameters():
        if id(param) not in counted:
            other_params += param.numel()
            counted.add(id(param))
    text = text_config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    layers = text.num_hidden_layers
    norms = sum(1 for n, m in model.named_modules() if _layer_index(n) == 0 and "norm" in type(m).__name__.lower())
    return ModelShape(
        model_type=model_type,
        num_layers=layers,
        hidden=hidden,
        intermediate=getattr(text, "intermediate_size", 4 * hidden) or 4 * hidden,
        vocab=text.vocab_size,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        norms_per_layer=max(norms, 2),
        linears=linears,
        lm_head=lm_head,
        embedding_params=embedding_params,
        other_params=other_params,
        max_position=getattr(text, "max_position_embeddings", None),
    )


def model_shape(config) -> ModelShape:
    """Shape of a transformers config (instantiated on the meta device, cached)."""
    data = config.to_dict()
    data.pop(UNAVAILABLE, None)
    data.pop("quantization_config", None)
    data.pop("transformers_version", None)
    return _shape_from_json(json.dumps(data, sort_keys=True, default=str), False)
