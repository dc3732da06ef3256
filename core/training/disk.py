"""The disk a run writes to: checked before the first step (write access, room for the checkpoints
and the adapter), and recognised as the cause when a save fails because it is full.

A full disk shows up as an `OSError` with ENOSPC from Python's own writes, but torch.save and
safetensors report it as a RuntimeError / SafetensorError without an errno; so a failure is also
put on the disk when the run folder's filesystem has less room left than one checkpoint needs.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import DiskError

MIB = 1 << 20
SMALL_FILES = 2 * MIB  # adapter config, model card, trainer state, RNG and scheduler state, our meta and config
LOG_BYTES_PER_STEP = 1200  # metrics.jsonl + the log history in every checkpoint's trainer_state.json
MARGIN = 16 * MIB
FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# Optimizer state written per trainable parameter (on disk paged states count like unpaged ones).
STATE_BYTES = {"adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "paged_adamw_32bit": 8}


@dataclass
class DiskNeed:
    checkpoint_bytes: int
    adapter_bytes: int
    checkpoints_at_once: int  # kept ones, plus the next one written before the oldest goes
    log_bytes: int

    @property
    def total(self) -> int:
        return self.checkpoint_bytes * self.checkpoints_at_once + self.adapter_bytes + self.log_bytes + MARGIN


def estimate_need(model, tokenizer, config: RunConfig, total_steps: int) -> DiskNeed:
    """What a run of `total_steps` steps will write, from its trainable weights and tokenizer."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in trainable)
    states = sum(p.numel() for p in trainable) * STATE_BYTES.get(config.train.optimizer, 8)
    tokenizer_files = tokenizer_bytes(tokenizer)
    t = config.train
    saves = max(1, math.ceil(total_steps / t.save_every_steps))
    at_once = (min(t.keep_checkpoints, saves) if t.keep_checkpoints else saves) + 1
    return DiskNeed(
        checkpoint_bytes=weights + states + tokenizer_files + SMALL_FILES + total_steps * LOG_BYTES_PER_STEP,
        adapter_bytes=weights + tokenizer_files + SMALL_FILES,
        checkpoints_at_once=at_once,
        log_bytes=total_steps * LOG_BYTES_PER_STEP,
    )


def tokenizer_bytes(tokenizer) -> int:
    """About the size of the tokenizer files saved with every checkpoint (tokenizer.json dominates)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        return len(backend.to_str()) if backend is not None else 32 * MIB
    except Exception:  # noqa: BLE001 - an exotic tokenizer: assume a large one
        return 32 * MIB


def free_bytes(path: str | Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_writable(folder: str | Path) -> None:
    """Create and remove a small file: a read-only folder or a full disk fails here, before loading."""
    probe = Path(folder) / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"0" * 4096)
    except OSError as exc:
        raise DiskError(f"output_dir: cannot write in {folder} ({exc.strerror or exc}); choose a folder you can "
                        "write to, or free some space") from None
    finally:
        probe.unlink(missing_ok=True)


def check_space(folder: str | Path, need: DiskNeed, keep_checkpoints: int | None) -> None:
    free = free_bytes(folder)
    if free is None or free >= need.total:
        return
    kept = f"train.keep_checkpoints {keep_checkpoints}" if keep_checkpoints else "train.keep_checkpoints null (all)"
    raise DiskError(
        f"not enough disk space in {folder}: {size(free)} free, the run needs about {size(need.total)} "
        f"({need.checkpoints_at_once} checkpoints of {size(need.checkpoint_bytes)} with {kept}, and the adapter); "
        "free some space, choose another output_dir, or lower train.keep_checkpoints"
    )


def as_disk_error(exc: BaseException, folder: str | Path | None, need: DiskNeed | None,
                  step: int, last_checkpoint: int | None) -> DiskError | None:
    """A DiskError for a failure caused by a full disk (see the module doc), else None."""
    if folder is None:
        return None
    free = free_bytes(folder)
    full = any(isinstance(e, OSError) and e.errno in FULL_ERRNOS for e in _chain(exc))
    room = need.checkpoint_bytes if need is not None else 64 * MIB
    if not full and (free is None or free >= room):
        return None
    kept = (f"the last checkpoint (step {last_checkpoint}) is intact" if last_checkpoint
            else "no checkpoint had been saved yet")
    return DiskError(f"the disk is full at step {step}: {folder} has {size(free or 0)} free and a checkpoint needs "
                     f"about {size(room)}; {kept}: free some space, then resume the run")


def size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
