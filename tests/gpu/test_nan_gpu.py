"""The NaN guard on a GPU (marked `gpu`; skipped without CUDA): bf16 and fp16 mixed precision, where
fp16's loss scaler skips overflowing steps by itself and must not be taken for a divergence.
    source bench/gpu_setup.sh && python3 -m pytest -m gpu tests/gpu/test_nan_gpu.py -q
"""

import pytest
import torch
from safetensors.torch import load_file

from qlora_studio.core.errors import FailureCause
from qlora_studio.core.training.runner import run_training
from qlora_studio.core.runs.store import RunFolder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture()
def gpu_config(tiny_config):
    return tiny_config.with_overrides({"train.device": "cuda", "train.save_every_steps": 1, "train.max_steps": 8})


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_absurd_learning_rate_on_the_gpu_fails_with_cause_nan(gpu_config, dtype):
    result = run_training(gpu_config.with_overrides({"train.learning_rate": 1e30,
                                                     "quantization.compute_dtype": dtype}))
    assert result.status == "failed" and result.cause is FailureCause.NAN, result.error
    run = RunFolder(result.run_dir)
    latest = run.latest_checkpoint()
    assert latest is not None and int(latest.name.split("-")[1]) < result.step
    weights = load_file(latest / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_fp16_loss_scaling_is_not_a_divergence(gpu_config):
    """A sane fp16 run finishes: the scaler's skipped overflow steps (its scale starts at 65536) pass."""
    result = run_training(gpu_config.with_overrides({"train.learning_rate": 2e-4, "quantization.compute_dtype": "float16"}))
    assert result.status == "finished", result.error
