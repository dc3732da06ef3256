"""The bundled samples (resources/sample_data): generate.py rebuilds them byte for byte, each one
resolves as sample:<name>, and each has the rows its training method reads."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from qlora_studio.core.data.sources import resolve_data_path
from qlora_studio.resources import SAMPLE_DATA, sample_names

SUM = re.compile(r"(\d+) ([-+*]) (\d+)")
SAMPLES = {"dates", "dates-eval", "dates-pairs", "dates-pairs-eval", "dates-kto", "arithmetic", "arithmetic-eval"}


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE_DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_regenerating_gives_byte_identical_files(tmp_path):
    spec = importlib.util.spec_from_file_location("generate_samples", SAMPLE_DATA / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.write_all(tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{name}.jsonl" for name in SAMPLES)
    for name in written:
        assert (tmp_path / name).read_bytes() == (SAMPLE_DATA / name).read_bytes(), f"{name}: run generate.py"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_resolves_and_is_small(name):
    assert set(sample_names()) == SAMPLES
    path = Path(resolve_data_path(f"sample:{name}"))
    assert path == SAMPLE_DATA / f"{name}.jsonl" and path.stat().st_size < 100_000


# dates-pairs' `chosen` is all ISO dates, which pyarrow's JSON reader types as timestamps
# ("1903-06-01 00:00:00" read back): data/sources.py keeps the strings as written.
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_reads_back_as_written(name):
    from qlora_studio.core.config.schema import DataSettings
    from qlora_studio.core.data.sources import load_parts

    (part,) = load_parts(DataSettings(path=f"sample:{name}"))
    assert part.dataset.to_list() == rows(name)


def test_preference_and_unpaired_rows():
    train, held_out = rows("dates-pairs"), rows("dates-pairs-eval")
    assert (len(train), len(held_out)) == (300, 50)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    for row in train + held_out:
        assert set(row) == {"prompt", "chosen", "rejected"} and row["chosen"] != row["rejected"]
        assert len(row["chosen"]) == 10 and row["chosen"][4] == "-"  # the bare ISO date
    kto = rows("dates-kto")
    assert len(kto) == 300 and all(set(r) == {"prompt", "completion", "label"} for r in kto)
    labels = [r["label"] for r in kto]
    assert 100 < sum(labels) < 200 and all(isinstance(label, bool) for label in labels)


def test_arithmetic_answers_are_right_and_scored_by_exact_match():
    from qlora_studio.core.config.methods import GrpoSettings
    from qlora_studio.core.training.rewards import build_rewards

    train, held_out = rows("arithmetic"), rows("arithmetic-eval")
    assert (len(train), len(held_out)) == (300, 50)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    (exact,), _ = build_rewards(GrpoSettings(), ".")  # the default reward
    for row in train + held_out:
        a, op, b = SUM.search(row["prompt"]).groups()
        assert row["answer"] == str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op])
    prompts, answers = [r["prompt"] for r in held_out], [r["answer"] for r in held_out]
    worked = [f"{SUM.search(p).group()} = {a}" for p, a in zip(prompts, answers)]  # "17 + 25 = 42"
    assert exact(prompts=prompts, completions=worked, answer=answers) == [1.0] * 50
    assert exact(prompts=prompts, completions=[str(int(a) + 1) for a in answers], answer=answers) == [0.0] * 50
