"""Which adapter of a run to use: the final one (adapter/) or a checkpoint (checkpoints/step-N/),
with the config it was trained with and the compute dtype training resolved "auto" to."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from qlora_studio.core.config.files import load_config
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import UserError

FINAL = "final"


@dataclass
class AdapterRef:
    adapter_dir: Path
    run_dir: Path | None  # None for a bare adapter folder
    config: RunConfig  # what training used (for a bare adapter: only the base model is known)
    label: str  # "final" | "step 50"
    step: int | None = None  # the checkpoint's step

    @property
    def name(self) -> str:
        return f"{self.run_dir.name if self.run_dir else self.adapter_dir.name} ({self.label})"

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype the base was cast to before 4-bit quantization in training, so loading it
        again gives the same 4-bit codes the adapter was trained against; else what auto picks here."""
        from qlora_studio.core.model.devices import resolve_compute_dtype

        try:
            status = json.loads((self.run_dir / "status.json").read_text(encoding="utf-8"))
            return getattr(torch, status["quantization"]["compute_dtype"])
        except (TypeError, OSError, ValueError, KeyError, AttributeError):
            return resolve_compute_dtype(self.config.quantization.compute_dtype, device)


def parse_checkpoint(text: str | int | None) -> int | None:
    """"step-50", "step-000050", "50" -> 50; None, "" or "final" -> None (the final adapter)."""
    if text is None or str(text).strip().lower() in ("", FINAL):
        return None
    match = re.fullmatch(r"(?:step[-_ ]?)?0*(\d+)", str(text).strip().lower())
    if not match:
        raise UserError(f"--checkpoint {text}: write it as step-N (e.g. step-50) or final")
    return int(match.group(1))


def available_adapters(run_dir: str | Path) -> list[tuple[str, int | None]]:
    """(label, step) of every adapter a run folder holds: the final one first, then checkpoints, newest first."""
    from qlora_studio.core.runs.store import RunFolder

    run = RunFolder(run_dir)
    found = [(FINAL, None)] if (run.adapter_dir / "adapter_config.json").is_file() else []
    for step, path in reversed(run.checkpoints()):
        if (path / "adapter_config.json").is_file():
            found.append((f"step {step}", step))
    return found


def locate_adapter(path: str | Path, checkpoint: str | int | None = None) -> AdapterRef:
    """A run folder (its final adapter, or `checkpoint`), a checkpoint folder, or a bare adapter folder."""
    from qlora_studio.core.runs.store import RunFolder, checkpoint_name

    path = Path(path).expanduser()
    step = parse_checkpoint(checkpoint)
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():  # a run folder
        run = RunFolder(path)
        if step is None:
            if not (run.adapter_dir / "adapter_config.json").is_file():
                steps = ", ".join(f"step-{s}" for s, _ in run.checkpoints()) or "none"
                raise UserError(f"{path}: the run has no final adapter yet; pick a checkpoint (--checkpoint): {steps}")
            return AdapterRef(run.adapter_dir, path, run.load_config(), FINAL)
        folder = run.checkpoints_dir / checkpoint_name(step)
        if not (folder / "adapter_config.json").is_file():
            steps = ", ".join(f"step-{s}" for s, _ in run.checkpoints()) or "none"
            raise UserError(f"{path}: no checkpoint at step {step}; this run has: {steps}")
        return AdapterRef(folder, path, load_config(folder / "config.yaml") if (folder / "config.yaml").is_file()
                          else run.load_config(), f"step {step}", step)
    if step is not None:
        raise UserError(f"{path}: --checkpoint needs a run folder")
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"{path}: neither a run folder with adapter/ nor an adapter folder (no adapter_config.json)")
    for config_file in (path / "config.yaml", path.parent / "config.yaml", path.parent.parent / "config.yaml"):
        if config_file.is_file():  # adapter/ or checkpoints/step-N/ inside a run folder
            run_dir = config_file.parent if config_file.parent != path else path.parent.parent
            match = re.fullmatch(r"step-0*(\d+)", path.name)
            label, number = (f"step {int(match.group(1))}", int(match.group(1))) if match else (FINAL, None)
            return AdapterRef(path, run_dir if (run_dir / "status.json").is_file() else None, load_config(config_file),
                              label, number)
    base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{path}: the adapter does not say which base model it belongs to")
    return AdapterRef(path, None, RunConfig.model_validate({"model": {"name_or_path": base}}), FINAL)
