"""GRPO's reward presets (core/training/rewards.py): each rule and its edge cases, called as TRL's
GRPOTrainer calls them; names, weights, the consent a python reward needs, and one-line errors."""

from __future__ import annotations

import pickle

import pytest

from qlora_studio.core.config.methods import GrpoSettings, RewardSettings
from qlora_studio.core.errors import ConfigError, UserError
from qlora_studio.core.training.rewards import (RewardError, build_rewards, check_rewards, reward_names,
                                                score_completion, score_completions)


def grpo(*rewards: dict, allow_python: bool = False) -> GrpoSettings:
    return GrpoSettings(rewards=[RewardSettings(**r) for r in rewards], allow_python_rewards=allow_python)


def call(reward: dict, completions: list, answers: list | None = None, **extra) -> list:
    """One reward called exactly as GRPOTrainer._calculate_rewards does."""
    (func,), _ = build_rewards(grpo(reward), ".")
    columns = {} if answers is None else {"answer": answers}
    return func(prompts=["p"] * len(completions), completions=completions, completion_ids=[[1]] * len(completions),
                trainer_state=None, log_extra=None, log_metric=None, **columns, **extra)


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_exact_match_extraction_order_and_normalization():
    rows = [
        ("<think>17 + 25 is 41? no</think><answer>42</answer>", "42", 1.0),  # the tag beats the last number
        ("<answer>41</answer> wait, 42", "42", 0.0),
        ("<answer>1</answer> then <answer> 42 </answer>", "42", 1.0),  # the last tag
        ("17 + 25 = 42.", "42", 1.0),  # last number, trailing period
        ("The answer is 42.0", "42", 1.0),  # numbers compare by value
        ("about 1,000 people", "1000", 1.0),
        ("5 - 13 = -8", "-8", 1.0),
        ("13-5=8", "8", 1.0),  # a minus between operands is no sign
        ("no number here", "42", 0.0),
        ("  PARIS. ", "Paris", 1.0),  # strip, casefold, trailing period
        ("New   York", "new york", 1.0),
        ("1962-03-11", "1962-03-11", 1.0),  # a non-numeric reference is never matched by its last number
        ("It is 1962-03-11", "1962-03-11", 0.0),
        ("11", "1962-03-11", 0.0),
        ("anything", None, None),  # no reference: TRL skips the row
        ("anything", "   ", None),
        ("42", 42, 1.0),  # a numeric answer column
    ]
    completions, answers, expected = zip(*rows)
    assert call({"preset": "exact_match"}, list(completions), list(answers)) == list(expected)
    # conversational completions: the assistant message's content (also as text blocks)
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": "<answer>7</answer>"}]}]
    assert call({"preset": "exact_match"}, [chat("It is 7"), blocks], ["7", "7"]) == [1.0, 1.0]
    # no answer column at all
    assert call({"preset": "exact_match"}, ["42"]) == [None]


def test_exact_match_with_an_extraction_pattern():
    reward = {"preset": "exact_match", "pattern": r"Final: (\S+)"}
    assert call(reward, ["Final: 42", "final: 42", "42", "Final: 42 <answer>1</answer>"], ["42"] * 4) == \
        [1.0, 0.0, 0.0, 1.0]  # no match scores 0; the pattern replaces the tag and the last number
    assert call({"preset": "exact_match", "pattern": r"\d+"}, ["x 42 y"], ["42"]) == [1.0]  # no group: the match


