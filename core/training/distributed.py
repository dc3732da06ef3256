"""Several processes on one machine: data-parallel (DDP) or sharded (FSDP-QLoRA) training.

`run_training` hands a config with distributed.num_processes > 1 to `training.supervisor`, which
makes the run folder and starts one worker per GPU (or per CPU process, with gloo) through
torch's elastic launcher. Each worker is `run_training` on that folder, so metrics, checkpoints
and resume are those of a single-process run (rank 0 writes them; the Trainer, through
accelerate, wraps the model in DDP or FSDP). This module checks the processes asked for.
"""

from __future__ import annotations

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import UserError


def check_processes(config: RunConfig) -> list[int] | None:
    """The GPU indices the run will use (None on CPU); a clear error when there are too few."""
    import torch

    n = config.distributed.num_processes
    gpus = config.distributed.gpus
    if config.train.device == "cpu" or not torch.cuda.is_available():
        if config.train.device == "cuda":
            raise UserError("train.device is cuda, but no CUDA GPU is visible")
        if config.distributed.strategy == "fsdp":
            raise UserError("distributed.strategy fsdp needs GPUs; use ddp on CPU")
        return None
    available = torch.cuda.device_count()
    chosen = gpus if gpus is not None else list(range(n))
    if len(chosen) != n:
        raise UserError(f"distributed.gpus lists {len(chosen)} GPUs for {n} processes; give one GPU per process")
    missing = [g for g in chosen if g >= available]
    if missing:
        raise UserError(f"distributed.gpus: GPU {missing[0]} does not exist; this machine has {available} "
                        f"(0-{available - 1})")
    return chosen
