"""A step's numbers are read a step late (no device sync per step), yet every log, checkpoint and
NaN verdict holds exactly what the synchronous loop gives."""

import json
import math

import pytest
from faults import poison_loss

from qlora_studio.core.errors import FailureCause
from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.runner import run_training
from qlora_studio.core.training.step_logs import LaggedStepLogs
from qlora_studio.core.runs.store import RunFolder


def _watch_reads(monkeypatch) -> list[tuple[int, int]]:
    """(logged step, the Trainer's step when its numbers were read) for every step log."""
    reads = []
    real = LaggedStepLogs._emit

    def emit(self, record):
        if record is not None:
            reads.append((record.step, self.state.global_step))
        return real(self, record)

    monkeypatch.setattr(LaggedStepLogs, "_emit", emit)
    return reads


def _synchronous(monkeypatch) -> None:
    from qlora_studio.core.training import trainer as trainer_module

    real = trainer_module.build_trainer

    def build(*args, **kwargs):
        built = real(*args, **kwargs)
        built.lag_logs = False
        return built

    monkeypatch.setattr("qlora_studio.core.training.runner.build_trainer", build)


def _record(result):
    run = RunFolder(result.run_dir)
    keys = ("step", "epoch", "loss", "learning_rate", "grad_norm", "tokens")
    metrics = [{k: m[k] for k in keys} for m in run.read_metrics()]
    state = json.loads((run.latest_checkpoint() / "trainer_state.json").read_text())
    timed = ("_runtime", "_per_second", "tokens_per_s", "vram_")  # measured, so never equal twice
    history = [{k: v for k, v in h.items() if not any(t in k for t in timed)} for h in state["log_history"]]
    return metrics, history, state["num_input_tokens_seen"]


@pytest.mark.parametrize("packing", ["on", "off"])  # tokens counted on the host (packed) or the device (padded)
def test_lagged_logs_match_the_synchronous_loop(tiny_config, monkeypatch, packing):
    config = tiny_config.with_overrides({"train.max_steps": 9, "train.save_every_steps": 4, "data.packing": packing})
    reads = _watch_reads(monkeypatch)
    lagged = run_training(config, lambda e: None)
    assert lagged.status == "finished", lagged.error
    # steps 4 and 8 (save + evaluation) and 9 (the end) were read at their own boundary, the rest one step later
    assert reads == [(1, 2), (2, 3), (3, 4), (4, 4), (5, 6), (6, 7), (7, 8), (8, 8), (9, 9)]

    _synchronous(monkeypatch)
    reads.clear()
    synchronous = run_training(config, lambda e: None)
    assert reads == [(s, s) for s in range(1, 10)]
    a, b = _record(lagged), _record(synchronous)
    # the run folder's metrics, step by step, then the Trainer's log_history in the checkpoint
    for lagged_log, synchronous_log in [*zip(a[0], b[0], strict=True), *zip(a[1], b[1], strict=True)]:
        assert lagged_log == pytest.approx(synchronous_log, rel=1e-5), (lagged_log, synchronous_log)
    assert a[2] == b[2] == a[0][-1]["tokens"] > 0


def test_a_nan_step_between_checkpoints_stops_after_the_step_in_flight(tiny_config, monkeypatch):
    poison_loss(monkeypatch, {3})
    reads = _watch_reads(monkeypatch)
    events = []
    result = run_training(tiny_config.with_overrides({"train.save_every_steps": 100, "data.validation_split": 0}),
                          events.append)
    assert result.status == "failed" and result.cause is FailureCause.NAN
    assert result.error.startswith("the loss became NaN at step 3;")
    assert reads[-2:] == [(3, 4), (4, 4)]  # read during step 4, which ran, and was not saved
    marks = [(e.step, e.action) for e in events if isinstance(e, ev.NonFiniteStep)]
    assert marks == [(3, "stopped")]
    run = RunFolder(result.run_dir)
    losses = {m["step"]: m["loss"] for m in run.read_metrics()}
    assert list(losses) == [1, 2, 3, 4] and math.isnan(losses[3]) and math.isfinite(losses[4])
    assert run.checkpoints() == []
