"""Export a trained run to the tools people run models in: the PEFT adapter, a merged 16-bit
transformers folder, a GGUF file for llama.cpp / LM Studio, and an Ollama folder (GGUF + Modelfile).

    merge.py        base (dequantized from the 4-bit weights training saw) + adapter -> merged folder
    gguf_file.py    merged folder -> .gguf (tensors, hyper-parameters), on gguf's GGUFWriter
    gguf_vocab.py   the tokenizer as GGUF metadata (tokens, types, merges, pre-tokenizer name)
    llamacpp.py     llama.cpp (optional): the K-quant quantizer and a runtime for the parity check
    parity.py       the exported artefact against the run, on its held-out rows: exact match, stops
    chat_format.py  a Jinja chat template measured and rebuilt as Ollama's Go template
    ollama.py       .gguf -> folder with model.gguf + Modelfile
    run.py          `export_run`: what `qlora-studio export` and the window's Export dialog call

Every step reports progress and can be cancelled (`jobs.Job`), works in a staging folder or file
beside its target and publishes it with one rename, so a cancelled or failed export leaves nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from qlora_studio.core.after.jobs import Cancelled
from qlora_studio.core.atomic import replace_dir
from qlora_studio.core.errors import UserError

# q4_k_m (what Ollama and LM Studio users load) and q8_0 first: what most people want. The K-quants
# need llama.cpp's quantizer (llamacpp.py, the `gguf` extra); the rest our writer makes alone.
GGUF_QUANTS = ("q4_k_m", "q8_0", "q5_k_m", "q6_k", "f16", "f32", "bf16", "q5_1", "q5_0", "q4_1", "q4_0")
EXPORT_TARGETS = ("adapter", "merged", "gguf", "ollama")


class ExportError(UserError):
    """An export problem the user can fix (wrong path, unsupported model, ...): a one-line message."""


class ExportCancelled(ExportError, Cancelled):
    """The user cancelled; partial output was removed."""

    def __init__(self, message: str = "export cancelled; partial files were removed"):
        super().__init__(message)


@contextmanager
def staged_output_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh staging folder beside `out_dir` (which must be absent or empty), put in its place
    with one rename when the block ends, removed if the block fails or is cancelled."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not empty; choose another --out or delete it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_json(path: Path, missing: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(missing) from None
    except ValueError as exc:
        from qlora_studio.core.model.sources import first_line

        raise ExportError(f"{path}: not valid JSON ({first_line(exc)})") from None


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    from qlora_studio.core.model.sources import first_line

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load the tokenizer in {folder}: {first_line(exc)}") from None
