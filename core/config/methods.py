"""The training methods (`train.method`) and the settings of each one past SFT: one typed section
per method, read only when that method is chosen (the window shows only the chosen one's).

Preference methods learn which of two answers is better: DPO and ORPO from pairs, KTO from
answers marked good or bad one at a time. GRPO samples several answers per prompt and learns from
rewards computed on them (the presets below, no code needed). All train the same 4-bit LoRA
adapter; the reference model of DPO and KTO is the base with the adapter switched off, never a
second copy of the weights.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

METHODS = ("sft", "dpo", "orpo", "kto", "grpo")
Method = Literal["sft", "dpo", "orpo", "kto", "grpo"]

# What each method learns from, shown beside the picker.
METHOD_SUMMARIES = {
    "sft": "supervised fine-tuning: learn to write the answers in the data",
    "dpo": "direct preference optimization: learn to prefer the chosen answer of each pair over the rejected one",
    "orpo": "odds-ratio preference optimization: learn the chosen answer and, in the same step, prefer it over the rejected one",
    "kto": "Kahneman-Tversky optimization: learn from single answers marked desirable or undesirable",
    "grpo": "group relative policy optimization: sample several answers per prompt and learn from their rewards",
}

# The row formats (data.format) each method trains on; the first is what `auto` expects.
METHOD_FORMATS = {
    "sft": ("alpaca", "sharegpt", "messages", "prompt_completion", "text"),
    "dpo": ("preference",),
    "orpo": ("preference",),
    "kto": ("unpaired", "preference"),  # pairs are split into one desirable and one undesirable row
    "grpo": ("prompt", "prompt_completion", "alpaca", "messages", "sharegpt"),  # their answer is the reference
}


# The bundled sample each method's one-click demo trains on (resources/sample_data/generate.py).
METHOD_SAMPLES = {"sft": "sample:dates", "dpo": "sample:dates-pairs", "orpo": "sample:dates-pairs",
                  "kto": "sample:dates-kto", "grpo": "sample:arithmetic"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              allow_inf_nan=False)


class DpoSettings(_Section):
    beta: float = Field(0.1, gt=0)
    """How far the tuned model may move from the base: higher keeps it closer (0.1 is typical; 0.01-0.5)."""
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero", "apo_down", "sppo_hard", "nca_pair"] = "sigmoid"
    """sigmoid is the DPO paper's loss; ipo resists overfitting small sets; robust and label_smoothing assume some pairs are mislabelled."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """The share of pairs assumed to be the wrong way round (robust / conservative DPO)."""
    sft_weight: float = Field(0.0, ge=0)
    """Add the chosen answer's own next-token loss with this weight (RPO): keeps the chosen answers likely, not only ahead of the rejected ones."""


class OrpoSettings(_Section):
    beta: float = Field(0.1, gt=0)
    """Weight of the odds-ratio term next to the chosen answer's next-token loss (the paper's lambda; 0.1 is typical)."""


class KtoSettings(_Section):
    beta: float = Field(0.1, gt=0)
    """How far the tuned model may move from the base: higher keeps it closer."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto is the paper's loss; apo_zero_unpaired needs no KL estimate (a little faster)."""
    desirable_weight: float = Field(1.0, gt=0)
    """Weight of the desirable answers' loss; raise it when they are rarer than the undesirable ones."""
    undesirable_weight: float = Field(1.0, gt=0)
    """Weight of the undesirable answers' loss."""


RewardPreset = Literal["exact_match", "regex", "format", "length", "json_valid", "python"]
REWARD_PRESETS = ("exact_match", "regex", "format", "length", "json_valid", "python")

# The RewardSettings fields each preset reads (the others are ignored for it).
PRESET_FIELDS = {"exact_match": ("pattern",), "regex": ("pattern",), "format": ("pattern",),
                 "length": ("min_chars", "max_chars"), "json_valid": (), "python": ("function",)}

THINK_ANSWER_FORMAT = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"


class RewardSettings(_Section):
    """One reward of a GRPO run: each completion gets the weighted sum of its rewards (rewards.py)."""

    preset: RewardPreset = "exact_match"
    """exact_match: 1 when the extracted answer equals the row's reference answer; regex: 1 when the completion matches `pattern`; format: 1 when the whole completion has the layout of `pattern` (default <think>..</think><answer>..</answer>); length: 1 inside [min_chars, max_chars], falling off outside; json_valid: 1 when the completion (or its ```json block) parses; python: your own function (`function`: file.py:name), which runs only with train.grpo.allow_python_rewards."""
    weight: float = 1.0
    """This reward's weight in the total (negative to penalize)."""
    pattern: str | None = None
    """regex / format: the regular expression; exact_match: the extraction regex whose first group is the answer (default: the <answer> tag, else the last number, else the whole completion)."""
    min_chars: int | None = Field(None, ge=0)
    """length: the shortest completion that earns the full reward."""
    max_chars: int | None = Field(None, ge=1)
    """length: the longest completion that earns the full reward."""
    function: str | None = None
    """python: path/to/file.py:function_name; called as function(prompts, completions, answers) -> list of floats."""

    @model_validator(mode="after")
    def _complete(self) -> "RewardSettings":
        if self.preset == "regex" and not self.pattern:
            raise ValueError("the regex reward needs a pattern")
        if self.preset == "length" and self.min_chars is None and self.max_chars is None:
            raise ValueError("the length reward needs min_chars and/or max_chars")
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        if self.preset == "python" and not self.function:
            raise ValueError("the python reward needs function: path/to/file.py:function_name")
        return self


class GrpoSettings(_Section):
    num_generations: int = Field(8, ge=2)
    """Answers sampled per prompt; rewards are compared within each group (4-16 is typical). micro_batch_size x grad_accum must be a multiple of it."""
    max_completion_length: int = Field(256, ge=1)
    """Longest sampled answer, in tokens."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature: the group needs varied answers to learn from."""
    beta: float = Field(0.0, ge=0)
    """KL coefficient: how strongly the tuned model is kept near the base (0 skips the base's forward pass; 0.04 was the paper's)."""
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = "dapo"
    """How token losses are averaged: dapo (TRL's default, no length bias), grpo (the paper's, per answer), dr_grpo, bnpo."""
    epsilon: float = Field(0.2, gt=0, lt=1)
    """Clipping range of the policy ratio."""
    rewards: list[RewardSettings] = Field(default_factory=lambda: [RewardSettings()])
    """The rewards and their weights; the default scores exact answers against the rows' answer column."""
    allow_python_rewards: bool = False
    """Your explicit yes to run the Python file a `python` reward names (it is code, run as you)."""

    @model_validator(mode="after")
    def _rewards(self) -> "GrpoSettings":
        if not self.rewards:
            raise ValueError("rewards is empty; name at least one (e.g. - preset: exact_match)")
        return self
