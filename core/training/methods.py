"""The training methods past SFT (`train.method`): which of TRL's trainers each uses, its arguments
from the run config, and the curves it logs for the Monitor.

TRL's trainers are the field's kept implementations of DPO, ORPO, KTO and GRPO; each is a
transformers Trainer, so a run's step reader, guard, checkpoints, pause / stop / extend and resume
work on them unchanged (training/trainer.py mixes the same hooks into each).
"""

from __future__ import annotations

from dataclasses import dataclass

# The numbers each method logs beside its loss (TRL's names), first the ones the Monitor charts.
METHOD_CURVES: dict[str, tuple[str, ...]] = {
    "sft": (),
    "dpo": ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected"),
    "orpo": ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "nll_loss",
             "log_odds_ratio", "logps/chosen", "logps/rejected"),
    "kto": ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl", "logps/chosen", "logps/rejected"),
    "grpo": ("reward", "reward_std", "kl", "completions/mean_length", "completions/clipped_ratio",
             "frac_reward_zero_std", "entropy"),
}
GRPO_PRESET_PREFIX = "rewards/"  # GRPO logs each reward function's mean as rewards/<name>/mean


@dataclass(frozen=True)
class Chart:
    """One chart of the Monitor for a method: a title, its curves (keys of StepMetrics.method), what
    going the right way looks like."""

    title: str
    keys: tuple[str, ...]
    better: str  # shown under the chart
    per_reward: bool = False  # one curve per GRPO reward (preset_curves), whatever they are named


METHOD_CHARTS: dict[str, tuple[Chart, ...]] = {
    "dpo": (Chart("Rewards: chosen vs rejected", ("rewards/chosen", "rewards/rejected", "rewards/margins"),
                  "the margin (chosen minus rejected) should rise"),
            Chart("Preference accuracy", ("rewards/accuracies",), "share of pairs where chosen beats rejected; should rise")),
    "orpo": (Chart("Rewards: chosen vs rejected", ("rewards/chosen", "rewards/rejected", "rewards/margins"),
                   "the margin should rise"),
             Chart("Preference accuracy", ("rewards/accuracies",), "should rise"),
             Chart("Chosen answer's loss", ("nll_loss",), "should fall, as in SFT")),
    "kto": (Chart("Rewards: desirable vs undesirable", ("rewards/chosen", "rewards/rejected", "rewards/margins"),
                  "the margin should rise"),
            Chart("KL to the base", ("kl",), "how far the model has moved; a steady slow rise is healthy")),
    "grpo": (Chart("Reward", ("reward",), "total reward per answer, weighted; should rise"),
             Chart("Reward by preset", (), "each reward's mean, unweighted", per_reward=True),
             Chart("KL to the base", ("kl",), "only with train.grpo.beta above 0"),
             Chart("Answer length", ("completions/mean_length",), "mean tokens per sampled answer")),
}


def is_method_curve(method: str, key: str) -> bool:
    """Whether a logged key is one of `method`'s curves (GRPO's per-reward means included)."""
    if key in METHOD_CURVES.get(method, ()):
        return True
    return method == "grpo" and key.startswith(GRPO_PRESET_PREFIX) and key.endswith("/mean")


def preset_curves(method_metrics: dict[str, float]) -> dict[str, float]:
    """GRPO's per-reward means, by reward name: {'exact_match': 0.4, 'format': 0.9}."""
    return {key[len(GRPO_PRESET_PREFIX):-len("/mean")]: value for key, value in method_metrics.items()
            if key.startswith(GRPO_PRESET_PREFIX) and key.endswith("/mean")}


# ---- the trainers ----
def method_arguments(config) -> dict:
    """TRL's config fields for the run's method, from its typed section."""
    t = config.train
    if t.method == "dpo":
        s = t.dpo
        loss, weights = [s.loss_type], None
        if s.sft_weight > 0:
            loss, weights = [s.loss_type, "sft"], [1.0, s.sft_weight]
        return {"beta": s.beta, "loss_type": loss, "loss_weights": weights, "label_smoothing": s.label_smoothing,
                "max_length": config.data.max_length, "truncation_mode": "keep_start"}
    if t.method == "orpo":
        return {"beta": t.orpo.beta, "max_length": config.data.max_length}
    if t.method == "kto":
        s = t.kto
        return {"beta": s.beta, "loss_type": s.loss_type, "desirable_weight": s.desirable_weight,
                "undesirable_weight": s.undesirable_weight, "max_length": config.data.max_length}
    if t.method == "grpo":
        s = t.grpo
        return {"num_generations": s.num_generations, "max_completion_length": s.max_completion_length,
                "temperature": s.temperature, "beta": s.beta, "loss_type": s.loss_type, "epsilon": s.epsilon,
                "reward_weights": [r.weight for r in s.rewards], "log_completions": False}
    raise ValueError(f"no TRL trainer for method {t.method}")


