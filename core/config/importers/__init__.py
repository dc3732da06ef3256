"""Configs of other tools (axolotl, LLaMA-Factory) turned into ours, with every key not carried over named.

    qlora-studio import-config FILE [--out my.yaml]        (and the window's "Import config…")

`import_config(path)` reads the file, tells which tool wrote it, maps its keys onto a plain dict in
our schema and validates that dict through `validate_config` like any config file. Where the source
tool's own default differs from ours (LLaMA-Factory's lora_alpha = 2 x lora_rank, axolotl's
micro_batch_size 1, ...) the default is written out, so the import trains what the source would
have trained. Every key of the source ends up either carried or in `dropped` with a reason; a token
(LLaMA-Factory's hf_hub_token) is never carried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from qlora_studio.core.config.files import read_yaml
from qlora_studio.core.config.importers import axolotl, llamafactory
from qlora_studio.core.config.importers.common import (
    EMPTY,
    ConfigImportError,
    Draft,
    Dropped,
    Tool,
    show,
)
from qlora_studio.core.config.schema import RunConfig, validate_config

__all__ = ["EMPTY", "ConfigImportError", "ImportedConfig", "Tool", "detect_tool", "import_config", "import_dict",
           "read_source"]

TOOL_NAMES = {"axolotl": "axolotl", "llamafactory": "LLaMA-Factory"}
_OUR_SECTIONS = {"model", "quantization", "lora", "data", "train", "distributed"}


@dataclass
class ImportedConfig:
    source: Path
    tool: Tool
    raw: dict[str, Any]  # the imported keys alone, in our schema
    config: RunConfig  # `raw` validated (our defaults for the rest)
    carried: list[str]  # "lora_r -> lora.r = 32"; "default: ..." lines are the source tool's defaults
    dropped: list[Dropped]
    replaced: list[str] = field(default_factory=list)  # asked for, cannot run here: ours instead, and why

    @property
    def not_carried(self) -> list[Dropped]:
        """The dropped keys that held a value (empty ones carry nothing either way)."""
        return [d for d in self.dropped if d[2] != EMPTY]

    def summary(self) -> str:
        replaced = f", {len(self.replaced)} replaced to run here" if self.replaced else ""
        return (f"{self.source.name}: {TOOL_NAMES[self.tool]} config; {len(self.carried)} settings carried"
                f"{replaced}, {len(self.not_carried)} not carried")

    def dropped_lines(self, limit: int = 60) -> list[str]:
        return [f"{key} = {short(value, limit)}: {why}" for key, value, why in self.not_carried]

    def to_yaml(self) -> str:
        """Our YAML (only the imported keys; our defaults fill the rest) under a header naming the
        source and every key not carried over."""
        header = [f"# Imported from {self.source.name} ({TOOL_NAMES[self.tool]}) by `qlora-studio import-config`."]
        if self.replaced:
            header.append("# Replaced, because it cannot run on the machine that imported it:")
            header += [f"#   {line}" for line in self.replaced]
        if self.not_carried:
            header.append("# Not carried over:")
            header += [f"#   {key}: {short(value)}  -- {why}" for key, value, why in self.not_carried]
        empty = [d[0] for d in self.dropped if d[2] == EMPTY]
        if empty:
            header.append(f"# Empty in the source, ignored: {', '.join(empty)}")
        return "\n".join(header) + "\n" + yaml.safe_dump(self.raw, sort_keys=False, allow_unicode=True)


def detect_tool(raw: dict[str, Any]) -> Tool:
    """Which tool wrote this config: "axolotl" or "llamafactory" (by the keys only one of them uses)."""
    if not isinstance(raw, dict):
        raise ConfigImportError("the top level is not a mapping of keys")
    keys = set(raw)
    ours = keys & _OUR_SECTIONS
    if ours and all(isinstance(raw[k], dict) for k in ours) and not keys & llamafactory.V1_MARKERS:
        raise ConfigImportError("this is already a QLoRA Studio config (sections model:, lora:, ...): open it as it is")
    if keys & llamafactory.V1_MARKERS and not keys & llamafactory.MARKERS:
        raise ConfigImportError(
            "this is a LLaMA-Factory v1 config (peft_config / quant_config / train_dataset), which is not "
            "supported yet; use the classic format of LLaMA-Factory's examples/train_qlora/*.yaml")
    counts = {"axolotl": len(keys & axolotl.MARKERS), "llamafactory": len(keys & llamafactory.MARKERS)}
    if counts["axolotl"] == counts["llamafactory"]:
        raise ConfigImportError(
            "cannot tell whether this is an axolotl or a LLaMA-Factory config "
            f"({'no' if not counts['axolotl'] else 'as many'} keys of either: axolotl has base_model, datasets, "
            "lora_r; LLaMA-Factory has model_name_or_path, dataset, lora_rank)")
    return "axolotl" if counts["axolotl"] > counts["llamafactory"] else "llamafactory"


def read_source(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigImportError(f"{path}: file not found")
    raw = read_yaml(path, ConfigImportError)
    if not isinstance(raw, dict):
        raise ConfigImportError(f"{path}: the top level is not a mapping of keys")
    return raw


def import_dict(raw: dict[str, Any], tool: Tool | None = None, source_dir: str | Path = ".",
                ) -> tuple[dict[str, Any], list[str], list[Dropped]]:
    """(our config as a plain dict, carried lines, dropped keys) from a parsed source mapping;
    LLaMA-Factory's dataset_dir is looked up next to `source_dir`."""
    return _draft(raw, tool, source_dir).result()


def _draft(raw: dict[str, Any], tool: Tool | None, source_dir: str | Path) -> Draft:
    tool = tool or detect_tool(raw)
    draft = Draft(tool, Path(source_dir))
    (axolotl.import_axolotl if tool == "axolotl" else llamafactory.import_llamafactory)(raw, draft)
    return draft


def import_config(path: str | Path, tool: Tool | None = None) -> ImportedConfig:
    """Import an axolotl or LLaMA-Factory file; the result is validated like a config file of ours."""
    path = Path(path)
    raw_source = read_source(path)
    tool = tool or detect_tool(raw_source)
    try:
        draft = _draft(raw_source, tool, path.resolve().parent)
    except ConfigImportError as exc:
        raise ConfigImportError(f"{path}: {exc}") from None
    raw, carried, dropped = draft.result()
    return ImportedConfig(path, tool, raw, validate_config(raw, f"{path} (imported)"), carried, dropped, draft.replaced)


def short(value: Any, limit: int = 80) -> str:
    text = show(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
