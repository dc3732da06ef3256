"""What an evaluation measures, per side (base, tuned): kept free of torch so the window can show
saved evaluations without loading it (core/after/evaluation.py computes them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What an evaluation reports, in the order the CLI and the window show it: (label, Scores field,
# kind: percent | loss | ppl | number, higher is better); a row no side has (None) is left out.
METRICS = (("Exact match", "exact_match", "percent", True), ("Stopped by itself", "stopped", "percent", True),
           ("Validation loss", "eval_loss", "loss", False), ("Perplexity", "perplexity", "ppl", False),
           ("Ranks chosen first", "ranks_chosen", "percent", True), ("Mean reward", "reward", "number", True))


@dataclass
class Scores:
    exact_match: float | None  # share of replies equal to the reference (None: no row ends with a reply)
    stopped: float | None  # share of replies that ended by themselves
    eval_loss: float | None  # mean cross-entropy per trained token
    perplexity: float | None
    # Held-out pairs: the share where the model gives the chosen answer a higher log-probability than
    # the rejected one (summed over each answer's tokens); None without pairs
    ranks_chosen: float | None = None
    # GRPO: the mean total reward of the replies under the run's rewards; None for other methods
    reward: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scores":
        return cls(**{k: data.get(k) for k in ("exact_match", "stopped", "eval_loss", "perplexity", "ranks_chosen",
                                               "reward")})
