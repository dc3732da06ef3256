"""The run folder's disk: write access and free space are checked before the first step, and a disk
that fills up during a save stops the run with the previous checkpoint intact and loadable.

The full disk is a real 64 MiB tmpfs where this process may mount one (root, as in CI containers);
elsewhere a fake filesystem layer stands in: `shutil.disk_usage` reports the fake free space and
`torch.save` fails once it is spent, the way torch fails on a full disk (an untyped RuntimeError).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qlora_studio.core.errors import FailureCause
from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.runner import run_training
from qlora_studio.core.runs.store import RunFolder

MIB = 1 << 20


class Tmpfs:
    """A real small filesystem; `fill` leaves only `free` bytes with a ballast file."""

    kind = "tmpfs"

    def __init__(self, path: Path):
        self.path = path

    def fill(self, free: int) -> None:
        ballast = self.path / "ballast"
        room = shutil.disk_usage(self.path).free - free
        with open(ballast, "wb") as fh:
            fh.truncate(0)
            chunk = b"\0" * MIB
            while room > 0:
                fh.write(chunk[: min(room, MIB)])
                room -= MIB
            fh.flush()
            os.fsync(fh.fileno())

    def empty(self) -> None:
        (self.path / "ballast").unlink()


class FakeDisk:
    """The fake filesystem layer for machines that cannot mount (see the module doc)."""

    kind = "fake"

    def __init__(self, path: Path, monkeypatch):
        self.path = path
        self.free: int | None = None
        real_usage, real_save = shutil.disk_usage, torch.save

        def disk_usage(p):
            usage = real_usage(p)
            inside = Path(p).resolve().is_relative_to(self.path.resolve())
            return usage._replace(free=self.free) if inside and self.free is not None else usage

        def save(obj, f, *args, **kwargs):
            inside = isinstance(f, (str, os.PathLike)) and Path(f).resolve().is_relative_to(self.path.resolve())
            if inside and self.free is not None:
                Path(f).write_bytes(b"\0" * self.free)
                self.free = 0
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(shutil, "disk_usage", disk_usage)
        monkeypatch.setattr(torch, "save", save)

    def fill(self, free: int) -> None:
        self.free = free

    def empty(self) -> None:
        self.free = None


def _mount_tmpfs(path: Path) -> bool:
    if os.environ.get("QLORA_STUDIO_FAKE_DISK") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.fixture()
def small_disk(tmp_path, monkeypatch):
    path = tmp_path / "disk"
    path.mkdir()
    if _mount_tmpfs(path):
        try:
            yield Tmpfs(path)
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
    else:
        yield FakeDisk(path, monkeypatch)


def test_a_disk_filling_during_a_save_stops_with_the_previous_checkpoint_loadable(small_disk, tiny_config):
    config = tiny_config.with_overrides({"output_dir": str(small_disk.path / "runs"), "train.save_every_steps": 3,
                                         "train.max_steps": 8, "lora.dropout": 0.0})

    def fill_after_first_checkpoint(event):  # another program fills the disk while we train
        if isinstance(event, ev.CheckpointSaved) and event.step == 3:
            small_disk.fill(free=48 * 1024)  # less than one checkpoint of the tiny model

    events = []
    result = run_training(config, lambda e: (events.append(e), fill_after_first_checkpoint(e)))
    assert result.status == "failed" and result.cause is FailureCause.DISK, (small_disk.kind, result.error)
    assert result.exit_code == 5 and "\n" not in result.error
    assert result.error.startswith("the disk is full at step 6")
    assert "the last checkpoint (step 3) is intact: free some space, then resume the run" in result.error
    run = RunFolder(result.run_dir)
    assert run.read_status()["status"] == "failed" and run.read_status()["cause"] == "disk"
    assert [step for step, _ in run.checkpoints()] == [3]
    assert not list(run.checkpoints_dir.glob("checkpoint-*"))  # the half-written save is gone
    weights = load_file(run.latest_checkpoint() / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert isinstance(events[-1], ev.Failed) and events[-1].cause is FailureCause.DISK

    small_disk.empty()  # the user frees space and resumes: the checkpoint loads and training goes on
    resumed = run_training(None, resume_from=run.path)
    assert resumed.status == "finished" and resumed.step == 8, resumed.error
    assert [m["step"] for m in run.read_metrics()] == list(range(1, 9))


def test_not_enough_free_space_is_said_before_the_first_step(tiny_config, tmp_path, monkeypatch):
    from qlora_studio.core.training import disk

    monkeypatch.setattr(disk, "free_bytes", lambda path: 5 * MIB)
    events = []
    result = run_training(tiny_config.with_overrides({"train.keep_checkpoints": 2}), events.append)
    assert result.cause is FailureCause.DISK and result.status == "failed"
    assert result.error.startswith(f"not enough disk space in {result.run_dir}: 5.0 MiB free, the run needs about")
    assert "3 checkpoints of" in result.error and "train.keep_checkpoints 2" in result.error
    assert not [e for e in events if isinstance(e, ev.StepLogged)]  # nothing was trained


def test_an_output_folder_that_cannot_be_written_is_a_clean_error(tiny_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_training(tiny_config.with_overrides({"output_dir": str(blocker / "runs")}))
    assert result.status == "failed" and result.cause is FailureCause.DISK and result.exit_code == 5
    assert result.error.startswith("output_dir: cannot create the run folder") and "\n" not in result.error
