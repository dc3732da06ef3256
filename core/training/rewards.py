"""GRPO's rewards: the presets of `train.grpo.rewards` (config/methods.py) turned into reward
functions for TRL's GRPOTrainer, and the same scores for one sampled answer (the probe grid).

TRL calls each reward as f(prompts=, completions=, completion_ids=, **columns), the dataset's other
columns arriving as lists (ours carry the reference answer as `answer`, None where a row has none),
and logs it as rewards/<f.__name__>/mean. Each reward here is a small callable class, not a closure,
so that it pickles (TRL's async rollout worker sends reward functions to a spawned process), named
after its preset. A reward returns None for a row it cannot score (exact_match without a reference);
TRL leaves those out of the means and of the weighted total.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import traceback
from decimal import Decimal, InvalidOperation
from numbers import Real
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Sequence

from qlora_studio.core.config.methods import THINK_ANSWER_FORMAT, GrpoSettings, RewardSettings
from qlora_studio.core.errors import ConfigError, UserError

RewardFunc = Callable[..., list[float | None]]
ANSWER_COLUMN = "answer"  # the prompt rows' reference answer (None when the row has none)
TOTAL = "total"  # score_completion's weighted sum; never a reward's name
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# A number, thousands commas allowed; a sign only where it cannot be a minus between two operands.
NUMBER = re.compile(r"(?<![\w.,])[-+]?\d+(?:,\d{3})*(?:\.\d+)?")
JSON_FENCE = re.compile(r"```json[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


class RewardError(UserError):
    """A Python reward of the user's failed to import, raised, or returned the wrong thing."""


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or (conversational prompts) a list of messages whose
    content is a string or a list of {type: text, text} blocks."""
    if isinstance(completion, str):
        return completion
    return "".join(_content_text(message.get("content")) for message in completion)


def prompt_text(prompt: Any) -> str:
    """A prompt as plain text: the string itself, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [message for message in prompt if message.get("role") == "user"]
    return _content_text(users[-1].get("content")) if users else ""


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


class Reward:
    """One reward as TRL calls it; subclasses score one completion's text against its reference."""

    __name__ = "reward"  # replaced per instance by build_rewards (TRL's log name)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        answers = columns.get(ANSWER_COLUMN) or [None] * len(completions)
        return [self.score(completion_text(c), _reference(a)) for c, a in zip(completions, answers, strict=True)]

    def score(self, text: str, answer: str | None) -> float | None:
        raise NotImplementedError


def _reference(answer: Any) -> str | None:
    """A row's reference answer as text; None (no reference) for a missing or blank one."""
    if answer is None:
        return None
    text = str(answer)
    return text if text.strip() else None


class ExactMatch(Reward):
    """1.0 when the answer extracted from the completion equals the row's reference, else 0.0;
    None for a row without a reference.

    Extraction: with `pattern`, its first group (the whole match when it has no group; no match
    scores 0.0); else the last <answer>...</answer>; else, when the reference is a number, the last
    number in the completion; else the whole completion. Both sides are normalized (whitespace
    collapsed and stripped, casefolded, trailing periods dropped), and two numbers compare by value
    ("42.0" equals "42", "1,000" equals "1000"). A non-numeric reference is never matched by the
    last number: "1962-03-11" must be the whole answer, not its "11".
    """

    def __init__(self, pattern: re.Pattern[str] | None = None):
        self.pattern = pattern

    def score(self, text: str, answer: str | None) -> float | None:
        if answer is None:
            return None
        found = extract_answer(text, self.pattern, numeric=_number(normalize(answer)) is not None)
        return 1.0 if found is not None and same_answer(found, answer) else 0.0


def extract_answer(text: str, pattern: re.Pattern[str] | None = None, *, numeric: bool = False) -> str | None:
    """The part of a completion exact_match compares (ExactMatch's rule); None when `pattern` does not match."""
    if pattern is not None:
        match = pattern.search(text)
        if match is None:
            return None
        return match.group(1) if pattern.groups else match.group(0)
    tagged = ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1]
    if numeric:
        numbers = NUMBER.findall(text)
        if numbers:
            return numbers[-1]
    return text


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold().rstrip(".").rstrip()


def _number(normalized: str) -> Decimal | None:
    if not NUMBER.fullmatch(normalized):
        return None
    try:
        return Decimal(normalized.replace(",", ""))
    except InvalidOperation:
        return None


def same_answer(found: str, reference: str) -> bool:
    a, b = normalize(found), normalize(reference)
    if a == b:
        return True
    x, y = _number(a), _number(b)
    return x is not None and y is not None and x == y


class RegexReward(Reward):
    """1.0 when `pattern` occurs anywhere in the completion (re.search; inline flags such as (?i) work)."""

    def __init__(self, pattern: re.Pattern[str]):
        self.pattern = pattern

    def score(self, text: str, answer: str | None) -> float:
        return 1.0 if self.pattern.search(text) else 0.0


