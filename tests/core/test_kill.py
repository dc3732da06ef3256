"""kill -9 at several moments of a run, then resume: every step is logged once and the losses are
those of a run that was never interrupted.

Each attempt trains in a forked child that sends itself SIGKILL at a chosen moment (a process
killed by SIGKILL runs no cleanup, whoever sends the signal); forking from the test process costs
no new interpreter start. Children and the uninterrupted reference use one CPU thread each, so
their floating-point sums are the same.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from qlora_studio.core.runs.store import RunFolder

STEPS, SAVE_EVERY = 12, 5


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_while_writing_metrics_of(step: int) -> None:
    """Half of the metrics line of `step` reaches the file, then the process dies."""
    from qlora_studio.core.runs.store import RunFolder

    real = RunFolder.append_jsonl

    def append(self, path, record):
        if path == self.metrics_path and record.get("step") == step:
            line = json.dumps(record)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line[: len(line) // 2])
            _die()
        real(self, path, record)

    RunFolder.append_jsonl = append


def _kill_inside_the_trainers_save() -> None:
    """The Trainer has written the adapter of the checkpoint and half of its optimizer state."""
    from transformers import Trainer

    def save_optimizer_and_scheduler(self, output_dir):
        Path(output_dir, "optimizer.pt").write_bytes(b"PK\x03\x04 half an optimizer")
        _die()

    Trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler


def _kill_before_adopting() -> None:
    """The Trainer's checkpoint folder is complete with our counters, but not yet renamed step-N."""
    from qlora_studio.core.runs import checkpoints

    checkpoints.replace_dir = lambda staging, target: _die()


def _kill_while_saving_the_adapter() -> None:
    """All steps and their checkpoints are done; the final adapter is half written."""
    from qlora_studio.core.training import loading

    loading.replace_dir = lambda staging, target: _die()


def _train(config_json: str | None, run_dir: str | None, kill: str | None) -> None:
    import torch

    torch.set_num_threads(1)
    if kill:
        name, _, arg = kill.partition(":")
        hooks = {"metrics": lambda: _kill_while_writing_metrics_of(int(arg)), "save": _kill_inside_the_trainers_save,
                 "adopt": _kill_before_adopting, "adapter": _kill_while_saving_the_adapter}
        hooks[name]()
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training

    config = RunConfig.model_validate_json(config_json) if config_json else None
    result = run_training(config, resume_from=run_dir)
    os._exit(0 if result.status == "finished" else 3)


def in_child(config=None, run_dir=None, kill: str | None = None) -> int:
    process = multiprocessing.get_context("fork").Process(
        target=_train, args=(config.model_dump_json() if config else None, str(run_dir) if run_dir else None, kill))
    process.start()
    process.join(timeout=300)
    if process.is_alive():
        process.kill()
        pytest.fail(f"the training child hung (kill point {kill})")
    return process.exitcode


def run_dir_of(output: Path) -> Path:
    (run,) = [p for p in output.iterdir() if p.is_dir()]
    return run


def valid_json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]  # raises on a torn line


@pytest.mark.timeout(900)
def test_killed_at_several_moments_resumes_to_the_same_losses(tiny_config, tmp_path):
    config = tiny_config.with_overrides({"train.max_steps": STEPS, "train.save_every_steps": SAVE_EVERY,
                                         "lora.dropout": 0.0, "data.validation_split": 0.0})
    straight = config.with_overrides({"output_dir": str(tmp_path / "straight")})
    assert in_child(straight) == 0
    reference = [m["loss"] for m in RunFolder(run_dir_of(tmp_path / "straight")).read_metrics()]
    assert len(reference) == STEPS

    killed = config.with_overrides({"output_dir": str(tmp_path / "killed")})
    assert in_child(killed, kill="metrics:7") == -signal.SIGKILL
    run = RunFolder(run_dir_of(tmp_path / "killed"))
    assert not run.metrics_path.read_text().endswith("\n")  # died mid-line
    assert [m["step"] for m in run.read_metrics()] == [1, 2, 3, 4, 5, 6]
    assert run.read_status()["status"] == "running" and run.effective_status() == "interrupted"

    assert in_child(run_dir=run.path, kill="save") == -signal.SIGKILL
    assert (run.checkpoints_dir / "checkpoint-10").is_dir()  # died inside the Trainer's save
    assert run.latest_checkpoint().name == "step-000005"

    assert in_child(run_dir=run.path, kill="adopt") == -signal.SIGKILL
    assert (run.checkpoints_dir / "checkpoint-10" / "qlora_studio.json").is_file()  # complete, never adopted
    assert run.latest_checkpoint().name == "step-000005"

    assert in_child(run_dir=run.path, kill="adapter") == -signal.SIGKILL
    assert [step for step, _ in run.checkpoints()] == [5, 10, 12] and not run.adapter_dir.exists()

    assert in_child(run_dir=run.path) == 0
    assert run.read_status()["status"] == "finished"
    metrics = valid_json_lines(run.metrics_path)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # each step logged once
    assert [m["loss"] for m in metrics] == pytest.approx(reference, rel=1e-6)
    events = valid_json_lines(run.events_path)
    assert [e["type"] for e in events].count("run_started") == 5 and events[-1]["type"] == "finished"
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()
    leftovers = [p.name for p in run.path.rglob("*") if ".tmp" in p.name or p.name.startswith(("checkpoint-", ".trash"))]
    assert leftovers == []
