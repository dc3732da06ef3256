"""transformers' Trainer with what a run adds to it; made in one place (`build_trainer`)."""

from __future__ import annotations

import os

from transformers import PrinterCallback, Trainer

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.training.arguments import training_arguments


class StudioTrainer(Trainer):
    """The Trainer a run uses: the place for batching and logging that differ from the stock one."""

    # This optimizer step's loss (summed over micro-batches) and gradient norm before clipping, as
    # the loop computes them anyway, for the NaN guard to judge before the update (training.guard).
    step_loss = None
    step_grad_norm = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_loss = loss if self.step_loss is None else self.step_loss + loss
        return loss

    def _get_grad_norm(self, model, grad_norm=None):  # the loop's norm, kept (no second pass over the gradients)
        self.step_grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        return self.step_grad_norm


def build_trainer(config: RunConfig, loaded, data, folder, callback) -> StudioTrainer:
    """The Trainer for one segment of the run, its checkpoints in the run folder."""
    from qlora_studio.core.data.pipeline import make_collator

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
    return trainer
