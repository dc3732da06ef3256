"""Preference and RL training in other tools' configs: axolotl's `rl:` and LLaMA-Factory's
`stage: dpo | kto`, with their settings and LLaMA-Factory's pair datasets."""

from __future__ import annotations

from typing import Any

from qlora_studio.core.config.importers.common import ConfigImportError, Draft, Keys

# axolotl's `rl:` values -> (train.method, train.dpo.loss_type or None)
_AXOLOTL_RL = {"dpo": ("dpo", None), "ipo": ("dpo", "ipo"), "orpo": ("orpo", None), "kto": ("kto", None),
               "grpo": ("grpo", None)}


def import_axolotl_rl(imp: Draft, keys: Keys, rl: Any) -> None:
    """Preference and RL training: the method and its settings (rewards are code: not carried)."""
    if not rl:
        return
    if str(rl) not in _AXOLOTL_RL:
        raise ConfigImportError(f"rl: {rl} cannot be imported: QLoRA Studio trains sft, dpo, ipo (as DPO's loss), "
                                "orpo, kto and grpo")
    method, loss = _AXOLOTL_RL[str(rl)]
    imp.carry("rl", "train.method", method)
    if loss:
        imp.carry("rl", f"train.{method}.loss_type", loss)
    beta = keys.take("rl_beta")
    if beta is None:
        beta = keys.take("dpo_beta") if method == "dpo" else keys.take("orpo_alpha") if method == "orpo" else None
    if beta is not None:
        imp.carry("rl_beta", f"train.{method}.beta", float(beta))
    for key, dotted in (("dpo_label_smoothing", "train.dpo.label_smoothing"),
                        ("kto_desirable_weight", "train.kto.desirable_weight"),
                        ("kto_undesirable_weight", "train.kto.undesirable_weight")):
        value = keys.take(key)
        if value is not None:
            imp.carry(key, dotted, float(value))
    trl = keys.take("trl") or {}
    for key, field in (("num_generations", "num_generations"), ("max_completion_length", "max_completion_length"),
                       ("temperature", "temperature"), ("beta", "beta")):
        if key in trl and method == "grpo":
            imp.carry(f"trl.{key}", f"train.grpo.{field}", trl.pop(key))
    if trl.get("reward_funcs"):
        imp.drop("trl.reward_funcs", trl.pop("reward_funcs"),
                 "rewards are Python code: pick presets in train.grpo.rewards (or a python reward, with your yes)")
    for key, value in trl.items():
        imp.drop(f"trl.{key}", value, "no QLoRA Studio equivalent")


def import_llamafactory_stage(imp: Draft, keys: Keys, stage: str) -> None:
    """stage dpo (its pref_loss may make it ORPO) or kto, with LLaMA-Factory's pref_* settings."""
    loss = str(keys.take("pref_loss") or "sigmoid")
    if stage == "dpo" and loss not in ("sigmoid", "ipo", "hinge", "orpo"):
        raise ConfigImportError(f"pref_loss: {loss} cannot be imported: QLoRA Studio's DPO takes sigmoid, ipo or "
                                "hinge, and orpo as its own method")
    method = "orpo" if loss == "orpo" else stage
    imp.carry("stage", "train.method", method)
    if method == "dpo" and loss != "sigmoid":
        imp.carry("pref_loss", "train.dpo.loss_type", loss)
    beta = keys.take("pref_beta")
    if beta is not None:
        imp.carry("pref_beta", f"train.{method}.beta", float(beta))
    ftx = keys.take("pref_ftx")
    if ftx and method == "dpo":
        imp.carry("pref_ftx", "train.dpo.sft_weight", float(ftx))
    elif ftx:
        imp.drop("pref_ftx", ftx, f"{method.upper()} has no added SFT loss setting")
    for key, dotted in (("kto_chosen_weight", "train.kto.desirable_weight"),
                        ("kto_rejected_weight", "train.kto.undesirable_weight")):
        value = keys.take(key)
        if value is not None:
            imp.carry(key, dotted, float(value))


def import_llamafactory_pairs(imp: Draft, keys: Keys, name: str, label: str, formatting: str,
                              columns: dict[str, str], ranking: bool) -> None:
    """A dataset_info entry of preference pairs (`ranking`) or of KTO's rows, as our columns."""
    ours: dict[str, str] = {}
    if formatting != "alpaca" and not ranking:
        raise ConfigImportError(f"dataset {name}: {formatting} KTO data cannot be imported yet; give it "
                                "prompt / completion / label columns")
    sharegpt = formatting == "sharegpt"  # the prompt is the conversation before the two answers
    roles = ({"messages" if sharegpt else "prompt": "prompt", "chosen": "chosen", "rejected": "rejected"} if ranking
             else {"prompt": "prompt", "response": "completion", "kto_tag": "label"})
    imp.put("data.format", "preference" if ranking else "unpaired")
    imp.carried.append(f"{label} -> data.format = {'preference' if ranking else 'unpaired'}")
    defaults = {"prompt": "instruction", "response": "output", "chosen": "chosen", "rejected": "rejected",
                "kto_tag": "kto_tag", "messages": "conversations"}
    for theirs_role, our_name in roles.items():
        column = columns.pop(theirs_role, defaults[theirs_role])
        if column != our_name:
            ours[our_name] = column
    for theirs_role, column in columns.items():
        imp.drop(f"{keys.name('columns')}.{theirs_role}", column, "not read for preference rows")
    if ours:
        imp.put("data.columns", ours)
    keys.drop_rest({}, "not read for preference rows")
