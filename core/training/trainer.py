"""transformers' Trainer with what a run adds to it; made in one place (`build_trainer`)."""

from __future__ import annotations

import os

from transformers import Trainer

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.training.arguments import training_arguments
from qlora_studio.core.training.host_pace import LeanLoopWalks
from qlora_studio.core.training.reporting import ReportingMixin, trainer_environment
from qlora_studio.core.training.step_logs import LaggedStepLogs, StepTotals, with_run_hooks


class StudioTrainer(LaggedStepLogs, ReportingMixin, StepTotals, LeanLoopWalks, Trainer):
    """The Trainer a run uses: the place for batching and logging that differ from the stock one
    (step logs read a step late: training/step_logs.py).

    `tokens_per_batch` (packed runs): training micro-batches come from a TokenBudgetBatchSampler
    instead of rows in fixed-size groups. `chunked_loss`: the training loss never holds the full
    logits (training/lean_loss.py).
    """

    def __init__(self, *args, tokens_per_batch: int | None = None, chunked_loss: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_per_batch = tokens_per_batch
        self.chunked_loss = chunked_loss
        self.batch_sampler = None

    def get_train_dataloader(self):
        """Packed: Trainer passes only its own BatchRebalanceSampler as a batch sampler, so the
        DataLoader is made here, through accelerator.prepare as Trainer makes its own. With one
        process our sampler is used as it is; with several, accelerate deals its micro-batches
        round-robin (the plan is split to a multiple of the process count). Epochs reach the sampler
        through DataLoaderShard.set_epoch; a resume skips into the same (seed, epoch) order."""
        if not self.tokens_per_batch:
            return super().get_train_dataloader()
        from functools import partial

        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        from qlora_studio.core.data.packing import TokenBudgetBatchSampler, row_lengths

        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        args = self.args
        self.batch_sampler = TokenBudgetBatchSampler(
            row_lengths(self.train_dataset), self.tokens_per_batch,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            shuffle=args.train_sampling_strategy != "sequential", batches_multiple_of=max(1, args.world_size))
        params = {
            "batch_sampler": self.batch_sampler,
            "collate_fn": self.data_collator,
            "num_workers": args.dataloader_num_workers,
            "pin_memory": args.dataloader_pin_memory,
            "persistent_workers": args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            "worker_init_fn": partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        }
        if args.dataloader_num_workers > 0 and args.dataloader_prefetch_factor is not None:
            params["prefetch_factor"] = args.dataloader_prefetch_factor
        return self.accelerator.prepare(DataLoader(self.train_dataset, **params))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Chunked: the same sum over trained tokens / num_items_in_batch as the model's own loss,
        scaled across processes as Trainer.compute_loss does; evaluation keeps the model's loss."""
        if not self.chunked_loss or return_outputs or not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from qlora_studio.core.training.lean_loss import lean_causal_lm_loss

        loss = lean_causal_lm_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return loss



def build_trainer(config: RunConfig, loaded, data, folder, callback, plan=None) -> StudioTrainer:
    """The Trainer for one segment of the run, its checkpoints in the run folder; `plan` is the
    run's SpeedPlan (packing, loss, offload), None for a plain padded run. Methods past SFT train
    with TRL's trainers (training/methods.py)."""
    if config.train.method != "sft":
        from qlora_studio.core.training.methods import build_method_trainer

        return build_method_trainer(config, loaded, data, folder, callback, plan)
    from qlora_studio.core.data.packing import PackedCollator, tokens_per_batch
    from qlora_studio.core.data.pipeline import make_collator

    packed = plan is not None and plan.packed
    with trainer_environment(config, folder.path if folder else None):  # where TensorBoard writes
        trainer = StudioTrainer(
            model=loaded.model,
            args=training_arguments(config, loaded.device, loaded.compute_dtype,
                                    str(folder.checkpoints_dir) if folder else os.devnull, has_eval=data.eval is not None,
                                    plan=plan),
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=(PackedCollator(flash_kwargs=plan.flash_kwargs) if packed
                           else make_collator(loaded.tokenizer, 8 if loaded.device.type == "cuda" else None)),
            processing_class=loaded.tokenizer,
            callbacks=[callback],
            tokens_per_batch=tokens_per_batch(config.train, config.data) if packed else None,
            chunked_loss=plan is not None and plan.assumptions.loss == "chunked",
        )
    lag = trainer.args.world_size == 1 and not (plan is not None and config.train.experimental.sync_logs)
    return with_run_hooks(trainer, callback, config, lag_logs=lag)