def test_regex_format_length_json():
    assert call({"preset": "regex", "pattern": r"\d{4}-\d{2}-\d{2}"}, ["is 1962-03-11!", "1962-3-11", chat("2020-01-01")]) \
        == [1.0, 0.0, 1.0]
    assert call({"preset": "regex", "pattern": r"(?i)^yes"}, ["Yes.", "no, yes"]) == [1.0, 0.0]

    think = ["<think>a\nb</think>\n<answer>42</answer>\n", "<answer>42</answer>", "<think>x</think><answer>1</answer> more"]
    assert call({"preset": "format"}, think) == [1.0, 0.0, 0.0]
    assert call({"preset": "format", "pattern": r"\d+"}, ["42", "42 ", "a\n42"]) == [1.0, 0.0, 0.0]
    assert call({"preset": "format", "pattern": r"A.B"}, ["A\nB"]) == [1.0]  # . spans lines

    length = {"preset": "length", "min_chars": 10, "max_chars": 20}
    assert call(length, ["", "x" * 5, "x" * 10, "x" * 20, "x" * 25, "x" * 40, "x" * 99, "  " + "x" * 10 + "\n"]) == \
        [0.0, 0.5, 1.0, 1.0, 0.75, 0.0, 0.0, 1.0]
    assert call({"preset": "length", "max_chars": 4}, ["", "abcd", "abcdef"]) == [1.0, 1.0, 0.5]
    assert call({"preset": "length", "min_chars": 4}, ["ab", "x" * 1000]) == [0.5, 1.0]

    jsons = ['{"a": 1}', 'Here:\n```json\n{"a": [1, 2]}\n```\nDone.', "```JSON {\"a\": 1}```", "42", "{'a': 1}",
             "```json\n{broken\n```", "```python\n{}\n```", "[" * 5000]
    assert call({"preset": "json_valid"}, jsons) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_names_weights_and_the_total():
    settings = grpo({"preset": "exact_match", "weight": 2.0}, {"preset": "format"},
                    {"preset": "regex", "pattern": "x", "weight": -0.5}, {"preset": "format", "pattern": ".*"},
                    {"preset": "format", "pattern": ".+"})
    funcs, weights = build_rewards(settings, ".")
    names = ["exact_match", "format", "regex", "format_2", "format_3"]
    assert [f.__name__ for f in funcs] == names == reward_names(settings)
    assert weights == [2.0, 1.0, -0.5, 1.0, 1.0]
    from trl.trainer.utils import get_callable_name  # the name TRL logs rewards/<name>/mean under

    assert [get_callable_name(f) for f in funcs] == names
    # picklable, as TRL's async rollout worker needs
    assert [f(prompts=["p"], completions=["x 42"], answer=["42"]) for f in pickle.loads(pickle.dumps(funcs))] == \
        [[1.0], [0.0], [1.0], [1.0], [1.0]]

    scores = score_completion(settings, "What is 40 + 2?", "x 42", "42")
    assert scores == {"exact_match": 1.0, "format": 0.0, "regex": 1.0, "format_2": 1.0, "format_3": 1.0,
                      "total": 2.0 - 0.5 + 2.0}
    # a row without an answer: exact_match skipped and left out of the total
    assert score_completion(settings, "p", "y", None)["exact_match"] is None
    assert score_completion(settings, "p", "y", None)["total"] == 2.0
    assert score_completion(grpo({"preset": "exact_match"}), "p", "y", None) == {"exact_match": None, "total": None}
    batch = score_completions(settings, ["p", "p"], [chat("42"), "no"], ["42", "42"])
    assert [s["exact_match"] for s in batch] == [1.0, 0.0]


def test_check_rewards_needs_answers_for_exact_match():
    check_rewards(grpo({"preset": "exact_match"}), has_answers=True)
    check_rewards(grpo({"preset": "format"}), has_answers=False)
    with pytest.raises(ConfigError) as err:
        check_rewards(grpo({"preset": "format"}, {"preset": "exact_match"}), has_answers=False)
    text = str(err.value)
    assert text.startswith("train.grpo.rewards[1]: exact_match") and "answer" in text and "\n" not in text


def test_a_bad_regex_names_the_field_and_the_error():
    for preset in ("regex", "format", "exact_match"):
        settings = grpo({"preset": "length", "max_chars": 9}, {"preset": preset, "pattern": "(unclosed"})
        for attempt in (lambda: build_rewards(settings, "."), lambda: check_rewards(settings, True)):
            with pytest.raises(ConfigError) as err:
                attempt()
            assert str(err.value) == ("train.grpo.rewards[1].pattern: '(unclosed' is not a valid regular expression "
                                      "(missing ), unterminated subpattern at position 0)")


REWARD_FILE = '''
import pathlib

pathlib.Path(__file__).with_name("imported").touch()
calls = []

def close_to(prompts, completions, answers):
    calls.append((prompts, completions, answers))
    return [None if a is None else 1.0 - min(abs(float(c) - float(a)), 10) / 10 for c, a in zip(completions, answers)]

def broken(prompts, completions, answers):
    return [1 / 0 for _ in completions]

def short(prompts, completions, answers):
    return [1.0]

def words(prompts, completions, answers):
    return ["good" for _ in completions]

def as_bools(prompts, completions, answers):
    return (c == a for c, a in zip(completions, answers))

not_a_function = 3
'''


