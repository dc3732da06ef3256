"""Property tests of the config loader: whatever a YAML file or a --set override holds, the loader
returns a config or raises a `UserError` with a one-line message; never another exception, never
a hang. Bounded for CI (examples per property below; no per-example deadline on a shared machine)."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qlora_studio.core.config import RunConfig, absolute_paths, load_config
from qlora_studio.core.errors import UserError

FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # no lone surrogates: files are UTF-8
numbers = st.one_of(st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.one_of(text, st.integers()), inner, max_size=4)),
                     max_leaves=12)
DEFAULTS = RunConfig().model_dump(mode="json")
KEYS = [(section, key) for section, values in DEFAULTS.items() if isinstance(values, dict) for key in values]


def holds_the_contract(load) -> RunConfig | None:
    try:
        config = load()
        # what the CLI and the window do next with a loaded config
        return absolute_paths(config)
    except UserError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
        return None


def write(tmp_path, content: str | bytes):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.timeout(180)
@FUZZ
@given(tree=trees)
@example(tree={"model": {"na\nme": 1}})  # a newline inside an unknown key
@example(tree={1: {2: 3}})  # keys that are not text
def test_any_yaml_tree(tmp_path, tree):
    path = write(tmp_path, yaml.safe_dump(tree, allow_unicode=True))
    holds_the_contract(lambda: load_config(path))


@pytest.mark.timeout(180)
@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(trees, scalars)), min_size=1, max_size=4),
       unknown=st.dictionaries(text, scalars, max_size=2), drop=st.booleans())
def test_a_real_config_with_wrong_values(tmp_path, changes, unknown, drop):
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in DEFAULTS.items()}
    for (section, key), value in changes:
        if drop:
            data[section].pop(key, None)
        else:
            data[section][key] = value
    data["train"].update(unknown)
    path = write(tmp_path, yaml.safe_dump(data, allow_unicode=True))
    holds_the_contract(lambda: load_config(path))


@pytest.mark.timeout(180)
@FUZZ
@given(content=st.one_of(text, st.binary(max_size=200)))
@example(content="train:\n  seed: 2021-13-45\n")  # a timestamp PyYAML cannot build
@example(content="a: &x [*x]\n")  # a recursive alias
@example(content="? [a, b]\n: c\n")  # an unhashable key
@example(content=b"\xff\xfe m\x00o\x00d\x00")  # UTF-16
@example(content="\ufeffmodel:\n  name_or_path: x\r\n")  # a BOM and CRLF
@example(content="data:\n  path: \"a\\0b\"\n")  # a NUL inside a path
def test_any_text_or_bytes(tmp_path, content):
    path = write(tmp_path, content)
    holds_the_contract(lambda: load_config(path))


@pytest.mark.timeout(180)
@FUZZ
@given(overrides=st.lists(st.one_of(text, st.builds(lambda k, v: f"{k[0]}.{k[1]}={v}", st.sampled_from(KEYS), text)),
                          min_size=1, max_size=3))
@example(overrides=["train.seed=2021-13-45"])
@example(overrides=["model.name_or_path.x=1"])
@example(overrides=["=3"])
def test_any_override(overrides):
    holds_the_contract(lambda: RunConfig().with_overrides(overrides))


def test_inf_and_nan_are_refused_with_the_key():
    for value in ("inf", "nan"):
        with pytest.raises(UserError, match=f"train.learning_rate: {value}: input should be a finite number"):
            RunConfig().with_overrides([f"train.learning_rate=.{value}"])
