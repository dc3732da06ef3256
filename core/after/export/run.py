"""`export_run`: one call for every export format, used by `qlora-studio export` and the window."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from qlora_studio.core.after.adapters import AdapterRef, locate_adapter
from qlora_studio.core.after.export import (
    EXPORT_TARGETS,
    GGUF_QUANTS,
    ExportCancelled,
    ExportError,
    staged_output_dir,
)
from qlora_studio.core.after.export.gguf_file import write_gguf
from qlora_studio.core.after.export.merge import merge_to_folder
from qlora_studio.core.after.export.ollama import write_ollama
from qlora_studio.core.after.jobs import CancelFn, Job, ProgressFn

TRAINING_STATE = ("trainer_state.json", "training_args.bin")  # with *.pt / *.pth: what only resuming needs


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
    if to not in EXPORT_TARGETS:
        raise ExportError(f"--to must be one of {', '.join(EXPORT_TARGETS)}, not {to!r}")
    if to in ("gguf", "ollama") and quant.lower() not in GGUF_QUANTS:
        raise ExportError(f"GGUF type {quant!r} is not offered; choose one of {', '.join(GGUF_QUANTS)}")
    ref = run if isinstance(run, AdapterRef) else locate_adapter(run, checkpoint)
    job = Job(progress, cancel, cancelled=ExportCancelled)
    out = Path(out).expanduser().resolve()
    if to == "adapter":
        with staged_output_dir(out) as staging:
            job.report(0.0, "copying the adapter")
            for item in ref.adapter_dir.iterdir():  # a checkpoint also holds optimizer and RNG state: leave those
                if item.is_file() and not item.name.endswith((".pt", ".pth")) and item.name not in TRAINING_STATE:
                    shutil.copy2(item, staging / item.name)
        job.report(1.0, f"adapter saved to {out}")
        return out
    if to == "merged":
        return merge_to_folder(ref, out, dtype, progress, cancel)
    if out.exists() and (to == "gguf" or not out.is_dir() or any(out.iterdir())):  # before the long merge
        raise ExportError(f"{out} already exists; choose another --out or delete it")
    if to == "gguf" and out.suffix.lower() != ".gguf":
        raise ExportError(f"{out}: a GGUF export is one file; give a name ending in .gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))
    try:
        merged = merge_to_folder(ref, scratch / ref.name.replace(" ", "-").replace("(", "").replace(")", ""), dtype, job.sub(0.0, 0.5).report, cancel)
        if to == "gguf":
            return write_gguf(merged, out, quant, job.sub(0.5, 1.0).report, cancel, name=out.stem)
        return write_ollama(merged, out, None, system_prompt, job.sub(0.5, 1.0).report, cancel, quant=quant)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def default_output(ref: AdapterRef, to: str, quant: str = "q8_0") -> Path:
    """Where an export goes unless told: exports/<what> inside the run folder (beside the adapter otherwise)."""
    home = (ref.run_dir or ref.adapter_dir.parent) / "exports"
    tag = "" if ref.step is None else f"-step{ref.step}"
    name = {"adapter": f"adapter{tag}", "merged": f"merged{tag}", "gguf": f"model{tag}-{quant}.gguf",
            "ollama": f"ollama{tag}-{quant}"}[to]
    return home / name
