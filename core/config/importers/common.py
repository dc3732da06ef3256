"""What both importers share: the draft config being built, the source keys still to account for,
and value conversions onto our schema's choices (read from the schema's own tables)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from qlora_studio.core.config.files import choices
from qlora_studio.core.errors import ConfigError

Tool = Literal["axolotl", "llamafactory"]
Dropped = tuple[str, Any, str]  # (source key, its value, why it was not carried)

SECTION_ORDER = ("model", "quantization", "lora", "data", "train")
EMPTY = "empty in the source file (null): nothing to carry"


class ConfigImportError(ConfigError):
    """The file cannot be imported at all (not YAML, not a known tool, a training kind we lack)."""


# ---- the result being built ---------------------------------------------------------------------

@dataclass
class Draft:
    tool: Tool
    source_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    carried: list[str] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # what the file asked for that cannot run here, and ours instead

    def put(self, dotted: str, value: Any) -> None:
        node = self.config
        *sections, key = dotted.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value

    def has(self, dotted: str) -> bool:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def carry(self, source: str, dotted: str, value: Any, note: str = "") -> None:
        self.put(dotted, value)
        self.carried.append(f"{source} -> {dotted} = {show(value)}" + (f" ({note})" if note else ""))

    def replace(self, source: str, asked: Any, dotted: str, value: Any, why: str) -> None:
        """Carry our `value` in place of what the file asked for (`asked`), which cannot run here."""
        self.carry(source, dotted, value, f"instead of {show(asked)}")
        self.replaced.append(f"{source}: {show(asked)} -> {dotted} = {show(value)}: {why}")

    def default(self, dotted: str, value: Any, why: str) -> None:
        """Write the source tool's default where the file does not set the key and ours differs."""
        if not self.has(dotted):
            self.put(dotted, value)
            self.carried.append(f"default: {dotted} = {show(value)} ({why})")

    def drop(self, key: str, value: Any, why: str) -> None:
        self.dropped.append((key, value, why))

    def result(self) -> tuple[dict[str, Any], list[str], list[Dropped]]:
        ordered = {s: self.config[s] for s in SECTION_ORDER if s in self.config}
        ordered.update({k: v for k, v in self.config.items() if k not in ordered})
        return ordered, self.carried, self.dropped


def show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


class Keys:
    """The source mapping; handlers take keys out, whatever is left is dropped at the end."""

    def __init__(self, raw: dict[str, Any], imp: Draft, prefix: str = ""):
        self.left = dict(raw)
        self.imp = imp
        self.prefix = prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def take(self, key: str) -> Any:
        """The value (None when absent); an explicit null is recorded as dropped-empty."""
        if key not in self.left:
            return None
        value = self.left.pop(key)
        if is_empty(value):
            self.imp.drop(self.name(key), value, EMPTY)
            return None
        return value

    def drop_rest(self, reasons: dict[str, str], fallback: str) -> None:
        for key, value in self.left.items():
            if is_empty(value):
                self.imp.drop(self.name(key), value, EMPTY)
            else:
                self.imp.drop(self.name(key), value, reasons.get(key, fallback))
        self.left.clear()


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# ---- shared value conversions -------------------------------------------------------------------

def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 2e-4 (no dot) as a string
        except ValueError:
            return None
    return None


def as_int(value: Any) -> int | None:
    number = as_number(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def carry_number(imp: Draft, keys: Keys, key: str, dotted: str, *, integer: bool = False,
                 check: Callable[[float], bool] = lambda v: True, rule: str = "") -> Any:
    value = keys.take(key)
    if value is None:
        return None
    number = as_int(value) if integer else as_number(value)
    if number is None or not check(number):
        imp.drop(keys.name(key), value, f"not {'an integer' if integer else 'a number'}{' ' + rule if rule else ''}")
        return None
    imp.carry(keys.name(key), dotted, number)
    return number


def carry_processes(imp: Draft, keys: Keys, key: str) -> None:
    """data.num_proc as the file asks, but no more than this machine's cores (more only costs memory)."""
    import os

    wanted = carry_number(imp, keys, key, "data.num_proc", integer=True, check=lambda v: v >= 1, rule="of at least 1")
    cores = os.cpu_count() or 1
    if wanted is not None and wanted > cores:
        imp.replace(keys.name(key), wanted, "data.num_proc", cores,
                    f"this machine has {cores} CPU cores; more tokenizing processes than cores only cost memory")


def carry_bool(imp: Draft, keys: Keys, key: str, dotted: str, invert: bool = False) -> bool | None:
    value = keys.take(key)
    if value is None:
        return None
    flag = as_bool(value)
    if flag is None:
        imp.drop(keys.name(key), value, "not true or false")
        return None
    imp.carry(keys.name(key), dotted, (not flag) if invert else flag)
    return flag


COMPUTE_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "torch.bfloat16": "bfloat16",
                  "float16": "float16", "fp16": "float16", "half": "float16", "torch.float16": "float16",
                  "float32": "float32", "fp32": "float32", "float": "float32", "torch.float32": "float32",
                  "auto": "auto"}

