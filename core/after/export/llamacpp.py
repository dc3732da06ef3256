"""llama.cpp, through llama-cpp-python (the optional `gguf` extra): its quantizer for the K-quants and
its runtime for checking an exported GGUF file.

K-quants (Q4_K_M, Q5_K_M, Q6_K) choose a type per tensor from llama.cpp's own rules and need its
C++ quantizer; the `gguf` package writes only the legacy block types. So a K-quant export writes
f16 with our writer and hands it to `llama_model_quantize`, as `llama-quantize` would.

Both run in a child process (`python -m qlora_studio.core.after.export.llamacpp ...`): native code
that crashes (llama.cpp built with CPU paths the machine lacks segfaults on quantized files) fails
the export or the check, never the window; its per-tensor chatter stays in the child's stderr, whose
last line explains a failure.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from qlora_studio.core.after.export import ExportError

K_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
INSTALL_HINT = "pip install 'qlora-studio[gguf]' (llama-cpp-python)"


def available() -> bool:
    """Installed, and runnable as a child (a frozen app has no `python -m`; it does not bundle llama.cpp)."""
    return not getattr(sys, "frozen", False) and importlib.util.find_spec("llama_cpp") is not None


def require(what: str) -> None:
    """Raise the one-line ExportError that says what to install, before any long work starts."""
    if not available():
        raise ExportError(f"{what} needs llama.cpp: {INSTALL_HINT}; or choose q8_0, q5_0 or q4_0, which need nothing more")


def quantize(f16_file: Path, out_file: Path, quant: str, cancel: Callable[[], bool] | None = None) -> None:
    """`f16_file` quantized by llama.cpp into `out_file` (a K-quant, see K_QUANTS); the caller has
    checked `require` before writing the f16 file."""
    _child(["quantize", str(f16_file), str(out_file), quant], f"quantizing to {quant.upper()}", cancel)


def gguf_replies(path: Path, prompts: list[list[dict[str, str]]], max_new_tokens: int, stops: list[str] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> list[tuple[str, bool]]:
    """Greedy replies of the GGUF file `path` in llama.cpp, with the chat template stored in the file:
    (text, whether it ended by itself rather than at the token limit) per conversation."""
    require("checking a GGUF file")
    with tempfile.TemporaryDirectory(prefix="qlora-studio-gguf-") as scratch:
        asked, answers = Path(scratch) / "prompts.json", Path(scratch) / "replies.json"
        asked.write_text(json.dumps({"prompts": prompts, "max_new_tokens": max_new_tokens, "stops": stops or None}))
        _child(["replies", str(path), str(asked), str(answers)], f"answering with {path.name}", cancel, progress)
        return [tuple(r) for r in json.loads(answers.read_text())]


def _child(args: list[str], doing: str, cancel: Callable[[], bool] | None,
           progress: Callable[[int, int], None] | None = None) -> None:
    """Run this module's `main` in a child; its stdout carries `done total` progress lines."""
    command = [sys.executable, "-m", "qlora_studio.core.after.export.llamacpp", *args]
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        for line in child.stdout:
            if cancel is not None and cancel():
                child.kill()
                break
            counts = line.split()
            if progress is not None and len(counts) == 2 and all(c.isdigit() for c in counts):  # native code may print too
                progress(int(counts[0]), int(counts[1]))
        code = child.wait()
        if cancel is not None and cancel():
            from qlora_studio.core.after.export import ExportCancelled

            raise ExportCancelled()
        if code != 0:
            errors.seek(0)
            said = [line.strip() for line in errors.read().splitlines() if line.strip()]
            why = said[-1] if said else (f"signal {-code}" if code < 0 else f"exit code {code}")
            raise ExportError(f"llama.cpp failed {doing}: {why}")


def _llama_cpp():
    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    return llama_cpp


def _quantize_here(f16_file: str, out_file: str, quant: str) -> None:
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[quant])
    params.nthread = max(1, os.cpu_count() or 1)
    if llama_cpp.llama_model_quantize(f16_file.encode(), out_file.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize refused {f16_file}")


def _replies_here(model_file: str, asked: str, answers: str) -> None:
    job = json.loads(Path(asked).read_text())
    llm = _llama_cpp().Llama(model_path=model_file, n_ctx=4096, verbose=False, seed=0)
    replies = []
    for done, messages in enumerate(job["prompts"], start=1):
        out = llm.create_chat_completion(messages, max_tokens=job["max_new_tokens"], temperature=0.0, top_k=1,
                                         stop=job["stops"])
        choice = out["choices"][0]
        replies.append(((choice["message"]["content"] or "").strip(), choice["finish_reason"] == "stop"))
        print(done, len(job["prompts"]), flush=True)
    llm.close()
    Path(answers).write_text(json.dumps(replies))


def main(argv: list[str]) -> None:
    what, *args = argv
    {"quantize": _quantize_here, "replies": _replies_here}[what](*args)


if __name__ == "__main__":
    main(sys.argv[1:])
