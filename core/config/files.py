"""The run config as files and text: YAML loading, relative paths, documentation for people and widgets."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from qlora_studio.core.config.schema import SAMPLE_PREFIX, RunConfig, apply_overrides, validate_config
from qlora_studio.core.errors import ConfigError

def read_yaml(path: Path, error: type[ConfigError] = ConfigError) -> Any:
    """A YAML file's contents; `error` with the file (and line) and a one-line reason when it cannot be read."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise error(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or 'syntax error'})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (expected YAML)") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # a scalar PyYAML cannot build (2021-13-45), or nesting too deep
        raise error(f"{path}: not valid YAML ({_first_line(exc)})") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply `section.key=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, ...)")
    if overrides:
        apply_overrides(raw, overrides)
    return validate_config(raw, str(path))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ---- paths ----------------------------------------------------------------------------------

def default_runs_dir() -> Path:
    """Where runs go unless a config says otherwise: the user data folder, the same for the CLI
    and the window (neither depends on the folder it was started from)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("qlora-studio", appauthor=False)) / "runs"


def runs_dir(config: RunConfig) -> Path:
    return Path(config.output_dir).expanduser() if config.output_dir else default_runs_dir()


def absolute_paths(config: RunConfig, base: str | Path | None = None) -> RunConfig:
    """Relative paths made absolute against `base` (default: the working folder), so a saved
    config works from anywhere. Data and model paths change only where they exist under `base`
    (a Hub id such as org/name looks relative too); the output folder always does."""
    base = Path(base) if base is not None else Path.cwd()

    def anchored(value: str) -> str | None:
        path = Path(value).expanduser()
        candidate = path if path.is_absolute() else base / path
        return str(candidate.resolve()) if candidate.exists() else None

    updates: dict[str, Any] = {}
    data_updates = {}
    for key in ("path", "validation_path"):
        value = getattr(config.data, key)
        if value and not value.startswith(SAMPLE_PREFIX) and anchored(value):
            data_updates[key] = anchored(value)
    if data_updates:
        updates["data"] = config.data.model_copy(update=data_updates)
    if anchored(config.model.name_or_path):
        updates["model"] = config.model.model_copy(update={"name_or_path": anchored(config.model.name_or_path)})
    rewards = [_anchored_reward(r, anchored) for r in config.train.grpo.rewards]
    if rewards != config.train.grpo.rewards:  # a python reward's file, as `path.py:function`
        grpo = config.train.grpo.model_copy(update={"rewards": rewards})
        updates["train"] = config.train.model_copy(update={"grpo": grpo})
    output = runs_dir(config)
    updates["output_dir"] = str((output if output.is_absolute() else base / output).resolve())
    return config.model_copy(update=updates)


def _anchored_reward(reward, anchored):
    if reward.preset != "python" or not reward.function or ":" not in reward.function:
        return reward
    file, _, name = reward.function.rpartition(":")
    found = anchored(file)
    return reward.model_copy(update={"function": f"{found}:{name}"}) if found else reward


# ---- documentation ----------------------------------------------------------------------------

def field_help(dotted: str) -> str:
    """The docstring of a config key, e.g. field_help('quantization.double_quant')."""
    return _field(dotted).description or ""


def commented_yaml(config: RunConfig | None = None) -> str:
    """The config as YAML with every key's documentation as a comment above it."""
    config = config or RunConfig()
    lines: list[str] = []

    def write(dotted: str, key: str, value: Any, depth: int) -> None:
        pad = "  " * depth
        doc = field_help(dotted)
        if doc and depth:
            lines.append(f"{pad}# {doc}")
        elif doc:
            lines.append(f"# {doc}")
        if isinstance(value, dict) and _is_section(dotted):  # a section of its own, e.g. train.experimental
            lines.append(f"{pad}{key}:")
            for child, item in value.items():
                write(f"{dotted}.{child}", child, item, depth + 1)
        else:
            lines.append(f"{pad}{key}: {_inline_yaml(value)}")

    for section, value in config.model_dump(mode="json").items():
        write(section, section, value, 0)
    return "\n".join(lines) + "\n"


def _is_section(dotted: str) -> bool:
    annotation = _field(dotted).annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _inline_yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000, allow_unicode=True).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _field(dotted: str):
    model: type[BaseModel] = RunConfig
    parts = dotted.split(".")
    for part in parts[:-1]:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return model.model_fields[parts[-1]]


def choices(dotted: str) -> tuple[Any, ...]:
    """The values a key's `Literal` annotation allows, e.g. choices('train.optimizer'): widgets list
    exactly what the schema accepts. Empty for keys that are not a closed set."""
    annotation = _field(dotted).annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return typing.get_args(candidate)
    return ()