# What an attention choice needs that this machine may lack: (importable module, what to install).
ATTENTION_NEEDS = {"flash_attention_2": ("flash_attn", "the flash-attn package (CUDA GPUs only)")}


def carry_attention(imp: Draft, source: str, ours: str, note: str = "", asked: Any = None) -> None:
    """model.attn_implementation as the file asks where it runs here, else auto with a note saying why:
    an imported config must train on the machine that imported it."""
    import importlib.util

    need = ATTENTION_NEEDS.get(ours)
    if need is not None and importlib.util.find_spec(need[0]) is None:
        imp.replace(source, ours if asked is None else asked, "model.attn_implementation", "auto",
                    f"{ours} needs {need[1]}, which is not installed here; auto attention computes the same "
                    f"(varlen on packed rows, SDPA otherwise). To keep the file's choice, install it and set "
                    f"model.attn_implementation: {ours}")
        return
    imp.carry(source, "model.attn_implementation", ours, note)


OPTIMIZER_NAMES = {
    "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw": "adamw",
    "adamw_bnb_8bit": "adamw_8bit", "adamw_8bit": "adamw_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit", "paged_adamw": "paged_adamw_32bit",
}


def carry_optimizer(imp: Draft, keys: Keys, key: str) -> None:
    value = keys.take(key)
    if value is None:
        return
    ours = OPTIMIZER_NAMES.get(str(value).strip().lower())
    if ours is None:
        imp.drop(keys.name(key), value, f"QLoRA Studio offers {', '.join(choices('train.optimizer'))}; "
                 "train.optimizer stays adamw")
        return
    imp.carry(keys.name(key), "train.optimizer", ours)


def carry_scheduler(imp: Draft, keys: Keys, key: str) -> None:
    value = keys.take(key)
    if value is None:
        return
    name = str(value).strip().lower()
    if name in choices("train.lr_scheduler"):
        imp.carry(keys.name(key), "train.lr_scheduler", name)
    elif name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr", "cosine_with_restarts"):
        imp.carry(keys.name(key), "train.lr_scheduler", "cosine", f"approximated: {name} has no equivalent")
    else:
        imp.drop(keys.name(key), value, f"QLoRA Studio schedules are {', '.join(choices('train.lr_scheduler'))}")


def target_modules(value: Any) -> list[str] | str | None:
    """LoRA targets as ours: all-linear, or a list of module names; None when not expressible."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("all", "all-linear", "all_linear"):
            return "all-linear"
        names = [part.strip() for part in text.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        names = [str(part).strip() for part in value if str(part).strip()]
    else:
        return None
    if not names or any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", n) for n in names):
        return None  # a regular expression (PEFT matches a string target as a regex)
    return names


def split_output_dir(imp: Draft, keys: Keys, key: str) -> None:
    """Their output_dir is the run folder itself; ours is the parent of run folders + run_name."""
    value = keys.take(key)
    if value is None:
        return
    path = Path(str(value))
    parent = str(path.parent) if str(path.parent) not in ("", ".") else "."
    if path.name in ("", ".", ".."):
        imp.carry(keys.name(key), "output_dir", str(path))
        return
    imp.put("output_dir", parent)
    imp.put("run_name", path.name)
    imp.carried.append(f"{keys.name(key)} -> output_dir = {parent}, run_name = {path.name} "
                       "(the run folder is output_dir/run_name)")


def warmup_steps(imp: Draft, keys: Keys, key: str, max_steps: float | None) -> None:
    value = keys.take(key)
    if value is None:
        return
    steps = as_number(value)
    if steps is None or steps < 0:
        imp.drop(keys.name(key), value, "not a number of steps")
    elif steps == 0:
        imp.carry(keys.name(key), "train.warmup_ratio", 0.0)
    elif steps < 1:  # transformers 5 reads a float below 1 as a ratio
        imp.carry(keys.name(key), "train.warmup_ratio", steps)
    elif max_steps and steps < max_steps:
        imp.carry(keys.name(key), "train.warmup_ratio", round(steps / max_steps, 6), f"{int(steps)} of max_steps {int(max_steps)}")
    else:
        imp.drop(keys.name(key), value, "QLoRA Studio sets warmup as a fraction (train.warmup_ratio); without "
                 "max_steps the number of steps is not known here; set train.warmup_ratio yourself")


def add_report_target(imp: Draft, source: str, target: str, note: str = "") -> None:
    """Add tensorboard or wandb to train.report_to (both tools name several switches for it)."""
    targets = imp.config.get("train", {}).get("report_to", [])
    if target not in targets:
        imp.put("train.report_to", [*targets, target])
    imp.carried.append(f"{source} -> train.report_to += {target}" + (f" ({note})" if note else ""))
