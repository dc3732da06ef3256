"""The host's share of a step: what the training loop does in Python besides launching kernels.

On a GPU an 8B step at 8k tokens is host-bound (bench/NOTES-speed.md, lever 14: the GPU waits
for the host's launches), so every millisecond of Python per step is a millisecond of wall clock.
Two costs that have nothing to do with training, measured on this project's CPU with the 8B
shape's module tree (32 layers, narrow; bench/NOTES-speed.md, levers 16 and 17):

- Python's garbage collector, left to its allocation counts, runs a full collection every ~20
  steps, mid-step, walking every object of the process (torch, transformers, the model's modules):
  ~0.2 s each. Here it is off while the Trainer trains; the young generations are collected at
  each step's end (a few milliseconds: most of a step's objects die by reference counting) and a
  full collection runs where the loop waits anyway (a checkpoint's save, an evaluation, the end).
  torchtitan and Megatron pace the collector the same way; Python offers only the switch.
- transformers' loop walks the whole module tree several times a step: `model.train()` before
  every micro-batch, `model.zero_grad()` over every parameter (the frozen 4-bit ones included), the
  gradient clip over `model.parameters()`, and a parameter count for the FLOP tally of every
  micro-batch. With ~3,000 modules that is ~35 ms a step. The same work is done over lists taken
  once (`lean_module_walks`, `LeanLoopWalks`).
"""

from __future__ import annotations

import gc

from transformers import TrainerCallback

from qlora_studio.core.model.patches import RunPatches


class StepPacedCollector(TrainerCallback):
    """Python's collector off during `Trainer.train()`, paced by steps instead (see the module's
    docstring). `install` registers the undo with the run's patches, so any exit (an out-of-memory
    error mid-step included) leaves the collector as it found it."""

    def __init__(self):
        self._was_enabled: bool | None = None

    def install(self, patches: RunPatches) -> StepPacedCollector:
        patches.callback(self.restore)
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        if self._was_enabled is None:
            self._was_enabled = gc.isenabled()
        gc.collect()  # what loading left, once, before the collector stops on its own
        gc.disable()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        gc.collect(1)
        return control

    def on_save(self, args, state, control, **kwargs):
        gc.collect()  # a checkpoint's save already keeps the loop waiting
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        gc.collect()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()
        return control

    def restore(self) -> None:
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None


def lean_module_walks(model, patches: RunPatches) -> None:
    """`model.train()` returns at once when every module already trains, and `model.zero_grad()`
    clears the trainable parameters' gradients only (frozen ones never have any). The module and
    parameter lists are taken now, after every change to the model's modules (adapters, Liger, MLP
    tiles); they are instance attributes, undone by `patches`."""
    modules = list(model.modules())
    trainable = [p for p in model.parameters() if p.requires_grad]
    train = model.train

    def train_unless_training(mode: bool = True):
        # checked module by module (~0.1 ms): an evaluation or a generation may have left any of them in eval mode
        if mode and all(m.training for m in modules):
            return model
        return train(mode)

    def zero_trainable_grads(set_to_none: bool = True) -> None:
        for p in trainable:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    patches.set_attribute(model, "train", train_unless_training)
    patches.set_attribute(model, "zero_grad", zero_trainable_grads)


class LeanLoopWalks:
    """Mixed into every trainer a run uses (before the library's class): the gradient clip over the
    trainable parameters, taken once, and the FLOP tally's parameter count, counted once."""

    lean_walks = True  # False: the library's own walks (train.experimental.stock_loop_walks, for comparison)
    _trainable: list | None = None
    _flop_parameters: int | None = None

    def _trainable_parameters(self, model) -> list:
        if self._trainable is None:
            self._trainable = [p for p in model.parameters() if p.requires_grad]
        return self._trainable

    def _clip_grad_norm(self, model):
        if not self.lean_walks or self.args.world_size > 1:  # sharded or replicated gradients: the library's path
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_(self._trainable_parameters(model), self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None and self.lean_walks and self.args.world_size == 1:  # max_grad_norm 0: the norm, unclipped
            grad_norm = self.accelerator.clip_grad_norm_(self._trainable_parameters(model), float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def floating_point_ops(self, inputs) -> int:
        if not self.lean_walks:
            return super().floating_point_ops(inputs)
        name = getattr(self.model, "main_input_name", "input_ids")
        if name not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._flop_parameters is None:
            self._flop_parameters = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[name].numel() * self._flop_parameters
