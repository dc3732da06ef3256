"""Files that survive a kill at any moment.

A whole file is written beside its target and renamed over it, so a reader sees the old file or
the new one, never half of one; a folder (a checkpoint, the adapter) is built under another name
and renamed into place the same way. Logs (JSON Lines) are append-only: a kill can tear only the
last line, which readers skip and `repair_tail` cuts off before the next writer appends.
`durable=True` also flushes to the disk (fsync) before the rename, for what must outlive a power cut.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

OLD_SUFFIX = ".old"


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_bytes_atomic(path: str | Path, data: bytes, *, durable: bool = False) -> None:
    path = Path(path)
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also keep the half-written copy
        raise
    if durable:
        fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str, *, durable: bool = False) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_json_atomic(path: str | Path, data: Any, *, durable: bool = False, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False, default=str), durable=durable)


def append_line(path: str | Path, line: str) -> None:
    """One record at the end of a log, in one write call."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")


def repair_tail(path: str | Path) -> bool:
    """Cut a torn last line (a kill in the middle of a write) off a JSON Lines file; True if one was cut."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with open(path, "r+b") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return False
        # Walk back to the last complete line; logs are small enough to scan in 64 KiB blocks.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            fh.seek(start)
            block = fh.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                fh.truncate(start + cut + 1)
                return True
            end = start
        fh.truncate(0)
        return True


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new file in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Flush every file under `folder` to the disk, then the folders themselves."""
    folder = Path(folder)
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(root)


def replace_dir(staging: str | Path, target: str | Path) -> None:
    """Put the finished folder `staging` where `target` is.

    POSIX cannot rename a folder over a non-empty one, so the old one steps aside first as
    `<target>.old`; a kill between the two renames leaves both complete, and `recover_dir`
    restores the old one.
    """
    staging, target = Path(staging), Path(target)
    old = target.with_name(target.name + OLD_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: str | Path) -> None:
    """Undo a `replace_dir` cut short: the old folder goes back if the new one never arrived."""
    target = Path(target)
    old = target.with_name(target.name + OLD_SUFFIX)
    if not old.exists():
        return
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, target)
