"""What may run on this computer when a model loads, and only after the user said yes.

- Pickled weights (`pytorch_model.bin`, `*.pt`, `*.pth`) can execute code hidden in them, so
  weights load from safetensors; a folder (or adapter) with only pickles loads after an explicit
  yes: `--allow-pickle` on the command line, a question in the window. The yes lasts for this
  process (and the worker processes it starts) and is never written into a config file.
- A model's own Python code (config.json `auto_map`) runs only with `model.trust_remote_code` on,
  which the window turns off again whenever the model changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from qlora_studio.core.config.schema import ModelSettings
from qlora_studio.core.errors import ModelLoadError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
CONSENT_VARIABLE = "QLORA_STUDIO_ALLOW_PICKLE"  # os.pathsep-separated models, or * for any (--allow-pickle)
ANY = "*"


def allow_pickle(origin: str = ANY) -> None:
    """The user said yes to pickled weights of `origin` (a model folder or Hub id), or of any model."""
    allowed = set(filter(None, os.environ.get(CONSENT_VARIABLE, "").split(os.pathsep)))
    allowed.add(_key(origin))
    os.environ[CONSENT_VARIABLE] = os.pathsep.join(sorted(allowed))


def pickle_allowed(origin: str) -> bool:
    allowed = set(filter(None, os.environ.get(CONSENT_VARIABLE, "").split(os.pathsep)))
    return ANY in allowed or _key(origin) in allowed


def pickled_only(folder: str | Path) -> list[str]:
    """The pickle files of a folder that holds no safetensors weights (empty when it has safetensors)."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file()
                  and not p.name.startswith(("training_args", "optimizer", "scheduler", "rng_state")))


def check_weights(folder: str | Path, origin: str, what: str = "model.name_or_path") -> bool:
    """Raise unless the weights in `folder` are safetensors or the user allowed pickles; True when
    loading may fall back to pickles (from_pretrained's `use_safetensors` is then left open)."""
    pickles = pickled_only(folder)
    allowed = pickle_allowed(origin)
    if pickles and not allowed:
        raise ModelLoadError(
            f"{what}: {origin} has only pickled weights ({', '.join(pickles[:3])}), which can run code when loaded; "
            "convert them to safetensors, or allow it with --allow-pickle (the window asks)"
        )
    return allowed


def remote_code_origin(source_path: str, origin: str) -> str | None:
    """`origin` when its config.json asks for its own Python code that transformers does not have."""
    config = _config_json(source_path)
    if not config or "auto_map" not in config:
        return None
    from transformers import CONFIG_MAPPING

    return None if config.get("model_type") in CONFIG_MAPPING else origin


def check_remote_code(source_path: str, settings: ModelSettings, note: Callable[[str], None] | None) -> None:
    repo = remote_code_origin(source_path, settings.name_or_path)
    if repo is None:
        return
    if not settings.trust_remote_code:
        raise ModelLoadError(
            f"model.name_or_path: {repo} ships its own Python code (auto_map in config.json), which runs only with "
            f"model.trust_remote_code: true; turn it on only if you trust the code in {repo}"
        )
    if note is not None:
        note(f"model.trust_remote_code is on: Python code from {repo} runs on this computer")


def _config_json(source_path: str) -> dict | None:
    folder = Path(source_path)
    if folder.is_dir():
        path = folder / "config.json"
    else:  # a Hub id: the copy in the local cache (the source resolver fetched it)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source_path, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):
        return None


def _key(origin: str) -> str:
    if origin == ANY:
        return ANY
    path = Path(origin).expanduser()
    return str(path.resolve()) if path.exists() else origin