def test_python_reward_needs_consent_and_runs_the_users_function(tmp_path):
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    reward = {"preset": "python", "function": "my_rewards.py:close_to", "weight": 0.5}
    refused = grpo(reward)
    for attempt in (lambda: build_rewards(refused, tmp_path), lambda: check_rewards(refused, True)):
        with pytest.raises(ConfigError) as err:
            attempt()
        assert str(err.value).startswith("train.grpo.rewards[0]: a python reward runs code from ")
        assert "my_rewards.py; set train.grpo.allow_python_rewards: true (or say yes in the window) to allow it" \
            in str(err.value)
    assert not (tmp_path / "imported").exists()  # refused before importing anything

    settings = grpo(reward, {"preset": "python", "function": "my_rewards.py:close_to"}, allow_python=True)
    funcs, weights = build_rewards(settings, tmp_path)
    assert [f.__name__ for f in funcs] == ["close_to", "close_to_2"] and weights == [0.5, 1.0]
    assert (tmp_path / "imported").exists() and funcs[0]._function is funcs[1]._function  # imported once
    prompts = [[{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2 + 2?"}], "What is 1 + 1?"]
    assert funcs[0](prompts=prompts, completions=[chat("4"), " 7"], completion_ids=[[1], [2]], answer=["4", None],
                    trainer_state=None) == [1.0, None]
    module = __import__("sys").modules[funcs[0]._function.__module__]
    assert module.calls[-1] == (["What is 2 + 2?", "What is 1 + 1?"], ["4", " 7"], ["4", None])  # plain strings
    assert score_completion(settings, "q", "5", "4", base_dir=tmp_path) == {"close_to": 0.9, "close_to_2": 0.9,
                                                                            "total": pytest.approx(1.35)}
    clone = pickle.loads(pickle.dumps(funcs[0]))  # reloads the file on first use
    assert clone(prompts=["q"], completions=["3"], answer=["4"]) == [0.9]
    # an absolute path works from any base_dir; True counts as 1.0
    absolute = grpo({"preset": "python", "function": f"{tmp_path / 'my_rewards.py'}:as_bools"}, allow_python=True)
    assert build_rewards(absolute, "/")[0][0](prompts=["q", "q"], completions=["4", "5"], answer=["4", "4"]) == [1.0, 0.0]


@pytest.mark.parametrize("function, message", [
    ("missing.py:close_to", "train.grpo.rewards[0].function: {dir}/missing.py: no such file"),
    ("my_rewards.py:nowhere", "python reward {dir}/my_rewards.py:nowhere: the file defines no function 'nowhere'"),
    ("my_rewards.py:not_a_function", "python reward {dir}/my_rewards.py:not_a_function: the file defines no function "
                                     "'not_a_function'"),
    ("my_rewards.py", "train.grpo.rewards[0].function: write it as path/to/file.py:function_name, not 'my_rewards.py'"),
    ("syntax.py:f", "python reward {dir}/syntax.py failed to import: SyntaxError: "),
    ("notes.txt:f", "python reward {dir}/notes.txt: cannot be imported as Python (name it .py)"),
])
def test_python_reward_load_errors_are_one_line(tmp_path, function, message):
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    (tmp_path / "syntax.py").write_text("def f(:\n")
    (tmp_path / "notes.txt").write_text("def f(*a): return []\n")
    with pytest.raises(UserError) as err:
        build_rewards(grpo({"preset": "python", "function": function}, allow_python=True), tmp_path)
    assert str(err.value).startswith(message.format(dir=tmp_path.resolve())) and "\n" not in str(err.value)


@pytest.mark.parametrize("function, message", [
    ("broken", "python reward {file}:broken raised ZeroDivisionError (line 12): division by zero"),
    ("short", "python reward {file}:short returned 1 values for 2 completions; return one float per completion"),
    ("words", "python reward {file}:words returned a str ('good'); each value must be a number (or None to skip the row)"),
])
def test_python_reward_call_errors_name_the_file_and_function(tmp_path, function, message):
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    (func,), _ = build_rewards(grpo({"preset": "python", "function": f"my_rewards.py:{function}"}, allow_python=True),
                               tmp_path)
    with pytest.raises(RewardError) as err:
        func(prompts=["a", "b"], completions=["1", "2"], answer=["1", "2"])
    assert str(err.value) == message.format(file=tmp_path.resolve() / "my_rewards.py")
    assert err.value.cause.value == "user"
