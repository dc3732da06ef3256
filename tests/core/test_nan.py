"""NaN / Inf is caught at the step where it happens: the run fails with cause nan, the last good
checkpoint is kept and finite, and train.on_nan skip_step drops bad batches a few times."""

import json
import math

import torch
from faults import poison_loss
from safetensors.torch import load_file

from qlora_studio.core.cli import main
from qlora_studio.core.errors import FailureCause
from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.guard import MAX_SKIPS_IN_A_ROW
from qlora_studio.core.training.runner import run_training
from qlora_studio.core.runs.store import RunFolder, read_jsonl


def test_absurd_learning_rate_fails_with_cause_nan_and_keeps_a_finite_checkpoint(tiny_config, tiny_model, tmp_path,
                                                                                   capsys):
    # 1e30: the first update is finite but enormous, so the loss of step 2 overflows to NaN
    config = tiny_config.with_overrides({"train.learning_rate": 1e30, "train.save_every_steps": 1,
                                         "train.max_steps": 6})
    path = tmp_path / "nan.yaml"
    config.save(path)
    code = main(["train", str(path)])
    err = capsys.readouterr().err
    assert code == FailureCause.NAN.exit_code == 4
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err and "resume with" not in err
    assert errors[0].startswith("error: the loss became NaN at step 2; train.learning_rate 1e+30 is far too high")
    assert "lower it" in errors[0] and "the last good checkpoint (step 1) is kept" in errors[0]

    (run_dir,) = (tmp_path / "runs").iterdir()
    run = RunFolder(run_dir)
    status = run.read_status()
    assert status["status"] == "failed" and status["cause"] == "nan" and status["step"] == 2
    assert [step for step, _ in run.checkpoints()] == [1]  # nothing was saved of the NaN step
    assert not list(run.checkpoints_dir.glob("checkpoint-*"))
    weights = load_file(run.latest_checkpoint() / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [1, 2] and math.isnan(metrics[1]["loss"])  # logged as NaN, not hidden
    marks = run.history().marks
    assert [(m.step, m.action) for m in marks] == [(2, "stopped")]

    # the checkpoint loads onto the base model like any adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(run.latest_checkpoint()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_step_drops_bad_batches_then_stops_after_three_in_a_row(tiny_config, monkeypatch):
    poison_loss(monkeypatch, {3, 6, 7, 8})
    config = tiny_config.with_overrides({"train.on_nan": "skip_step", "train.save_every_steps": 4})
    events = []
    result = run_training(config, events.append)
    marks = [e for e in events if isinstance(e, ev.NonFiniteStep)]
    assert [(m.step, m.action) for m in marks] == [(3, "skipped"), (6, "skipped"), (7, "skipped"), (8, "stopped")]
    assert "its update was skipped" in marks[0].message
    assert MAX_SKIPS_IN_A_ROW == 3 and "3 steps in a row" in result.error
    assert result.status == "failed" and result.cause is FailureCause.NAN and result.step == 8
    run = RunFolder(result.run_dir)
    # step 4 trained on after the skipped step 3 with finite weights; step 8 was never saved
    assert [step for step, _ in run.checkpoints()] == [4]
    losses = {m["step"]: m["loss"] for m in run.read_metrics()}
    assert all(math.isfinite(losses[s]) for s in (1, 2, 4, 5)) and math.isnan(losses[3])
    weights = load_file(run.latest_checkpoint() / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert [json.loads(line)["type"] for line in run.events_path.read_text().splitlines()].count("nonfinite") == 4


def test_a_checkpoint_with_nan_weights_is_never_kept(tiny_config, monkeypatch):
    """Belt and braces: whatever made the weights non-finite, the save of that step is dropped."""
    from qlora_studio.core.training import runner

    sessions = []
    real_init = runner.Session.__init__
    monkeypatch.setattr(runner.Session, "__init__", lambda self, *a: real_init(self, *a) or sessions.append(self))

    def poison_weights(event):  # runs on the training thread, between step 4's log and its save
        if isinstance(event, ev.StepLogged) and event.metrics.step == 4:
            lora = next(p for p in sessions[-1].run_context.loaded.model.parameters() if p.requires_grad)
            lora.data.fill_(float("inf"))

    result = run_training(tiny_config.with_overrides({"train.save_every_steps": 2}), poison_weights)
    assert result.status == "failed" and result.cause is FailureCause.NAN
    assert result.error.startswith("the weights became NaN/Inf by step 4")
    run = RunFolder(result.run_dir)
    assert [step for step, _ in run.checkpoints()] == [2]
    assert not list(run.checkpoints_dir.glob("checkpoint-*"))
    assert read_jsonl(run.events_path)[-1]["cause"] == "nan"


def test_the_guard_skips_a_bad_update_without_reading_the_flag_when_the_optimizer_can():
    """Fused AdamW skips the update itself (found_inf): no host read; other optimizers drop the gradients."""
    from types import SimpleNamespace

    from qlora_studio.core.training.guard import NanGuard

    for fused, kept_grads in ((True, True), (False, False)):
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.AdamW([weight], lr=0.1, fused=fused, foreach=False if not fused else None)
        trainer = SimpleNamespace(step_loss=torch.tensor(float("nan")), step_grad_norm=torch.tensor(1.0))
        weight.grad = torch.ones(3)
        NanGuard("skip_step").before_update(trainer, optimizer)
        assert trainer.step_bad.item() == 1.0 and trainer.step_loss is None
        assert (weight.grad is not None) == kept_grads and (getattr(optimizer, "found_inf", None) is not None) == fused
        optimizer.step()
        assert torch.equal(weight.detach(), torch.ones(3)) and not optimizer.state.get(weight, {}).get("step", 0)