def _library_classes(method: str):
    """(TRL's trainer class, its config class) for a method."""
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig
    if method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer, GRPOConfig
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig
    raise ValueError(f"no TRL trainer for method {method}")


class MethodTrainer:
    """Mixed into TRL's trainer, after our step hooks (training/trainer.py): what a run needs from it.

    - The reference of DPO and KTO is the base with the adapter off. TRL copies a PeftModel's
      adapter into a "ref" adapter instead, which in a later segment (after an out-of-memory cut,
      an extension or a resume) would copy the half-trained adapter: dropped here, so TRL falls
      back to switching the adapter off.
    - TRL casts a 4-bit model's adapter weights to bf16; the run keeps the dtype it planned with.
    - The method's numbers join each step's log before our reporting reads it (TRL adds them only
      in its own `log`, after).
    - Tokens: GRPO's batches are prompts before generation; TRL's GRPO counts the prompt and
      generated tokens into the Trainer's state itself (our step logs count none of its batches).
    """

    def __init__(self, *args, **kwargs):
        model = kwargs["model"]
        dtypes = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
        super().__init__(*args, **kwargs)
        if "ref" in getattr(self.model, "peft_config", {}):
            self.model.delete_adapter("ref")
            self.model.set_adapter("default")
        for name, param in self.model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    def log(self, logs, start_time=None):
        if "loss" in logs and "train_loss" not in logs and self.model.training:
            logs.update({k: v for k, v in self.method_numbers().items() if k not in logs})
        super().log(logs, start_time)

    def method_numbers(self) -> dict[str, float]:
        """The method's numbers gathered since the last log (TRL averages and clears them in its `log`)."""
        stored = getattr(self, "_metrics", None) or getattr(self, "_stored_metrics", None) or {}
        train = stored.get("train", {})
        return {k: sum(v) / len(v) for k, v in train.items() if v and all(isinstance(x, (int, float)) for x in v)}

    def create_model_card(self, *args, **kwargs):  # no README.md written into the checkpoints folder
        return None


def build_method_trainer(config, loaded, data, folder, callback, plan=None):
    """The TRL trainer for one segment of a run past SFT, with the run's hooks mixed in."""
    import os

    from qlora_studio.core.training.arguments import training_arguments
    from qlora_studio.core.training.host_pace import LeanLoopWalks
    from qlora_studio.core.training.reporting import ReportingMixin, trainer_environment
    from qlora_studio.core.training.step_logs import LaggedStepLogs, StepTotals, with_run_hooks

    method = config.train.method
    library_trainer, library_config = _library_classes(method)
    trainer_class = type(f"Studio{library_trainer.__name__}",
                         (LaggedStepLogs, MethodTrainer, ReportingMixin, StepTotals, LeanLoopWalks, library_trainer), {})
    kwargs = {}
    if method == "grpo":
        from qlora_studio.core.training.rewards import build_rewards

        kwargs["reward_funcs"], _ = build_rewards(config.train.grpo, os.getcwd())  # paths made absolute at the start
    with trainer_environment(config, folder.path if folder else None):
        args = training_arguments(config, loaded.device, loaded.compute_dtype,
                                  str(folder.checkpoints_dir) if folder else os.devnull,
                                  has_eval=data.eval is not None, plan=plan, arguments_class=library_config,
                                  method_arguments=method_arguments(config))
        trainer = trainer_class(model=loaded.model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                processing_class=loaded.tokenizer, callbacks=[callback], **kwargs)
    # TRL reads its numbers each micro-batch anyway: nothing to gain from lagged logs, numbers kept per step
    return with_run_hooks(trainer, callback, config, lag_logs=False)
