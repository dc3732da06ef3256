"""GPU-only checks (marked `gpu`; skipped without CUDA). Run through the device tool:
    source bench/gpu_setup.sh && python3 -m pytest -m gpu tests/gpu -q
"""

import gc

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GIB = 1024**3


@pytest.fixture(autouse=True)
def _clean_gpu():
    yield
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
    gc.collect()
    torch.cuda.empty_cache()


def test_7b_weight_estimate_matches_allocation(tmp_path):
    """Config-only Llama-2-7B: 4-bit nf4 weights as allocated vs predicted, with and without double quant."""
    from transformers import AutoConfig

    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.model.shape import model_shape
    from qlora_studio.core.planner.estimate import estimate
    from qlora_studio.core.model.loading import load_base_model
    from qlora_studio.core.model.sources import resolve_model_source
    from shapes import shape_folder

    folder = shape_folder("llama-2-7b", tmp_path)
    shape = model_shape(AutoConfig.from_pretrained(folder))
    measured = {}
    for dq in (True, False):
        config = RunConfig.model_validate({"model": {"name_or_path": str(folder), "random_init": True},
                                           "quantization": {"double_quant": dq}})
        gc.collect()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        model = load_base_model(config, resolve_model_source(config.model), torch.device("cuda", 0), torch.bfloat16)
        gc.collect()
        torch.cuda.empty_cache()
        measured[dq] = torch.cuda.memory_allocated() - before
        del model
        predicted = estimate(shape, double_quant=dq).weights_bytes
        assert abs(predicted / measured[dq] - 1) < 0.02, (dq, predicted / GIB, measured[dq] / GIB)
    saving = measured[False] - measured[True]
    predicted_saving = estimate(shape, double_quant=True).double_quant_saving_bytes
    assert abs(predicted_saving / saving - 1) < 0.05, (predicted_saving, saving)


def test_training_reports_vram(tiny_config):
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.runs.store import RunFolder

    result = run_training(tiny_config.with_overrides({"train.device": "cuda"}))
    assert result.status == "finished", result.error
    metrics = RunFolder(result.run_dir).read_metrics()
    for key in ("vram_allocated_gb", "vram_reserved_gb", "vram_peak_gb"):
        assert all(m[key] > 0 for m in metrics), key


def test_real_out_of_memory_is_survived(tmp_path):
    """A real CUDA OOM under a tight memory fraction: micro-batch halves until it fits, same effective batch."""
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.runs.store import RunFolder
    from qlora_studio.resources import sample_path
    from shapes import shape_folder

    folder = shape_folder("qwen2.5-0.5b", tmp_path)
    config = RunConfig.model_validate({
        "model": {"name_or_path": str(folder), "random_init": True},
        "data": {"path": str(sample_path("dates")), "max_length": 256, "validation_split": 0, "packing": "off"},
        "train": {"micro_batch_size": 64, "grad_accum": 1, "max_steps": 3, "save_every_steps": 100,
                  "gradient_checkpointing": False},
        "output_dir": str(tmp_path / "runs"),
    })
    torch.cuda.set_per_process_memory_fraction(4 * GIB / torch.cuda.get_device_properties(0).total_memory, 0)
    events = []
    result = run_training(config, events.append)
    assert result.status == "finished", result.error
    changes = [e for e in events if e.type == "settings_changed" and e.reason == "out_of_memory"]
    assert changes, "expected at least one out-of-memory recovery"
    metrics = RunFolder(result.run_dir).read_metrics()
    assert {m["micro_batch_size"] * m["grad_accum"] for m in metrics} == {64}
    assert metrics[-1]["micro_batch_size"] < 64
