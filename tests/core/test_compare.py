"""Comparing two runs in one session: a second run's adapter on the same loaded base (peft's
load_adapter / set_adapter / delete_adapter), each run answering in its own chat template, the base
weights loaded once, and a run on another base refused with one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qlora_studio.core.after.adapters import locate_adapter
from qlora_studio.core.after.inference import BASE, COMPARED, TUNED, load_session
from qlora_studio.core.config.files import load_config
from qlora_studio.core.errors import UserError
from qlora_studio.core.model.generation import Sampling

PROMPTS = [[{"role": "user", "content": "Say red."}], [{"role": "user", "content": "Normalize the date: March 5, 2021"}]]


@pytest.fixture(scope="module")
def session(tiny_run, tiny_dpo_run):
    session = load_session(tiny_run.run_dir)
    yield session
    session.drop_comparison()


def base_weights(model) -> tuple[int, list[int]]:
    """How many 4-bit layers the model holds, and where every parameter that is not LoRA's lives."""
    import bitsandbytes as bnb

    layers = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    return layers, sorted(p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n)


def test_two_adapters_on_one_base_answer_apart(session, tiny_dpo_run):
    model = session.model
    before = base_weights(model)
    tuned_alone = session.replies(PROMPTS, Sampling(12))
    session.compare_with(locate_adapter(tiny_dpo_run.run_dir))
    assert session.compared.run_dir == Path(tiny_dpo_run.run_dir)
    assert base_weights(model) == before and before[0] > 0  # no second copy of the base: one set of 4-bit layers
    assert sorted(model.peft_config) == sorted([session.ADAPTER, session.comparison.adapter])

    answers = {side: [r.text for r in session.replies(PROMPTS, Sampling(12), side=side)] for side in (TUNED, BASE, COMPARED)}
    assert answers[TUNED] == [r.text for r in tuned_alone]  # the comparison changes nothing of the first run's answers
    assert answers[TUNED] != answers[BASE] and answers[COMPARED] != answers[BASE] and answers[COMPARED] != answers[TUNED]
    # as the DPO run answers loaded on its own: its adapter, chat template and stop tokens
    alone = load_session(tiny_dpo_run.run_dir)
    assert answers[COMPARED] == [r.text for r in alone.replies(PROMPTS, Sampling(12))]
    del alone
    assert model.active_adapter == session.ADAPTER  # the first adapter is active again
    assert not any(p.requires_grad for p in model.parameters())

    # each run renders its prompts in its own chat template (the SFT run: chatml; the DPO run: zephyr)
    own = session.comparison.chat.tokenizer.apply_chat_template(PROMPTS[0], tokenize=False, add_generation_prompt=True)
    first = session.chat.tokenizer.apply_chat_template(PROMPTS[0], tokenize=False, add_generation_prompt=True)
    assert own.startswith("<|user|>") and first.startswith("<|im_start|>user")


def test_the_first_adapter_comes_back_after_an_error_and_unloading_deletes_the_second(session, tiny_dpo_run, tiny_run):
    if session.comparison is None:
        session.compare_with(locate_adapter(tiny_dpo_run.run_dir))
    with pytest.raises(RuntimeError):
        with session.answering(COMPARED):
            assert session.model.active_adapter == session.comparison.adapter
            raise RuntimeError("generation broke")
    assert session.model.active_adapter == session.ADAPTER
    layers = base_weights(session.model)
    session.compare_with(locate_adapter(tiny_run.run_dir, "step-5"))  # replaces the comparison: a checkpoint this time
    assert len(session.model.peft_config) == 2 and session.compared.label == "step 5"
    session.drop_comparison()
    assert list(session.model.peft_config) == [session.ADAPTER] and session.compared is None
    assert base_weights(session.model) == layers
    with pytest.raises(ValueError, match="compare_with"):
        with session.answering(COMPARED):
            pass


def _copy_with(run_dir: str, target: Path, **changes) -> Path:
    shutil.copytree(run_dir, target)
    config = load_config(target / "config.yaml")
    config.with_overrides(changes).save(target / "config.yaml")
    return target


def test_a_run_on_another_base_is_refused_in_one_line(session, tiny_dpo_run, tiny_base_model, tmp_path):
    session.drop_comparison()
    other = _copy_with(tiny_dpo_run.run_dir, tmp_path / "other-base", **{"model.name_or_path": str(tiny_base_model)})
    with pytest.raises(UserError) as refused:
        session.compare_with(locate_adapter(other))
    message = str(refused.value)
    assert "\n" not in message and str(tiny_base_model) in message and str(Path(session.ref.config.model.name_or_path)) in message
    assert "other-base (final)" in message and "same base model" in message
    no_dq = _copy_with(tiny_dpo_run.run_dir, tmp_path / "no-dq", **{"quantization.double_quant": False})
    with pytest.raises(UserError, match=r"4bit nf4, .*4bit nf4 \+DQ"):
        session.compare_with(locate_adapter(no_dq))
    assert session.comparison is None and list(session.model.peft_config) == [session.ADAPTER]
