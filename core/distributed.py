"""Several processes on one machine: data-parallel (DDP) or sharded (FSDP-QLoRA) training.

`launch` makes the run folder, then starts one worker per GPU (or per CPU process, with gloo)
through torch's elastic launcher; each worker is `run_training` on that folder, so metrics,
checkpoints and resume are those of a single-process run (rank 0 writes them; the Trainer,
through accelerate, wraps the model in DDP or FSDP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from qlora_studio.core.config import RunConfig
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


def launch(config: RunConfig, resume: str | None = None, json_events: bool = False) -> int:
    """Start `distributed.num_processes` workers on one run folder and wait for them."""
    from qlora_studio.core.control import ControlFile
    from qlora_studio.core.config import absolute_paths
    from qlora_studio.core.runs import RunFolder

    gpus = check_processes(config)
    if resume:
        folder = RunFolder.open(resume)
        config.save(folder.config_path)
    else:
        config = absolute_paths(config)
        folder = RunFolder.create(config)
    ControlFile(folder.path).clear()  # a stale stop request must not end the new run
    command = worker_command(folder.path, config.distributed.num_processes, json_events)
    env = dict(os.environ)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // config.distributed.num_processes)))
    print(f"run folder  {folder.path}\nprocesses   {config.distributed.num_processes} "
          f"({'GPUs ' + ','.join(map(str, gpus)) if gpus is not None else 'CPU, gloo'})", file=sys.stderr, flush=True)
    return subprocess.run(command, env=env).returncode


def worker_command(run_dir: Path, processes: int, json_events: bool = False) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "qlora_studio.core.cli", "_worker", str(run_dir)]
    return command + (["--json-events"] if json_events else [])


def run_worker(run_dir: str, json_events: bool = False) -> int:
    """One rank of a launched run: train on the shared run folder; rank 0 reports and obeys control.json."""
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()  # before the imports below pull in transformers and bitsandbytes
    from qlora_studio.core.cli import EXIT_FAILED, EXIT_OUT_OF_MEMORY, EXIT_USER_ERROR, JsonEventPrinter, ProgressPrinter
    from qlora_studio.core.control import ControlFile, TrainControl
    from qlora_studio.core.runner import run_training

    rank = int(os.environ.get("RANK", "0"))
    control = TrainControl()
    done = ControlFile(run_dir).follow(control) if rank == 0 else None
    sink = (JsonEventPrinter() if json_events else ProgressPrinter()) if rank == 0 else None
    try:
        result = run_training(None, sink, control, resume_from=run_dir)
    finally:
        if done is not None:
            done.set()
    ranks = Path(run_dir) / "ranks"
    ranks.mkdir(exist_ok=True)
    (ranks / f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank, "status": result.status, "step": result.step, "adapter_digest": result.adapter_digest,
        "error": result.error,
    }), encoding="utf-8")
    if result.status == "failed":
        return EXIT_USER_ERROR if result.user_error else EXIT_FAILED
    return EXIT_OUT_OF_MEMORY if result.error else 0
