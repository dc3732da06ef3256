"""An Ollama folder: model.gguf + a Modelfile whose TEMPLATE, SYSTEM and stop parameters
reproduce the chat format training used (import with `ollama create NAME -f OUT/Modelfile`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from qlora_studio.core.after.export import ExportCancelled, ExportError, staged_output_dir
from qlora_studio.core.after.export.chat_format import ChatFormat, analyze_chat_template
from qlora_studio.core.after.export.gguf_file import write_gguf
from qlora_studio.core.after.jobs import CancelFn, Job, ProgressFn

log = logging.getLogger(__name__)


def write_ollama(source: str | Path, out_dir: str | Path, chat_template: str | None = None,
                 system_prompt: str | None = None, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                 *, quant: str = "q8_0") -> Path:
    """A folder Ollama can import: model.gguf + Modelfile (`ollama create NAME -f OUT/Modelfile`).

    source: a .gguf file (copied in) or a merged model folder (converted with `write_gguf`, `quant`).
    chat_template: the Jinja template training used; None takes the one stored in the GGUF.
    system_prompt: the Modelfile's SYSTEM; None keeps the template's own default system prompt
    (SmolLM2 has one), if any.
    """
    from gguf import GGUFReader

    source = Path(source).expanduser()
    job = Job(progress, cancel, cancelled=ExportCancelled)
    if not source.exists():
        raise ExportError(f"{source}: no such file or folder")
    if system_prompt is not None and '"""' in system_prompt:
        raise ExportError('the system prompt cannot contain """ (a Modelfile cannot quote it)')
    with staged_output_dir(Path(out_dir)) as staging:
        target = staging / "model.gguf"
        if source.is_dir():
            write_gguf(source, target, quant, progress=job.sub(0.0, 0.95).report, cancel=cancel)
        elif source.suffix.lower() == ".gguf":
            job.report(0.0, "copying the GGUF")
            try:
                os.link(source, target)  # same disk: no copy needed
            except OSError:
                shutil.copyfile(source, target)
        else:
            raise ExportError(f"{source}: give a .gguf file or a merged model folder")
        job.check()
        job.report(0.96, "writing the Modelfile")
        meta = _gguf_chat_metadata(GGUFReader(str(target)))
        template = chat_template or meta["chat_template"]
        if not template:
            raise ExportError("the model has no chat template; pass the one training used")
        fmt = analyze_chat_template(template, meta["bos"] if meta["add_bos"] else None, meta["eos"], meta["specials"])
        if system_prompt and fmt.system_mode == "none":
            raise ExportError("this chat template has no place for a system prompt; leave it out")
        if meta["bos"] and template.lstrip().startswith("{{ bos_token") and not meta["add_bos"]:
            log.warning("the chat template starts with BOS but the GGUF does not add it; Ollama will omit BOS")
        text = modelfile_text(fmt, system_prompt if system_prompt is not None else fmt.default_system,
                              source_name=source.name)
        (staging / "Modelfile").write_text(text, encoding="utf-8")
    out = Path(out_dir).expanduser().resolve()
    job.report(1.0, f"Ollama folder saved to {out}; run: ollama create NAME -f {out / 'Modelfile'}")
    return out


def modelfile_text(fmt: ChatFormat, system_prompt: str | None, source_name: str = "") -> str:
    lines = [
        f"# Made by QLoRA Studio{' from ' + source_name if source_name else ''}.",
        f"# Chat format: {fmt.family} (system prompt: {fmt.system_mode}); import with: ollama create NAME -f Modelfile",
        "FROM ./model.gguf",
        f'TEMPLATE """{fmt.go_template()}"""',
    ]
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    for stop in fmt.stops:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join(lines) + "\n"


def _gguf_chat_metadata(reader) -> dict:
    """BOS/EOS text, control tokens and the chat template, read back from a GGUF."""
    def value(key, default=None):
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    tokens = value("tokenizer.ggml.tokens", [])
    types = value("tokenizer.ggml.token_type", [])
    bos_id, eos_id = value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id")
    return {
        "chat_template": value("tokenizer.chat_template"),
        "bos": tokens[bos_id] if bos_id is not None and bos_id < len(tokens) else None,
        "eos": tokens[eos_id] if eos_id is not None and eos_id < len(tokens) else None,
        "add_bos": bool(value("tokenizer.ggml.add_bos_token", False)),
        "specials": [t for t, k in zip(tokens, types) if k == 3],  # CONTROL
    }
