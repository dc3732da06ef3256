"""What a model is, read from config.json without loading weights; models already on disk."""

from __future__ import annotations

from dataclasses import dataclass

from qlora_studio.core.model.shape import load_model_config, model_shape


@dataclass
class ModelInfo:
    name: str
    architecture: str
    model_type: str
    params: int
    layers: int
    hidden: int
    vocab: int
    context_length: int | None

    @property
    def summary(self) -> str:
        ctx = f", {self.context_length:,} tokens of context" if self.context_length else ""
        return f"{self.architecture}: {self.params / 1e9:.2f}B parameters, {self.layers} layers{ctx}"


def model_info(name_or_path: str, trust_remote_code: bool = False) -> ModelInfo:
    """Architecture, parameter count and context length; raises ModelLoadError with a one-line reason."""
    config = load_model_config(name_or_path, trust_remote_code)
    shape = model_shape(config)
    architectures = getattr(config, "architectures", None) or [config.model_type]
    return ModelInfo(
        name=name_or_path,
        architecture=architectures[0],
        model_type=config.model_type,
        params=shape.total_params,
        layers=shape.num_layers,
        hidden=shape.hidden,
        vocab=shape.vocab,
        context_length=shape.max_position,
    )


def cached_hub_models() -> list[str]:
    """Hub model ids already in the local Hugging Face cache (for completion in pickers)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache folder yet, or an unreadable one: nothing to offer
        return []
    return sorted(repo.repo_id for repo in info.repos if repo.repo_type == "model")
