"""Training past SFT (train.method dpo | orpo | kto | grpo) on TRL's trainers, through the same
run_training: curves that move the right way, resume, the reference with the adapter off, and the
data shapes each method reads."""

from __future__ import annotations

import json
import shutil

import pytest

from qlora_studio.core.config import RunConfig
from qlora_studio.core.config.schema import validate_config
from qlora_studio.core.errors import ConfigError, DataError
from qlora_studio.core.runs.store import RunFolder
from qlora_studio.core.training.runner import run_training

WORDS = ["yes", "ok", "hi", "one", "red", "sun", "cat", "up", "dog", "fox", "two", "six"]


def pairs_file(tmp_path, rows=None):
    """Chosen is short and learnable (the word asked for), rejected a ramble: DPO can tell them apart."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = rows or [{"prompt": f"Say {w}.", "chosen": w, "rejected": f"{w} no no the lazy dog {w} over"} for w in WORDS]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def method_config(tiny_model, tmp_path, method, data, **train):
    return RunConfig.model_validate({
        "model": {"name_or_path": str(tiny_model)},
        "data": {"path": str(data), "max_length": 64, "validation_split": 0},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"method": method, "max_steps": 8, "micro_batch_size": 4, "grad_accum": 1, "learning_rate": 2e-2,
                  "warmup_ratio": 0.0, "lr_scheduler": "constant", "save_every_steps": 100} | train,
        "output_dir": str(tmp_path / "runs"), "probes": [],
    })


def curves(result, key):
    return [m["method"][key] for m in RunFolder(result.run_dir).read_metrics() if key in m.get("method", {})]


def test_dpo_learns_to_prefer_the_chosen_answer(tiny_model, tmp_path):
    result = run_training(method_config(tiny_model, tmp_path, "dpo", pairs_file(tmp_path)))
    assert result.status == "finished", result.error
    margins, accuracy = curves(result, "rewards/margins"), curves(result, "rewards/accuracies")
    assert len(margins) == 8 and margins[0] == pytest.approx(0.0, abs=1e-6)  # step 1: the adapter is still zero
    assert sum(margins[-3:]) / 3 > 0.2 and accuracy[-1] == 1.0
    # the reference is the base with the adapter off: no copy of the adapter is trained or saved
    adapter = RunFolder(result.run_dir).adapter_dir
    assert not (adapter / "ref").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    # Evaluate on held-out pairs: how often each model ranks chosen first, and exact match with chosen
    from qlora_studio.core.after.evaluation import evaluate
    from qlora_studio.core.after.inference import load_session

    held_out = pairs_file(tmp_path / "held", [{"prompt": f"Say {w}.", "chosen": w, "rejected": f"{w} no no the lazy dog"}
                                              for w in ("red", "sun", "cat", "fox")])
    scored = evaluate(load_session(result.run_dir), str(held_out), max_new_tokens=4)
    assert scored.rows == 4 and scored.examples[0]["reference"] == "red"
    assert scored.tuned.ranks_chosen == 1.0 and scored.base.ranks_chosen is not None
    assert scored.tuned.eval_loss < scored.base.eval_loss  # the chosen answers' loss


def test_dpo_resumes_exactly(tiny_model, tmp_path):
    config = method_config(tiny_model, tmp_path, "dpo", pairs_file(tmp_path), max_steps=6, save_every_steps=3)
    first = run_training(config)
    run = RunFolder(first.run_dir)
    straight = run.read_metrics()
    for step, path in run.checkpoints():  # as if the process died after step 3's checkpoint
        if step > 3:
            shutil.rmtree(path)
    run.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in straight[:3]))
    run.write_status("stopped")
    resumed = run_training(None, resume_from=run.path)
    assert resumed.status == "finished", resumed.error
    again = run.read_metrics()
    assert [m["step"] for m in again] == list(range(1, 7))
    assert [m["loss"] for m in again] == pytest.approx([m["loss"] for m in straight], rel=1e-5)
    assert [m["method"]["rewards/margins"] for m in again] == pytest.approx(
        [m["method"]["rewards/margins"] for m in straight], rel=1e-4, abs=1e-6)


def test_kto_learns_from_pairs_split_into_good_and_bad_answers(tiny_model, tmp_path):
    result = run_training(method_config(tiny_model, tmp_path, "kto", pairs_file(tmp_path), max_steps=6))
    assert result.status == "finished", result.error
    margins = curves(result, "rewards/margins")
    assert margins[0] == pytest.approx(0.0, abs=1e-6) and margins[-1] > margins[1] > 0


def test_orpo_learns_the_chosen_answer_and_the_preference(tiny_model, tmp_path):
    result = run_training(method_config(tiny_model, tmp_path, "orpo", pairs_file(tmp_path), max_steps=6))
    assert result.status == "finished", result.error
    nll, margins = curves(result, "nll_loss"), curves(result, "rewards/margins")
    assert nll[-1] < nll[0] * 0.8
    assert margins[-1] > margins[0]
    tokens = [m["tokens"] for m in RunFolder(result.run_dir).read_metrics()]
    assert tokens[0] > 0 and tokens == sorted(tokens)  # ORPO's pair batches are counted too


def test_grpo_exact_match_reward_rises(tiny_model, tmp_path):
    """One-digit sums: the random model rarely writes the right digit at first; GRPO makes it more likely."""
    sums = [("1+1", "2"), ("2+2", "4"), ("1+2", "3"), ("3+3", "6"), ("2+3", "5"), ("4+4", "8")]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {q}?", "answer": a}) + "\n" for q, a in sums * 4))
    length = {"preset": "length", "max_chars": 40, "weight": 0.0}  # scored and shown, not trained on
    config = method_config(tiny_model, tmp_path, "grpo", data, max_steps=30, micro_batch_size=16, learning_rate=1e-2,
                           grpo={"num_generations": 8, "max_completion_length": 2,
                                 "rewards": [{"preset": "exact_match"}, length]})
    result = run_training(config.with_overrides({"probes": ["What is 2+2?"], "train.probe_max_new_tokens": 4}))
    assert result.status == "finished", result.error
    rewards = curves(result, "reward")
    assert rewards == pytest.approx(curves(result, "rewards/exact_match/mean"))  # the length reward weighs 0
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.05
    tokens = [m["tokens"] for m in RunFolder(result.run_dir).read_metrics()]
    steps = [b - a for a, b in zip(tokens, tokens[1:])]  # prompts + sampled answers, counted once (TRL counts them)
    assert min(steps) > 0 and max(steps) <= 2 * min(steps)
    # probes are sampled as GRPO samples, and scored by the run's rewards (no reference answer: exact_match skips)
    probes = [json.loads(line) for line in (RunFolder(result.run_dir).path / "probes.jsonl").read_text().splitlines()]
    scored = probes[-1]["answers"][0]["rewards"]
    assert scored["exact_match"] is None and 0 <= scored["length"] <= 1 and scored["total"] == 0.0


def test_a_bad_pair_names_its_file_and_line(tiny_model, tmp_path):
    rows = [{"prompt": "Say a.", "chosen": "a", "rejected": "b"}] * 2 + [{"prompt": "Say c.", "chosen": "c"}]
    config = method_config(tiny_model, tmp_path, "dpo", pairs_file(tmp_path, rows))
    result = run_training(config)
    assert result.status == "failed"
    assert "pairs.jsonl:3" in result.error and "rejected" in result.error
    assert "\n" not in result.error


def test_method_and_format_must_agree():
    with pytest.raises(ConfigError, match="data.format alpaca does not fit train.method dpo"):
        validate_config({"train": {"method": "dpo"}, "data": {"format": "alpaca"}})
    with pytest.raises(ConfigError, match="num_generations"):
        RunConfig().with_overrides({"train.method": "grpo", "train.grpo.num_generations": 3})


# ---- data shapes ----
def read(tmp_path, method, rows, **data):
    from qlora_studio.core.data.method_data import load_method_rows
    from qlora_studio.core.config.schema import DataSettings

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, got, formats, bad, bad_count, flagged, _ = load_method_rows(DataSettings(path=str(path), **data), method)
    return got, bad, flagged, formats


def test_pair_shapes_become_one_shape(tmp_path):
    user = [{"role": "user", "content": "Hi?"}]
    rows = [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},  # strings
        {"prompt": "Hi?", "chosen": user + [{"role": "assistant", "content": "Hello!"}],  # UltraFeedback
         "rejected": user + [{"role": "assistant", "content": "Go away."}]},
        {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."},  # HH
    ]
    got, bad, flagged, formats = read(tmp_path, "dpo", rows)
    want = {"prompt": user, "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}]}
    assert not bad and not flagged and formats == {"preference": 3}
    assert [{k: r[k] for k in want} for r in got] == [want] * 3


def test_pairs_that_teach_nothing_are_flagged_and_empty_ones_are_bad(tmp_path):
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "same", "rejected": "same"},
            {"prompt": "c", "chosen": "x", "rejected": "  "}]
    got, bad, flagged, _ = read(tmp_path, "dpo", rows)
    assert len(got) == 1
    assert flagged == [{"where": f"{tmp_path / 'rows.jsonl'}:2", "reason": "chosen and rejected are identical"}]
    assert bad[0]["where"].endswith("rows.jsonl:3") and "'rejected' is empty" in bad[0]["reason"]


def test_kto_labels_and_grpo_answers(tmp_path):
    got, bad, _, _ = read(tmp_path, "kto", [{"prompt": "a", "completion": "x", "label": True},
                                            {"prompt": "b", "completion": "y", "label": "bad"},
                                            {"prompt": "c", "completion": "z", "label": "maybe"}])
    assert [r["label"] for r in got] == [True, False] and "true or false" in bad[0]["reason"]
    # GRPO over SFT rows: the conversation before the last reply is the prompt, the reply its answer
    got, _, _, formats = read(tmp_path, "grpo", [{"messages": [{"role": "user", "content": "2+2?"},
                                                               {"role": "assistant", "content": "4"}]}])
    assert got[0]["prompt"] == [{"role": "user", "content": "2+2?"}] and got[0]["answer"] == "4"
    assert formats == {"messages": 1}


def test_xray_of_pairs_counts_what_trl_trains(tiny_model, tmp_path):
    from qlora_studio.core.data.pipeline import inspect_config

    rows = [{"prompt": "Say a.", "chosen": "a", "rejected": "b " * 80}, {"prompt": "Say c.", "chosen": "c", "rejected": "d"}]
    config = method_config(tiny_model, tmp_path, "dpo", pairs_file(tmp_path, rows))
    report = inspect_config(config, examples=2)
    assert report.method == "dpo" and report.train_rows == 2 and report.cut_rows == 1
    first = report.examples[0]
    assert first["prompt"].endswith("<|im_start|>assistant\n") and first["chosen"]["text"].startswith("a")
    assert first["rejected"]["cut_tokens"] > 0 and first["chosen"]["cut_tokens"] == 0
    assert any("longer than data.max_length 64" in w for w in report.warnings)


def test_bundled_method_samples_read(tmp_path):
    from qlora_studio.core.config.schema import DataSettings
    from qlora_studio.core.data.method_data import load_method_rows

    for method, sample in (("dpo", "dates-pairs"), ("kto", "dates-kto"), ("grpo", "arithmetic")):
        _, rows, _, bad, bad_count, flagged, _ = load_method_rows(DataSettings(path=f"sample:{sample}"), method)
        assert len(rows) >= 200 and not bad_count and not flagged, sample


def test_unknown_columns_say_what_the_method_needs(tmp_path):
    with pytest.raises(DataError, match="train.method dpo needs prompt / chosen / rejected"):
        read(tmp_path, "dpo", [{"question": "a", "answer": "b"}])
