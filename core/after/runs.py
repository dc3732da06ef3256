"""Looking after finished runs: notes, renaming, deleting. A running run is never renamed or deleted
(its process writes into the folder)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from qlora_studio.core.atomic import write_text_atomic
from qlora_studio.core.errors import UserError

NOTES_FILE = "notes.md"


def _check_not_running(run_dir: Path, doing: str) -> None:
    from qlora_studio.core.runs.store import RunFolder

    if RunFolder(run_dir).effective_status() == "running":
        raise UserError(f"{run_dir.name} is training; stop it before you {doing} it")


def read_notes(run_dir: str | Path) -> str:
    try:
        return (Path(run_dir) / NOTES_FILE).read_text(encoding="utf-8")
    except OSError:
        return ""


def write_notes(run_dir: str | Path, text: str) -> None:
    path = Path(run_dir) / NOTES_FILE
    if not text.strip():
        path.unlink(missing_ok=True)
        return
    write_text_atomic(path, text)


def rename_run(run_dir: str | Path, new_name: str) -> Path:
    """Rename the run folder (and its config's run_name); the new path."""
    from qlora_studio.core.runs.store import RunFolder

    run_dir = Path(run_dir)
    name = new_name.strip()
    if not name or name in (".", "..") or re.search(r'[/\\:*?"<>|\x00-\x1f]', name):
        raise UserError(f"{new_name!r} is not a usable folder name (no / \\ : * ? \" < > |)")
    target = run_dir.with_name(name)
    if target == run_dir:
        return run_dir
    if target.exists():
        raise UserError(f"{target} already exists; choose another name")
    _check_not_running(run_dir, "rename")
    os.replace(run_dir, target)
    run = RunFolder(target)
    try:
        run.load_config().model_copy(update={"run_name": name}).save(run.config_path)
    except UserError:
        pass  # a folder whose config no longer loads keeps it as it is
    return target


def delete_run(run_dir: str | Path) -> None:
    """Delete the run folder for good (the window moves it to the system trash when it can)."""
    check_deletable(run_dir)
    shutil.rmtree(run_dir)


def check_deletable(run_dir: str | Path) -> None:
    """Raise if the folder must not be deleted (the window asks before it moves it to the trash)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml); not deleting it")
    _check_not_running(run_dir, "delete")
