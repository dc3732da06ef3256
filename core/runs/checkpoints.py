"""Resumable checkpoints in the run folder: checkpoints/step-000100/ with the adapter, optimizer,
scheduler, RNG and trainer state the Trainer writes, plus our counters and the config.

The Trainer writes `checkpoint-N` folders when its `should_save` flag is set (scheduled, stop,
save-now, extend all go that way); `adopt` renames them to our zero-padded names, adds the
counters and prunes old ones. Only a save outside the training loop (after an out-of-memory
error unwound it, or after an unexpected error) writes through the Trainer directly.

The rename is the commit: our counters and config go into `checkpoint-N` first and everything is
flushed to the disk, so a `step-N` folder is complete whenever it exists (a kill mid-save leaves
only a `checkpoint-N` that `RunFolder.repair` removes).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from qlora_studio.core.atomic import fsync_tree, replace_dir, write_text_atomic
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.runs.store import META_NAME, RunFolder, checkpoint_name

log = logging.getLogger(__name__)


class CheckpointStore:
    def __init__(self, folder: RunFolder | None, writer: bool = True):
        self.folder = folder
        self.writer = writer  # rank 0; the other ranks only take part in the Trainer's own (collective) saves

    def existing(self, step: int) -> Path | None:
        if self.folder is None:
            return None
        path = self.folder.checkpoints_dir / checkpoint_name(step)
        return path if path.is_dir() else None

    def save_outside_loop(self, trainer) -> None:
        """Write a full resumable checkpoint of the trainer's current state.

        transformers has no public call that writes optimizer, scheduler, RNG and trainer state
        together outside `train()`; `_save_checkpoint` is what its own loop calls, so a checkpoint
        written here resumes exactly like a scheduled one.
        """
        trainer.model.zero_grad(set_to_none=True)
        trainer._save_checkpoint(trainer.model_wrapped, trial=None)

    def adopt(self, step: int, config: RunConfig, meta: dict[str, Any]) -> Path | None:
        """Give the Trainer's `checkpoint-N` our name, add the counters and config, prune old ones."""
        if self.folder is None or not self.writer:
            return None
        trainer_dir = self.trainer_dir(step)
        target = self.folder.checkpoints_dir / checkpoint_name(step)
        written = trainer_dir if trainer_dir.is_dir() else target if target.is_dir() else None
        if written is None:
            return None
        write_text_atomic(written / META_NAME, json.dumps({"step": step, **meta}, default=str))
        config.save(written / "config.yaml")
        if written is trainer_dir:
            fsync_tree(trainer_dir)
            replace_dir(trainer_dir, target)
        self.folder.prune_checkpoints(config.train.keep_checkpoints)
        return target

    def trainer_dir(self, step: int) -> Path:
        return self.folder.checkpoints_dir / f"checkpoint-{step}"

    def discard(self, step: int) -> None:
        """Drop the Trainer's `checkpoint-N` of a step that must not be kept (NaN weights)."""
        if self.folder is not None and self.writer:
            shutil.rmtree(self.trainer_dir(step), ignore_errors=True)
