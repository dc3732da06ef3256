"""The planner's word on the models of the library: would this run, with another model, fit the card?"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.planner.estimate import GIB
from qlora_studio.core.planner.fit import make_it_fit
from qlora_studio.core.planner.plan import estimate_config


@dataclass(frozen=True)
class ModelFit:
    name: str
    peak_gb: float  # the estimate with the run's current settings
    verdict: str  # fits | fits with changes (make it fit finds settings) | too big | no budget
    detail: str


def fit_model(config: RunConfig, name: str, budget_gb: float | None) -> ModelFit:
    """`config` with `name` as its model, against `budget_gb` (the chosen card); reads only config.json."""
    candidate = config.with_overrides({"model.name_or_path": name, "model.revision": None, "model.random_init": False},
                                      source=name)
    peak = estimate_config(candidate, budget_gb).total_bytes / GIB
    if budget_gb is None:
        return ModelFit(name, peak, "no budget", f"needs about {peak:.1f} GiB")
    if peak <= budget_gb:
        return ModelFit(name, peak, "fits", f"{peak:.1f} GiB of {budget_gb:g} with the current settings")
    fitted = make_it_fit(candidate, budget_gb)
    if fitted.config is not None:
        return ModelFit(name, peak, "fits with changes", fitted.message.splitlines()[0])
    return ModelFit(name, peak, "too big", f"about {peak:.1f} GiB with the current settings; nothing fits {budget_gb:g} GiB")
