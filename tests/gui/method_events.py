"""Synthetic events of preference and GRPO runs, built from core's event dataclasses: what the
Monitor receives from a DPO or GRPO run, without training one."""

from __future__ import annotations

import math

from qlora_studio.core.config import RunConfig
from qlora_studio.core.model.quantization import QuantizationReport
from qlora_studio.core.runs import events as ev


def method_values(method: str, step: int) -> dict[str, float]:
    """The method's curves at `step`, by TRL's names (as core's meter passes them on)."""
    t = step / 10
    if method in ("dpo", "orpo", "kto"):
        values = {"rewards/chosen": 0.1 * t, "rewards/rejected": -0.05 * t, "rewards/margins": 0.15 * t,
                  "logps/chosen": -40 + t, "logps/rejected": -45 - t}
        if method != "kto":
            values["rewards/accuracies"] = min(1.0, 0.5 + 0.05 * t)
        if method == "orpo":
            values["nll_loss"] = 2.0 / (1 + t)
        if method == "kto":
            values["kl"] = 0.01 * t
        return values
    if method == "grpo":
        return {"reward": 0.2 + 0.05 * t, "reward_std": 0.3, "kl": 0.001 * t, "completions/mean_length": 100 - t,
                "rewards/exact_match/mean": 0.1 * t % 1, "rewards/format/mean": 0.5 + 0.02 * t, "entropy": 1.0}
    return {}


def config_dict(method: str) -> dict:
    overrides = {"train.method": method}
    if method == "grpo":
        overrides["train.grpo.rewards"] = [{"preset": "exact_match"}, {"preset": "format"}]
    return RunConfig().with_overrides(overrides).model_dump(mode="json")


def run_started(method: str, run_dir: str = "/runs/method", total_steps: int = 100) -> ev.RunStarted:
    return ev.RunStarted(run_dir=run_dir, config=config_dict(method), total_steps=total_steps, start_step=0,
                         device="cpu", device_name="CPU", train_rows=64, eval_rows=0, trainable_params=1,
                         total_params=2, quantization=QuantizationReport("4bit", "nf4", True, "float32"))


def step_logged(method: str, step: int, total_steps: int = 100) -> ev.StepLogged:
    metrics = ev.StepMetrics(step=step, epoch=step / total_steps, loss=1.0 + math.exp(-step / 20),
                             learning_rate=1e-4, grad_norm=1.0, tokens=step * 512, tokens_per_s=900.0,
                             elapsed_s=step * 0.5, micro_batch_size=4, grad_accum=1,
                             method=method_values(method, step))
    return ev.StepLogged(metrics, total_steps)


def feed_run(monitor, method: str, steps: int = 30) -> None:
    """A run of `method` through the Monitor's event handler, drawn at the end."""
    monitor.begin_live(f"{method} run")
    monitor.handle_event(run_started(method, total_steps=max(steps, 1)))
    with monitor.batch():
        for step in range(1, steps + 1):
            monitor.handle_event(step_logged(method, step, total_steps=max(steps, 1)))
    monitor.board.flush()


def record_run(root, method: str, steps: int = 20):
    """A finished run folder of `method`, written by core's recorder from the same events."""
    from qlora_studio.core.runs.recorder import RunRecorder
    from qlora_studio.core.runs.store import RunFolder

    config = RunConfig.model_validate(config_dict(method)).with_overrides(
        {"output_dir": str(root), "run_name": f"{method}-run"})
    folder = RunFolder.create(config)
    record = RunRecorder(folder)
    record(run_started(method, str(folder.path), steps))
    for step in range(1, steps + 1):
        record(step_logged(method, step, steps))
    record(ev.Finished("finished", steps, steps, 1.0, None, str(folder.path), steps * 0.5))
    return folder.path
