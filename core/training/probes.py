"""The taste test: the run's probe prompts answered by the model being trained, once on the base
before step 1 and again at every checkpoint, so a run shows how its answers change.

Probing must leave training exactly as it found it (a run with probes has the same losses as one
without, tests/core/test_probes.py): the random-number streams of Python, numpy and torch are
saved and restored, train mode and every parameter's requires_grad come back as they were, and no
4-bit weight is left in bitsandbytes' CPU inference layout (its matmul has no backward). Answers
are greedy, so they do not depend on the seed either. Probes run between optimizer steps, outside
the window tokens/s is measured over; the seconds they take travel with their event.
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Iterator

import numpy as np
import torch

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.model.generation import ChatModel, Sampling, generate_replies
from qlora_studio.core.runs import events as ev


class Prober:
    def __init__(self, config: RunConfig, loaded, stop_ids: list[int], emit: ev.Emit):
        self.prompts = list(config.probes)
        system = config.data.system_prompt
        self.conversations = [([{"role": "system", "content": system}] if system else [])
                              + [{"role": "user", "content": p}] for p in self.prompts]
        grpo = config.train.method == "grpo"
        # GRPO learns from sampled answers: its probes are sampled the same way (seeded per checkpoint)
        # and scored by the run's rewards; the other methods answer greedily
        self.sampling = Sampling(max_new_tokens=config.train.probe_max_new_tokens,
                                 temperature=config.train.grpo.temperature if grpo else 0.0)
        self.chat = ChatModel(loaded.model, loaded.tokenizer, stop_ids, loaded.device)
        self.emit = emit
        self.grpo = config.train.grpo if grpo else None
        self.rewards = None
        if grpo and self.prompts:
            from qlora_studio.core.training.rewards import build_rewards

            self.rewards = build_rewards(self.grpo, ".")  # python rewards' paths are absolute by now

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)

    def answer(self, step: int, base: bool = False) -> None:
        """Answer every probe with the model as it is at `step` (`base`: with the adapter switched off)."""
        if not self.enabled:
            return
        began = time.monotonic()
        model = self.chat.model
        with untouched_training_state(model), (model.disable_adapter() if base else contextlib.nullcontext()), \
                torch.random.fork_rng(devices=[self.chat.device.index or 0] if self.chat.device.type == "cuda" else []):
            torch.manual_seed(step)  # sampled probes: the same draw for the same checkpoint, and the run's RNG untouched
            replies = generate_replies(self.chat, self.conversations, self.sampling)
        answers = [{"prompt": p, **r.to_dict()} for p, r in zip(self.prompts, replies)]
        if self.grpo is not None:
            from qlora_studio.core.training.rewards import score_completions

            scores = score_completions(self.grpo, self.prompts, [r.text for r in replies], [None] * len(replies),
                                       rewards=self.rewards)
            for answer, score in zip(answers, scores):
                answer["rewards"] = score
        self.emit(ev.ProbesAnswered(step, base, answers, round(time.monotonic() - began, 3)))


@contextlib.contextmanager
def untouched_training_state(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode for generating; afterwards everything training depends on is as before."""
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    modes = [(module, module.training) for module in model.modules()]  # not uniform: keep each as it was
    trainable = [(p, p.requires_grad) for p in model.parameters()]
    use_cache = getattr(getattr(model, "config", None), "use_cache", None)
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        for param, flag in trainable:  # peft's disable_adapter re-enables grads on its way out; keep ours
            param.requires_grad_(flag)
        if use_cache is not None:
            model.config.use_cache = use_cache
        unpack_cpu_weights(model)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])


def unpack_cpu_weights(model: torch.nn.Module) -> int:
    """Undo bitsandbytes' CPU inference repacking of 4-bit weights, if any happened; how many were.

    The loader turns the repacking off (model/loading.py: prepare_for_adapter_training); this
    makes sure no generation path left a weight in the layout training cannot backpropagate through.
    """
    import bitsandbytes as bnb

    undone = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = module.weight
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
            undone += 1
    return undone