class FormatReward(Reward):
    """1.0 when the whole completion has the layout of `pattern` (re.fullmatch, `.` spanning lines);
    the default is <think>...</think> then <answer>...</answer>."""

    def __init__(self, pattern: re.Pattern[str]):
        self.pattern = pattern

    def score(self, text: str, answer: str | None) -> float:
        return 1.0 if self.pattern.fullmatch(text) else 0.0


class LengthReward(Reward):
    """Rewards a completion of min_chars..max_chars characters (counted after stripping outer
    whitespace): 1.0 inside the range; below it, n / min_chars (0 for an empty answer); above it,
    1 - (n - max_chars) / max_chars, so 0 from twice max_chars on. Either bound may be absent."""

    def __init__(self, min_chars: int | None, max_chars: int | None):
        self.min_chars = min_chars or 0
        self.max_chars = max_chars

    def score(self, text: str, answer: str | None) -> float:
        n = len(text.strip())
        if n < self.min_chars:
            return n / self.min_chars
        if self.max_chars is not None and n > self.max_chars:
            return max(0.0, 1.0 - (n - self.max_chars) / self.max_chars)
        return 1.0


class JsonValidReward(Reward):
    """1.0 when the completion, or the content of its first ```json fenced block, is JSON (any
    value json.loads accepts, a bare number or string included)."""

    def score(self, text: str, answer: str | None) -> float:
        fence = JSON_FENCE.search(text)
        candidates = [text] + ([fence.group(1)] if fence else [])
        return 1.0 if any(_parses(c) for c in candidates) else 0.0


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


class PythonReward(Reward):
    """The user's function(prompts, completions, answers) -> list of floats, called with plain
    strings: the last user message of each prompt, each completion's text, each reference answer
    (None where a row has none). Numbers and bools count (True is 1.0); a None skips that row, as
    in TRL. Whatever goes wrong in it is a one-line RewardError naming the file and function."""

    def __init__(self, path: Path, function: str, modules: dict[Path, ModuleType] | None = None):
        self.path = path
        self.function = function
        self._function: Callable[..., Any] | None = _load_function(path, function, modules)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_function": None}  # a module loaded from a file does not pickle: reloaded on use

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        if self._function is None:
            self._function = _load_function(self.path, self.function)
        answers = [_reference(a) for a in (columns.get(ANSWER_COLUMN) or [None] * len(completions))]
        where = f"{self.path}:{self.function}"
        try:
            values = self._function([prompt_text(p) for p in prompts], [completion_text(c) for c in completions], answers)
        except Exception as exc:  # noqa: BLE001 - the user's code: reported in one line, where it broke
            lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == self.path]
            at = f" (line {lines[-1]})" if lines else ""
            raise RewardError(f"python reward {where} raised {type(exc).__name__}{at}: {exc}") from exc
        if isinstance(values, (str, bytes, dict)) or not isinstance(values, Iterable):
            raise RewardError(f"python reward {where} returned a {type(values).__name__}; return a list with one "
                              f"float per completion")
        values = list(values)  # a list, a tuple, a numpy array, a generator
        if len(values) != len(completions):
            raise RewardError(f"python reward {where} returned {len(values)} values for {len(completions)} "
                              f"completions; return one float per completion")
        bad = next((v for v in values if v is not None and not isinstance(v, Real)), None)
        if bad is not None:
            raise RewardError(f"python reward {where} returned a {type(bad).__name__} ({bad!r:.40}); each value must "
                              f"be a number (or None to skip the row)")
        return [None if v is None else float(v) for v in values]


def _load_function(path: Path, name: str, modules: dict[Path, ModuleType] | None = None) -> Callable[..., Any]:
    """Imports the user's file, once per `modules` (one build: rewards from one file share its
    state), registered under a name of its own so that its classes pickle, and returns `name`."""
    modules = {} if modules is None else modules
    if path not in modules:
        module_name = "qlora_studio_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise RewardError(f"python reward {path}: cannot be imported as Python (name it .py)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's code: reported in one line
            sys.modules.pop(module_name, None)
            raise RewardError(f"python reward {path} failed to import: {type(exc).__name__}: {exc}") from exc
        modules[path] = module
    function = getattr(modules[path], name, None)
    if not callable(function):
        raise RewardError(f"python reward {path}:{name}: the file defines no function {name!r}")
    return function


def _field(index: int) -> str:
    return f"train.grpo.rewards[{index}]"


def _compile(reward: RewardSettings, index: int, default: str | None = None) -> re.Pattern[str] | None:
    pattern = reward.pattern or default
    if pattern is None:
        return None
    try:
        return re.compile(pattern, re.DOTALL if reward.preset == "format" else 0)
    except re.error as exc:
        raise ConfigError(f"{_field(index)}.pattern: {pattern!r} is not a valid regular expression ({exc})") from None


