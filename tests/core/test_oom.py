"""Out-of-memory survival on CPU, with CUDA's out-of-memory error injected into training steps."""

import pytest
import torch
from transformers import Trainer

from qlora_studio.core.training.control import TrainControl
from qlora_studio.core.training.runner import run_training
from qlora_studio.core.runs.store import RunFolder


def inject_oom(monkeypatch, when):
    """Raise CUDA's OOM error from a training step whenever `when(trainer, inputs)` is true."""
    original = Trainer.training_step
    fired = []

    def flaky(self, model, inputs, num_items_in_batch=None):
        if when(self, inputs, fired):
            fired.append(self.state.global_step)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return original(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(Trainer, "training_step", flaky)
    return fired


def events_of(run):
    events = []
    return events, lambda e: events.append(e.to_dict())


def test_oom_halves_micro_batch_and_keeps_the_effective_batch(monkeypatch, tiny_config):
    config = tiny_config.with_overrides({"train.micro_batch_size": 8, "train.grad_accum": 1, "train.max_steps": 5,
                                         "lora.dropout": 0.0, "data.packing": "off"})
    reference = run_training(config.with_overrides({"train.micro_batch_size": 2, "train.grad_accum": 4,
                                                    "run_name": "reference"}))
    fired = inject_oom(monkeypatch, lambda trainer, inputs, fired: inputs["input_ids"].shape[0] > 2)
    events = []
    result = run_training(config, lambda e: events.append(e.to_dict()))
    assert result.status == "finished", result.error
    assert fired == [0, 0]  # micro-batch 8, then 4, failed in the first step
    changes = [e for e in events if e["type"] == "settings_changed"]
    assert [c["changes"]["micro_batch_size"] for c in changes] == [[8, 4], [4, 2]]
    assert [c["changes"]["grad_accum"] for c in changes] == [[1, 2], [2, 4]]
    assert "effective batch (8)" in changes[0]["message"]
    metrics = RunFolder(result.run_dir).read_metrics()
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert {m["micro_batch_size"] * m["grad_accum"] for m in metrics} == {8}
    # same data, same schedule: the recovered run equals one that started at micro-batch 2
    expected = [m["loss"] for m in RunFolder(reference.run_dir).read_metrics()]
    assert [m["loss"] for m in metrics] == pytest.approx(expected, rel=1e-4)
    saved = RunFolder(result.run_dir).load_config()
    assert (saved.train.micro_batch_size, saved.train.grad_accum) == (2, 4)  # a resume keeps what fits


def test_oom_with_packing_halves_the_token_budget(monkeypatch, tiny_config):
    """Packed micro-batches are cut by tokens: the budget halves and grad_accum doubles, so each
    optimizer step still trains on about as many tokens; at one max_length row it asks."""
    config = tiny_config.with_overrides({"train.micro_batch_size": 4, "train.grad_accum": 1, "train.max_steps": 3})
    fired = inject_oom(monkeypatch, lambda trainer, inputs, fired: inputs["input_ids"].shape[1] > 256)
    events = []
    result = run_training(config, lambda e: events.append(e.to_dict()))
    assert result.status == "finished", result.error
    assert fired == [0]
    change = next(e for e in events if e["type"] == "settings_changed")
    assert change["changes"] == {"tokens_per_batch": [None, 256], "grad_accum": [1, 2]}
    assert "halved train.tokens_per_batch to 256" in change["message"]
    metrics = RunFolder(result.run_dir).read_metrics()
    assert {m["tokens_per_batch"] for m in metrics} == {256} and {m["grad_accum"] for m in metrics} == {2}
    from qlora_studio.core.training import oom

    smallest = config.with_overrides({"train.tokens_per_batch": 128})
    assert isinstance(oom.after_out_of_memory(smallest, 1, packed=True), oom.Ask)
    offload = oom.after_out_of_memory(smallest, 1, answer="shrink", packed=True)
    assert offload.changes == {"offload_checkpoints": ["auto", "on"]}  # before any cut of max_length
    cut = oom.after_out_of_memory(smallest, 1, answer="shrink", packed=True, offloaded=True)
    assert cut.changes == {"tokens_per_batch": [128, 64], "max_length": [128, 64]}


def test_oom_mid_run_redoes_the_failed_step_from_a_checkpoint(monkeypatch, tiny_config):
    config = tiny_config.with_overrides({"train.micro_batch_size": 4, "train.grad_accum": 2, "train.max_steps": 6,
                                         "train.save_every_steps": 100})
    fired = inject_oom(monkeypatch, lambda trainer, inputs, fired: trainer.state.global_step == 3 and not fired)
    events = []
    result = run_training(config, lambda e: events.append(e.to_dict()))
    assert result.status == "finished" and fired == [3]
    run = RunFolder(result.run_dir)
    assert [m["step"] for m in run.read_metrics()] == [1, 2, 3, 4, 5, 6]  # step 4 once, after the retry
    checkpoints = [(e["step"], e["reason"]) for e in events if e["type"] == "checkpoint"]
    assert (3, "out of memory") in checkpoints
    change = next(e for e in events if e["type"] == "settings_changed")
    assert change["step"] == 3 and "step 4" in change["message"]


def test_oom_at_micro_batch_one_stops_with_a_checkpoint(monkeypatch, tiny_config):
    config = tiny_config.with_overrides({"train.micro_batch_size": 1, "train.grad_accum": 4, "train.max_steps": 6,
                                         "train.offload_checkpoints": "off", "data.packing": "off"})
    inject_oom(monkeypatch, lambda trainer, inputs, fired: trainer.state.global_step == 2)
    result = run_training(config)
    assert result.status == "stopped"
    assert "data.max_length 128 is too long for this GPU at micro-batch 1" in result.error
    assert "--oom-shrink" in result.error and "step 2) is saved" in result.error
    run = RunFolder(result.run_dir)
    assert run.latest_checkpoint().name == "step-000002"
    assert run.read_status()["status"] == "stopped"
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()


def test_oom_at_micro_batch_one_asks_then_shrinks(monkeypatch, tiny_config):
    config = tiny_config.with_overrides({"train.micro_batch_size": 1, "train.grad_accum": 2, "train.max_steps": 4,
                                         "train.gradient_checkpointing": False, "train.offload_checkpoints": "off",
                                         "data.packing": "off"})
    inject_oom(monkeypatch, lambda trainer, inputs, fired: len(fired) < 2 and trainer.state.global_step == 1)
    control = TrainControl()
    questions = []
    control.asker = lambda question, options: questions.append((question, options)) or "shrink"
    events = []
    result = run_training(config, lambda e: events.append(e.to_dict()), control)
    assert result.status == "finished", result.error
    assert len(questions) == 2 and questions[0][1] == ["shrink", "stop"]
    assert "turn on gradient checkpointing" in questions[0][0]
    changes = [e["changes"] for e in events if e["type"] == "settings_changed"]
    assert changes == [{"gradient_checkpointing": [False, True]}, {"max_length": [128, 64]}]


def test_on_oom_stop(monkeypatch, tiny_config):
    config = tiny_config.with_overrides({"train.on_oom": "stop"})
    inject_oom(monkeypatch, lambda trainer, inputs, fired: trainer.state.global_step == 1)
    result = run_training(config)
    assert result.status == "stopped" and "train.on_oom is stop" in result.error


def test_packed_policy_halves_the_budget_down_to_one_row_before_the_last_resort(tiny_config):
    """The GPU test's case as a pure decision: packed, micro_batch_size 64 x max_length 256, gradient
    checkpointing off. Every cut halves the token budget (never micro_batch_size, which a packed
    micro-batch does not use) until one max_length row is left; only then the last resort."""
    from qlora_studio.core.training import oom

    config = tiny_config.with_overrides({"data.max_length": 256, "train.micro_batch_size": 64, "train.grad_accum": 1,
                                         "train.gradient_checkpointing": False})
    budgets = []
    decision = oom.after_out_of_memory(config, 1, packed=True)
    while isinstance(decision, oom.Adapt):
        assert set(decision.changes) == {"tokens_per_batch", "grad_accum"}
        config = decision.config
        budgets.append(config.train.tokens_per_batch * config.train.grad_accum)
        decision = oom.after_out_of_memory(config, 1, packed=True)
    assert config.train.tokens_per_batch == 256 and budgets == [64 * 256] * 6
    assert isinstance(decision, oom.Ask) and "turn on gradient checkpointing" in decision.question
    shrink = oom.after_out_of_memory(config, 1, answer="shrink", packed=True)
    assert shrink.changes == {"gradient_checkpointing": [False, True]}
