"""Several processes on one machine: data-parallel (DDP) or sharded (FSDP-QLoRA) training.

`run_training` hands a config with distributed.num_processes > 1 to `run_distributed`, which
makes the run folder and starts one worker per GPU (or per CPU process, with gloo) through
torch's elastic launcher. Each worker is `run_training` on that folder, so metrics, checkpoints
and resume are those of a single-process run (rank 0 writes them; the Trainer, through
accelerate, wraps the model in DDP or FSDP).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from qlora_studio.core.config.files import absolute_paths
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import FailureCause, UserError
from qlora_studio.core.training import events as ev
from qlora_studio.core.training.control import ControlFile
from qlora_studio.core.training.store import RunFolder


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


def run_distributed(config: RunConfig | None, emit, control, resume_from=None):
    """`run_training` for distributed.num_processes > 1: the same events, control and result.

    The workers run in child processes; rank 0 prints its events as JSON lines, which come back
    here as events, and this process's `control` reaches the workers through control.json.
    """
    emit = emit or (lambda event: None)
    try:
        if resume_from is not None:
            folder = RunFolder.open(resume_from)
            config = config or folder.load_config()
            config.save(folder.config_path)
        else:
            config = absolute_paths(config)
        gpus = check_processes(config)
        if resume_from is None:
            folder = RunFolder.create(config)
    except UserError as exc:
        emit(ev.Failed(str(exc), "", None, None, exc.cause))
        return ev.RunResult("failed", None, 0, None, None, error=str(exc), cause=exc.cause)
    files = ControlFile(folder.path)
    files.clear()  # a stale request must not steer the new run
    env = dict(os.environ)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // config.distributed.num_processes)))
    # A session of their own: Ctrl+C in a terminal reaches this process, which asks rank 0 to stop
    # after a checkpoint, instead of the launcher killing the workers mid-step.
    process = subprocess.Popen(worker_command(folder.path, config.distributed.num_processes),
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                               start_new_session=True)
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
    drain.start()
    done = threading.Event()
    bridge = threading.Thread(target=_forward_control, args=(control, files, done), daemon=True)
    bridge.start()
    last = None
    started = False
    try:
        for line in process.stdout:
            if not line.startswith("{"):
                continue
            try:
                event = ev.event_from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(event, (ev.Finished, ev.Failed)):
                last = event
            started = started or isinstance(event, ev.RunStarted)
            emit(event)
        code = process.wait()
    except BaseException:  # a second Ctrl+C, or the caller going away: take the workers down too
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise
    finally:
        done.set()
    drain.join(timeout=5)
    digest = _rank_digest(folder.path)
    if isinstance(last, ev.Finished):
        return ev.RunResult(last.status, str(folder.path), last.step, last.final_loss, last.adapter_dir,
                            adapter_digest=digest)
    if isinstance(last, ev.Failed) and not started and resume_from is None:
        shutil.rmtree(folder.path, ignore_errors=True)  # it never trained: no run folder to leave behind
        return ev.RunResult(last.status, None, 0, None, None, error=last.reason, cause=last.cause, details=last.details)
    if isinstance(last, ev.Failed):
        return ev.RunResult(last.status, str(folder.path), last.step or 0, None, None, error=last.reason,
                            cause=last.cause, details=last.details)
    reason = _rank_failure(folder.path) or f"the worker processes ended with exit code {code} before reporting"
    details = "".join(errors[-60:])
    emit(ev.Failed(reason, details, str(folder.path), None, FailureCause.CRASH))
    return ev.RunResult("failed", str(folder.path), 0, None, None, error=reason, cause=FailureCause.CRASH,
                        details=details)


def _forward_control(control, files, done: threading.Event) -> None:
    """This process's TrainControl -> control.json, which rank 0 follows."""
    stopped = paused = False
    while not done.wait(0.25):
        if control.stop_requested and not stopped:
            stopped = True
            files.stop()
        if control.paused != paused:
            paused = control.paused
            files.pause() if paused else files.resume()
        if control.take_save():
            files.save()
        steps = control.take_extension()
        if steps:
            files.extend(steps)


def _rank_failure(run_dir: Path) -> str | None:
    """The first error a rank recorded (a rank other than 0 has no event stream of its own)."""
    for path in sorted((Path(run_dir) / "ranks").glob("rank-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("error"):
            return f"rank {record['rank']}: {record['error']}"
    return None


def _rank_digest(run_dir: Path) -> str | None:
    try:
        return json.loads((Path(run_dir) / "ranks" / "rank-0.json").read_text(encoding="utf-8"))["adapter_digest"]
    except (OSError, ValueError, KeyError):
        return None


def worker_command(run_dir: Path, processes: int) -> list[str]:
    """torch's launcher starting one `training.worker` per process on the shared run folder."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "qlora_studio.core.training.worker", str(run_dir)]
