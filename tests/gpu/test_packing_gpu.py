"""Packing, varlen attention and the long-context levers on a CUDA GPU (marked `gpu`). Run through the device tool:
    source bench/gpu_setup.sh && python3 -m pytest -m gpu tests/gpu -q
"""

import gc

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def _clean_gpu():
    yield
    gc.collect()
    torch.cuda.empty_cache()


def test_torch_varlen_kernel_equals_per_row_attention():
    """The one-launch kernel (torch.nn.attention.varlen) against one causal SDPA call per row, in
    bf16 with grouped-query heads: outputs and gradients agree to bf16 rounding."""
    from qlora_studio.core.model.attention import _one_launch, _per_row, _torch_varlen, varlen_kernel_available

    assert varlen_kernel_available("cuda"), "torch has no varlen_attn: the packed path falls back to per-row SDPA"
    g = torch.Generator(device="cuda").manual_seed(0)
    bounds = [0, 300, 301, 1400, 2048]
    q = torch.randn(1, 32, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    k = torch.randn(1, 8, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    v = torch.randn(1, 8, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    fast = _one_launch(_torch_varlen(), q, k, v, cu, 1099, 128**-0.5)
    (fast.float() ** 2).sum().backward()
    fast_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    rows = _per_row(q, k, v, bounds, 128**-0.5, 0.0)
    (rows.float() ** 2).sum().backward()
    torch.testing.assert_close(fast, rows, rtol=2e-2, atol=2e-2)
    for a, b in zip(fast_grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)


def test_packed_run_on_cuda_uses_varlen_and_liger(tiny_config):
    """The whole run on the GPU: packed micro-batches through the varlen kernel, the prediction in
    run_started, losses that fall, the measured peak near the prediction's PyTorch part."""
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.training.store import RunFolder

    events = []
    result = run_training(tiny_config.with_overrides({"train.device": "cuda", "train.max_steps": 8}), events.append)
    assert result.status == "finished", result.error
    started = next(e for e in events if e.type == "run_started")
    assert "packed micro-batches" in started.batching and "varlen" in started.batching
    assert started.predicted_total_gb and "PyTorch peak" in started.prediction
    metrics = RunFolder(result.run_dir).read_metrics()
    assert metrics[-1]["loss"] < metrics[0]["loss"] and all(m["tokens_per_batch"] == 512 for m in metrics)


def test_offloaded_checkpoints_and_tiled_mlp_train_on_cuda(tiny_config, monkeypatch):
    """train.offload_checkpoints, train.tiled_mlp and train.chunked_loss on, bf16 mixed precision: pinned
    host memory, nested checkpoints and the chunked loss work on CUDA, and give the losses of a run
    without them."""
    from qlora_studio.core.planner import plan
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.training.store import RunFolder

    monkeypatch.setattr(plan, "MLP_TILE_TOKENS", 128)  # tiles of 128 tokens in 512-token micro-batches

    base = tiny_config.with_overrides({"train.device": "cuda", "train.max_steps": 4, "lora.dropout": 0.0,
                                       "data.max_length": 256, "train.micro_batch_size": 2})
    plain = run_training(base.with_overrides({"run_name": "plain", "train.offload_checkpoints": "off"}))
    events = []
    levers = run_training(base.with_overrides({"run_name": "levers", "train.offload_checkpoints": "on",
                                               "train.tiled_mlp": "on", "train.chunked_loss": "on"}), events.append)
    assert plain.status == levers.status == "finished", (plain.error, levers.error)
    batching = next(e for e in events if e.type == "run_started").batching
    assert "checkpoints offloaded to CPU" in batching and "MLP in 128-token tiles" in batching
    assert "chunked loss" in batching
    losses = [[m["loss"] for m in RunFolder(r.run_dir).read_metrics()] for r in (plain, levers)]
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)


def test_real_out_of_memory_halves_the_packed_token_budget(tmp_path):
    """A real CUDA OOM in a packed run under a tight memory fraction: the token budget halves and
    grad_accum doubles until it fits, each step still training on the same number of tokens."""
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.training.store import RunFolder
    from qlora_studio.resources import sample_path
    from shapes import shape_folder

    folder = shape_folder("qwen2.5-0.5b", tmp_path)
    config = RunConfig.model_validate({
        "model": {"name_or_path": str(folder), "random_init": True},
        "data": {"path": str(sample_path("dates")), "max_length": 256, "validation_split": 0},
        "train": {"micro_batch_size": 64, "grad_accum": 1, "max_steps": 3, "save_every_steps": 100,
                  "gradient_checkpointing": False},
        "output_dir": str(tmp_path / "runs"),
    })
    torch.cuda.set_per_process_memory_fraction(4 * 1024**3 / torch.cuda.get_device_properties(0).total_memory, 0)
    try:
        events = []
        result = run_training(config, events.append)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert result.status == "finished", result.error
    changes = [e for e in events if e.type == "settings_changed" and e.reason == "out_of_memory"]
    assert changes and all("tokens_per_batch" in c.changes for c in changes)
    metrics = RunFolder(result.run_dir).read_metrics()
    assert {m["tokens_per_batch"] * m["grad_accum"] for m in metrics} == {64 * 256}
