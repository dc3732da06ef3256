"""Shared pieces of the GPU benchmarks: model shapes, random-weight model folders, result files."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from shapes import SHAPES, shape_folder  # noqa: E402,F401 - re-exported for the bench scripts (tests/shapes.py)


def fixed_length_rows(path: Path, rows: int, tokens: int, tokenizer, seed: int = 0) -> Path:
    """Text rows of exactly `tokens` tokens with the EOS the pipeline appends (so batches carry no padding)."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "date", "March", "2021", "ISO", "format", "reply", "token", "memory",
             "the", "a", "of", "to", "1", "2", "3", "day"]
    # ByteLevel pre-tokenization splits at spaces, so a text's length is the sum of its words' lengths.
    cost = {w: len(tokenizer(" " + w, add_special_tokens=False).input_ids) for w in words}
    singles = [w for w, c in cost.items() if c == 1]
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(rows):
            left = tokens - 1 - len(tokenizer("the", add_special_tokens=False).input_ids)
            parts = ["the"]
            while left > 0:
                word = rng.choice(words if left > 4 else singles)
                if cost[word] <= left:
                    parts.append(word)
                    left -= cost[word]
            fh.write(json.dumps({"text": " ".join(parts)}) + "\n")
    return path


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'unknown'})"


def gpu_slug() -> str:
    return gpu_name().lower().replace("nvidia ", "").replace(" ", "-").replace("(", "").replace(")", "").split("-hbm")[0]


def environment() -> dict:
    import importlib.metadata as md

    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {"gpu": gpu_name(), "cuda": torch.version.cuda, "python": platform.python_version(), "versions": versions,
            "date": time.strftime("%Y-%m-%d")}


def save(name: str, payload: dict, out: Path | None = None) -> Path:
    target = (out or RESULTS) / f"{name}-{gpu_slug()}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"environment": environment(), **payload}, indent=2, default=str) + "\n")
    print(f"wrote {target}")
    return target
