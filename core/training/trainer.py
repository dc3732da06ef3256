"""transformers' Trainer with what a run adds to it; made in one place (`build_trainer`)."""

from __future__ import annotations

import os

from transformers import PrinterCallback, Trainer

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.training.arguments import training_arguments
from qlora_studio.core.training.reporting import ReportingMixin, trainer_environment


class StudioTrainer(ReportingMixin, Trainer):
    """The Trainer a run uses: the place for batching and logging that differ from the stock one."""


def build_trainer(config: RunConfig, loaded, data, folder, callback) -> StudioTrainer:
    """The Trainer for one segment of the run, its checkpoints in the run folder."""
    from qlora_studio.core.data.pipeline import make_collator

    with trainer_environment(config, folder.path if folder else None):  # where TensorBoard writes
        trainer = StudioTrainer(
            model=loaded.model,
            args=training_arguments(config, loaded.device, loaded.compute_dtype,
                                    str(folder.checkpoints_dir) if folder else os.devnull, has_eval=data.eval is not None),
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=make_collator(loaded.tokenizer, 8 if loaded.device.type == "cuda" else None),
            processing_class=loaded.tokenizer,
            callbacks=[callback],
        )
    trainer.remove_callback(PrinterCallback)  # progress is ours to show
    trainer.log_extras = callback.log_extras  # real tokens/s and VRAM into every report_to stream
    return trainer
