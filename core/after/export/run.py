"""`export_run`: one call for every export format, used by `qlora-studio export` and the window."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from qlora_studio.core.after.adapters import AdapterRef, locate_adapter
from qlora_studio.core.after.export import (
    EXPORT_TARGETS,
    GGUF_QUANTS,
    ExportCancelled,
    ExportError,
    staged_output_dir,
)
from qlora_studio.core.after.export import llamacpp
from qlora_studio.core.after.export.gguf_file import gguf_unsupported, write_gguf
from qlora_studio.core.after.export.merge import merge_to_folder
from qlora_studio.core.after.export.ollama import write_ollama
from qlora_studio.core.after.jobs import CancelFn, Job, ProgressFn

TRAINING_STATE = ("trainer_state.json", "training_args.bin")  # with *.pt / *.pth: what only resuming needs


@dataclass(frozen=True)
class Exporter:
    """One export target: whether it starts from a merged folder, how it writes, where it goes by default."""

    write: Callable[..., Path]  # (source, out, options, job, cancel) -> the written path
    merged_first: bool  # True: `source` is base + adapter merged into a scratch folder; else the adapter
    default_name: str  # under exports/ in the run folder; {tag} = -stepN of a checkpoint, {quant} = GGUF type
    one_file: bool = False  # `out` is a file (must end in .gguf), not a folder


@dataclass(frozen=True)
class Options:
    quant: str
    dtype: torch.dtype
    system_prompt: str | None


def _write_adapter(ref: AdapterRef, out: Path, options: Options, job: Job, cancel: CancelFn | None) -> Path:
    with staged_output_dir(out) as staging:
        job.report(0.0, "copying the adapter")
        for item in ref.adapter_dir.iterdir():  # a checkpoint also holds optimizer and RNG state: leave those
            if item.is_file() and not item.name.endswith((".pt", ".pth")) and item.name not in TRAINING_STATE:
                shutil.copy2(item, staging / item.name)
    job.report(1.0, f"adapter saved to {out}")
    return out


def _write_merged(ref: AdapterRef, out: Path, options: Options, job: Job, cancel: CancelFn | None) -> Path:
    return merge_to_folder(ref, out, options.dtype, job.report, cancel)


def _write_gguf(merged: Path, out: Path, options: Options, job: Job, cancel: CancelFn | None) -> Path:
    return write_gguf(merged, out, options.quant, job.report, cancel, name=out.stem)


def _write_ollama(merged: Path, out: Path, options: Options, job: Job, cancel: CancelFn | None) -> Path:
    return write_ollama(merged, out, None, options.system_prompt, job.report, cancel, quant=options.quant)


EXPORTERS: dict[str, Exporter] = {
    "adapter": Exporter(_write_adapter, merged_first=False, default_name="adapter{tag}"),
    "merged": Exporter(_write_merged, merged_first=False, default_name="merged{tag}"),
    "gguf": Exporter(_write_gguf, merged_first=True, default_name="model{tag}-{quant}.gguf", one_file=True),
    "ollama": Exporter(_write_ollama, merged_first=True, default_name="ollama{tag}-{quant}"),
}
assert tuple(EXPORTERS) == EXPORT_TARGETS  # the CLI's choices, listed where importing them costs nothing


def export_run(run: str | Path | AdapterRef, to: str, out: str | Path, *, checkpoint: str | int | None = None,
               quant: str = "q8_0", dtype: torch.dtype = torch.float16, system_prompt: str | None = None,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Path:
    """`qlora-studio export RUN_DIR [--checkpoint step-N] --to adapter|merged|gguf|ollama --out PATH`.

    adapter: the PEFT adapter folder (with the tokenizer and its chat template), as is.
    merged: base + adapter as a plain transformers folder in `dtype`.
    gguf: that model as one `quant` .gguf file (`out` is the file).
    ollama: a folder with model.gguf (`quant`) and a Modelfile; `system_prompt` is its SYSTEM
    (None: the chat template's own default, if it has one).
    gguf and ollama merge into a scratch folder beside `out` first (disk: one 16-bit copy).
    """
    exporter = EXPORTERS.get(to)
    if exporter is None:
        raise ExportError(f"--to must be one of {', '.join(EXPORT_TARGETS)}, not {to!r}")
    if exporter.merged_first and quant.lower() not in GGUF_QUANTS:
        raise ExportError(f"GGUF type {quant!r} is not offered; choose one of {', '.join(GGUF_QUANTS)}")
    ref = run if isinstance(run, AdapterRef) else locate_adapter(run, checkpoint)
    if exporter.merged_first:  # before the long merge: what would stop the GGUF writer at its end
        if quant.lower() in llamacpp.K_QUANTS:
            llamacpp.require(f"GGUF type {quant.upper()}")
        blocker = gguf_blocker(ref)
        if blocker:
            raise ExportError(blocker)
    job = Job(progress, cancel, cancelled=ExportCancelled)
    out = Path(out).expanduser().resolve()
    options = Options(quant, dtype, system_prompt)
    if not exporter.merged_first:
        return exporter.write(ref, out, options, job, cancel)
    if out.exists() and (exporter.one_file or not out.is_dir() or any(out.iterdir())):  # before the long merge
        raise ExportError(f"{out} already exists; choose another --out or delete it")
    if exporter.one_file and out.suffix.lower() != ".gguf":
        raise ExportError(f"{out}: a GGUF export is one file; give a name ending in .gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))
    try:
        merged = merge_to_folder(ref, scratch / ref.name.replace(" ", "-").replace("(", "").replace(")", ""), dtype,
                                 job.sub(0.0, 0.5).report, cancel)
        return exporter.write(merged, out, options, job.sub(0.5, 1.0), cancel)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def gguf_blocker(ref: AdapterRef) -> str | None:
    """Why this run's model cannot become a GGUF file (its architecture), or None; from its
    config.json, without loading weights. None too when the config cannot be read here (the writer
    checks the merged folder again)."""
    from qlora_studio.core.planner.plan import model_config_of

    try:
        architectures = model_config_of(ref.config).architectures or []
    except Exception:  # noqa: BLE001 - unreadable here is not a verdict; the writer reads the merged folder
        return None
    return gguf_unsupported({"architectures": architectures})


def default_output(ref: AdapterRef, to: str, quant: str = "q8_0") -> Path:
    """Where an export goes unless told: exports/<what> inside the run folder (beside the adapter otherwise)."""
    home = (ref.run_dir or ref.adapter_dir.parent) / "exports"
    tag = "" if ref.step is None else f"-step{ref.step}"
    return home / EXPORTERS[to].default_name.format(tag=tag, quant=quant)
