"""Several processes on CPU (gloo): both ranks train in step, rank 0 writes the run, control reaches all."""

import json
import threading
import time

import torch
import yaml

from qlora_studio.core.cli import main
from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.control import ControlFile
from qlora_studio.core.training.arguments import training_arguments
from qlora_studio.core.runs.store import RunFolder


def write_config(tmp_path, tiny_config, **train):
    data = tiny_config.model_dump(mode="json")
    data["train"].update(train)
    data["run_name"] = "ddp"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def train_command(tmp_path, tiny_config, **train) -> list[str]:
    """`train --processes 2`, run by the CLI's main() in this process: the ranks are worker processes
    either way, and test_cli.py starts the real entry point once."""
    return ["train", str(write_config(tmp_path, tiny_config, **train)), "--processes", "2", "--json-events"]


def ranks(run):
    return [json.loads((run.path / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]


def test_two_processes_train_the_same_adapter(tmp_path, tiny_config, capsys):
    code = main(train_command(tmp_path, tiny_config, max_steps=6, micro_batch_size=2, grad_accum=2, save_every_steps=3))
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    run = RunFolder(tmp_path / "runs" / "ddp")
    rank0, rank1 = ranks(run)
    assert rank0["status"] == rank1["status"] == "finished" and rank0["step"] == rank1["step"] == 6
    assert rank0["adapter_digest"] == rank1["adapter_digest"]  # DDP kept the replicas identical
    assert run.load_config().distributed.num_processes == 2
    assert [m["step"] for m in run.read_metrics()] == list(range(1, 7))  # rank 0 alone writes metrics
    steps = [json.loads(line)["metrics"]["step"] for line in out.splitlines() if '"type": "step"' in line]
    assert steps == list(range(1, 7))
    assert [s for s, _ in run.checkpoints()] == [3, 6]
    # tokens from both ranks are counted
    started = json.loads(next(line for line in out.splitlines() if '"type": "run_started"' in line))
    assert started["train_rows"] == 380


def wait_for(predicate, timeout=300.0):
    """Poll a state (a file the run writes) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.1)


def test_pause_save_and_stop_reach_every_rank(tmp_path, tiny_config, capsys):
    command = train_command(tmp_path, tiny_config, max_steps=400, micro_batch_size=2, grad_accum=1, save_every_steps=1000)
    done = {}
    cli = threading.Thread(target=lambda: done.update(code=main(command)), daemon=True)
    cli.start()  # steered through the run folder's control file only, as from another process
    run = RunFolder(tmp_path / "runs" / "ddp")
    control = ControlFile(run.path)
    wait_for(lambda: len(run.read_metrics()) >= 3)
    control.pause()
    wait_for(lambda: run.read_status().get("paused") is True)  # rank 0 holds between steps
    held = run.read_status()["step"]
    control.save()  # served while paused, by every rank, at the held step
    wait_for(lambda: run.latest_checkpoint() is not None)
    assert run.latest_checkpoint().name == f"step-{held:06d}"
    control.stop()  # a stop while paused runs no further step
    cli.join(timeout=300)
    assert done.get("code") == 0, capsys.readouterr().err[-3000:]
    rank0, rank1 = ranks(run)
    assert rank0["status"] == rank1["status"] == "stopped"
    assert rank0["step"] == rank1["step"] == held < 400
    assert rank0["adapter_digest"] == rank1["adapter_digest"]
    assert [m["step"] for m in run.read_metrics()] == list(range(1, held + 1))


def test_fsdp_arguments(tiny_config):
    config = tiny_config.with_overrides({"distributed.strategy": "fsdp", "distributed.num_processes": 2})
    args = training_arguments(config, torch.device("cpu"), torch.float32, "/tmp/x", has_eval=False)
    assert args.fsdp and args.fsdp_config["cpu_ram_efficient_loading"] and args.fsdp_config["version"] == 1
    assert args.fsdp_config["activation_checkpointing"] is True
    assert not args.activation_checkpointing  # FSDP checkpoints itself; the Trainer flag would all-gather twice


def test_fsdp_needs_gpus(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the message of a machine without GPUs
    data = tiny_config.model_dump(mode="json")
    data["distributed"] = {"strategy": "fsdp"}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path), "--processes", "2"]) == 2
    assert "fsdp needs GPUs" in capsys.readouterr().err


def test_run_training_hands_several_processes_to_workers(tiny_config):
    """The in-process API (what the window calls): events stream back, TrainControl reaches rank 0."""
    from qlora_studio.core.training.control import TrainControl
    from qlora_studio.core.training.runner import run_training

    config = tiny_config.with_overrides({"distributed.num_processes": 2, "train.max_steps": 400,
                                         "train.micro_batch_size": 2, "train.grad_accum": 1,
                                         "train.save_every_steps": 1000, "run_name": "api"})
    control = TrainControl()
    events = []

    def emit(event):
        events.append(event)
        if isinstance(event, ev.StepLogged) and event.metrics.step == 3:
            control.request_stop()

    result = run_training(config, emit, control)
    assert result.status == "stopped" and 3 <= result.step < 400
    steps = [e.metrics.step for e in events if isinstance(e, ev.StepLogged)]
    assert steps == list(range(1, result.step + 1))
    started = [e for e in events if not isinstance(e, ev.Preparing)]  # the stages before step 1 come first
    assert isinstance(started[0], ev.RunStarted) and isinstance(events[-1], ev.Finished)
    run = RunFolder(result.run_dir)
    rank0, rank1 = ranks(run)
    assert rank0["adapter_digest"] == rank1["adapter_digest"] == result.adapter_digest
    assert run.latest_checkpoint().name == f"step-{result.step:06d}"
