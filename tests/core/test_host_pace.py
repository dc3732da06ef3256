"""The host's share of a step (training/host_pace.py): the collector paced by steps, and the
training loop's walks over the module tree done over lists taken once, with the library's results."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
import torch

from qlora_studio.core.model.patches import RunPatches
from qlora_studio.core.training.host_pace import LeanLoopWalks, StepPacedCollector, lean_module_walks


def test_collector_is_off_during_steps_and_on_again_after_the_run(tiny_config):
    from qlora_studio.core.training.runner import run_training

    seen = []

    def emit(event):
        if event.type == "step":
            seen.append(gc.isenabled())

    config = tiny_config.with_overrides({"train.max_steps": 3, "data.validation_split": 0.0})
    assert gc.isenabled()
    result = run_training(config, emit)
    assert result.status == "finished", result.error
    assert seen and not any(seen)  # no automatic collection mid-step
    assert gc.isenabled()


def test_collector_is_restored_by_the_runs_patches_after_a_failure():
    """An out-of-memory error mid-step skips on_train_end: the patches' exit turns it back on."""
    with pytest.raises(RuntimeError):
        with RunPatches() as patches:
            collector = StepPacedCollector().install(patches)
            collector.on_train_begin(None, None, None)
            assert not gc.isenabled()
            raise RuntimeError("CUDA out of memory")
    assert gc.isenabled()


def _tree():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(4, 2)))
    model[0].requires_grad_(False)  # frozen, like the 4-bit base
    return model


def test_lean_module_walks_keep_train_and_zero_grad_exact():
    model = _tree()
    with RunPatches() as patches:
        lean_module_walks(model, patches)
        model[1][0].eval()  # an evaluation or a generation left one module in eval mode
        assert model.train() is model
        assert all(m.training for m in model.modules())
        model.eval()
        assert not any(m.training for m in model.modules())
        model.train()
        assert all(m.training for m in model.modules())

        model(torch.randn(3, 4)).sum().backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert all(p.grad is not None for p in trainable) and model[0].weight.grad is None
        model.zero_grad(set_to_none=False)
        assert all(torch.count_nonzero(p.grad) == 0 for p in trainable)
        model.zero_grad()
        assert all(p.grad is None for p in trainable)
    assert "train" not in vars(model) and "zero_grad" not in vars(model)  # the class's methods again


def test_lean_loop_walks_clip_and_count_as_the_library_does():
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=1, vocab_size=64))
    for name, p in model.named_parameters():
        p.requires_grad_("mlp" in name)
    inputs = {"input_ids": torch.randint(0, 64, (2, 8))}
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    library = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    expected = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 0.01)
    clipped = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if n in library:
            p.grad.copy_(library[n])

    class Walks(LeanLoopWalks):
        pass

    walks = Walks()
    walks.model, walks.accelerator = model, Accelerator(cpu=True)
    walks.args = SimpleNamespace(world_size=1, max_grad_norm=0.01)
    assert torch.allclose(walks._clip_grad_norm(model), expected)
    assert all(torch.equal(p.grad, clipped[n]) for n, p in model.named_parameters() if p.grad is not None)
    assert walks.floating_point_ops(inputs) == Trainer.floating_point_ops(walks, inputs) > 0


def test_reentrant_checkpoints_train_the_same_steps(tiny_config, monkeypatch):
    """train.experimental.reentrant_checkpoints changes how the layers are recomputed, not what is learned."""
    from torch.utils import checkpoint

    from qlora_studio.core.runs.store import RunFolder
    from qlora_studio.core.training.runner import run_training

    reentrant_calls = []
    apply = checkpoint.CheckpointFunction.apply
    monkeypatch.setattr(checkpoint.CheckpointFunction, "apply",
                        lambda *args: reentrant_calls.append(1) or apply(*args))
    losses = []
    for reentrant in (False, True):
        reentrant_calls.clear()
        config = tiny_config.with_overrides({"train.max_steps": 3, "data.validation_split": 0.0, "lora.dropout": 0.0,
                                             "train.experimental.reentrant_checkpoints": reentrant,
                                             "run_name": f"reentrant-{reentrant}"})
        result = run_training(config)
        assert result.status == "finished", result.error
        losses.append([m["loss"] for m in RunFolder(result.run_dir).read_metrics()])
        assert bool(reentrant_calls) == reentrant
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-4)