def _split_function(reward: RewardSettings, index: int) -> tuple[str, str]:
    """'path/to/file.py:name' as (file, name); the last colon splits, so C:\\x\\f.py:name works."""
    file, _, name = (reward.function or "").rpartition(":")
    if not file or not name.isidentifier():
        raise ConfigError(f"{_field(index)}.function: write it as path/to/file.py:function_name, not {reward.function!r}")
    return file, name


def reward_names(settings: GrpoSettings) -> list[str]:
    """Each reward's name as TRL logs it (rewards/<name>/mean): its preset, or a python reward's
    function name; a repeated name gets _2, _3 in order. Loads no code."""
    names: list[str] = []
    for index, reward in enumerate(settings.rewards):
        base = _split_function(reward, index)[1] if reward.preset == "python" else reward.preset
        name, n = base, 1
        while name in names or name == TOTAL:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def check_rewards(settings: GrpoSettings, has_answers: bool) -> None:
    """The checks that need no code run, for before the model loads: every regex compiles, every
    python reward has the user's consent, and exact_match has reference answers to compare with
    (`has_answers`: some row of the dataset has one). Raises ConfigError naming the reward."""
    for index, reward in enumerate(settings.rewards):
        _compile(reward, index)
        if reward.preset == "python":
            _consent(settings, reward, index, _split_function(reward, index)[0])
        if reward.preset == "exact_match" and not has_answers:
            raise ConfigError(f"{_field(index)}: exact_match compares with each row's reference answer, but no row "
                              f"of the dataset has one; give the rows an answer column (or a completion), or "
                              f"choose another reward preset")


def _consent(settings: GrpoSettings, reward: RewardSettings, index: int, file: str | Path) -> None:
    if not settings.allow_python_rewards:
        raise ConfigError(f"{_field(index)}: a python reward runs code from {file}; set "
                          f"train.grpo.allow_python_rewards: true (or say yes in the window) to allow it")


def build_rewards(settings: GrpoSettings, base_dir: str | Path) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions for GRPOTrainer(reward_funcs=) and their weights for
    GRPOConfig(reward_weights=), in config order. A python reward's file is resolved against
    `base_dir` (the config file's folder) and imported here, and only with allow_python_rewards."""
    funcs: list[RewardFunc] = []
    modules: dict[Path, ModuleType] = {}  # each python file imported once
    for index, (reward, name) in enumerate(zip(settings.rewards, reward_names(settings), strict=True)):
        preset = reward.preset
        if preset == "exact_match":
            func: Reward = ExactMatch(_compile(reward, index))
        elif preset == "regex":
            func = RegexReward(_compile(reward, index))  # type: ignore[arg-type]
        elif preset == "format":
            func = FormatReward(_compile(reward, index, THINK_ANSWER_FORMAT))  # type: ignore[arg-type]
        elif preset == "length":
            func = LengthReward(reward.min_chars, reward.max_chars)
        elif preset == "json_valid":
            func = JsonValidReward()
        else:
            file, function = _split_function(reward, index)
            path = Path(file).expanduser()
            path = (path if path.is_absolute() else Path(base_dir) / path).resolve()
            _consent(settings, reward, index, path)
            if not path.is_file():
                raise ConfigError(f"{_field(index)}.function: {path}: no such file")
            func = PythonReward(path, function, modules)
        func.__name__ = name
        funcs.append(func)
    return funcs, [reward.weight for reward in settings.rewards]


def score_completions(settings: GrpoSettings, prompts: Sequence[Any], completions: Sequence[Any],
                      answers: Sequence[Any], *, base_dir: str | Path = ".",
                      rewards: tuple[list[RewardFunc], list[float]] | None = None) -> list[dict[str, float | None]]:
    """Each completion's rewards by name plus "total", the weighted sum as GRPO trains on it. A
    reward that skips the row (exact_match without an answer) is None and left out of the total;
    the total is None when every reward skipped. Pass `rewards` (build_rewards' result) to score
    several batches without importing a python reward again."""
    funcs, weights = rewards or build_rewards(settings, base_dir)
    columns = {ANSWER_COLUMN: list(answers)}
    per_reward = [f(prompts=list(prompts), completions=list(completions), completion_ids=None, **columns) for f in funcs]
    scores: list[dict[str, float | None]] = []
    for row in range(len(completions)):
        values = {f.__name__: column[row] for f, column in zip(funcs, per_reward, strict=True)}
        counted = [w * v for w, v in zip(weights, values.values(), strict=True) if v is not None]
        scores.append({**values, TOTAL: sum(counted) if counted else None})
    return scores


def score_completion(settings: GrpoSettings, prompt: Any, completion: Any, answer: str | None, *,
                     base_dir: str | Path = ".") -> dict[str, float | None]:
    """One sampled answer's rewards by name and their weighted "total" (the probe grid shows them beside it)."""
    return score_completions(settings, [prompt], [completion], [answer], base_dir=base_dir)[0]
