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


def attention_and_grads(fn, q, k, v):
    """fn(q, k, v) and the gradients of sum(out**2) with respect to q, k, v."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves)
    (out.float() ** 2).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


def assert_within_bf16_rounding(candidate, bf16_baseline, reference, what):
    """`candidate` (bf16) against the float32 `reference`: overall it must be as close as the bf16
    per-row path is (relative norm of the difference), and no element may be further off than a
    few times the baseline's worst element. A wrong boundary or scale is off by O(1), far outside;
    one element rounded the other way in bf16 (0.07 in 2M gradients) is inside."""
    reference = reference.float()
    scale = reference.norm()
    err, base = (candidate.float() - reference), (bf16_baseline.float() - reference)
    assert err.norm() / scale <= 2 * base.norm() / scale + 1e-3, (what, (err.norm() / scale).item(), (base.norm() / scale).item())
    assert err.abs().max() <= 4 * base.abs().max() + 1e-2, (what, err.abs().max().item(), base.abs().max().item())


def test_torch_varlen_kernel_equals_per_row_attention():
    """The one-launch kernel (torch.nn.attention.varlen) against one causal SDPA call per row, in
    bf16 with grouped-query heads: outputs and gradients are as close to a float32 per-row reference
    as bf16 per-row attention is."""
    from qlora_studio.core.model.attention import _one_launch, _per_row, _torch_varlen, varlen_kernel_available

    assert varlen_kernel_available("cuda"), "torch has no varlen_attn: the packed path falls back to per-row SDPA"
    g = torch.Generator(device="cuda").manual_seed(0)
    bounds = [0, 300, 301, 1400, 2048]
    q = torch.randn(1, 32, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 8, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, 8, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    scale = 128**-0.5
    fast = attention_and_grads(lambda q, k, v: _one_launch(_torch_varlen(), q, k, v, cu, 1099, scale), q, k, v)
    rows = attention_and_grads(lambda q, k, v: _per_row(q, k, v, bounds, scale, 0.0), q, k, v)
    exact = attention_and_grads(lambda q, k, v: _per_row(q, k, v, bounds, scale, 0.0), q.float(), k.float(), v.float())
    assert fast[0].shape == rows[0].shape == exact[0].shape
    for what, a, b, ref in zip(("output", "dq", "dk", "dv"), fast, rows, exact):
        assert_within_bf16_rounding(a, b, ref, what)
    torch.testing.assert_close(fast[0], rows[0], rtol=2e-2, atol=2e-2)  # the outputs also agree elementwise


def test_packed_run_on_cuda_uses_varlen_and_liger(tiny_config):
    """The whole run on the GPU: packed micro-batches through the varlen kernel, the prediction in
    run_started, losses that fall, the measured peak near the prediction's PyTorch part."""
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.runs.store import RunFolder

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
    from qlora_studio.core.runs.store import RunFolder

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
    from qlora_studio.core.runs.store import RunFolder
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
    # 4 GiB on top of what this process already holds (earlier tests' tensors count against the fraction)
    held = torch.cuda.memory_allocated(0)
    torch.cuda.set_per_process_memory_fraction((held + 4 * 1024**3) / torch.cuda.get_device_properties(0).total_memory, 0)
    try:
        events = []
        result = run_training(config, events.append)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    changes = [e for e in events if e.type == "settings_changed" and e.reason == "out_of_memory"]
    tried = [c.changes for c in changes]
    started = next((e for e in events if e.type == "run_started"), None)
    assert started is not None and "packed micro-batches" in started.batching, started and started.batching
    assert result.status == "finished", (result.error, f"held before: {held / 2**30:.2f} GiB", tried)
    assert changes and all("tokens_per_batch" in c for c in tried), tried
    metrics = RunFolder(result.run_dir).read_metrics()
    assert {m["tokens_per_batch"] * m["grad_accum"] for m in metrics} == {64 * 256}


def test_lora_product_on_cuda_draws_the_mask_checkpointing_redraws():
    """The lean adapter product on CUDA in bf16, dropout on and the masked input in several chunks:
    output as the formula gives with the masks the same seed draws chunk by chunk; gradients equal under
    non-reentrant checkpointing (its recompute restores the CUDA RNG, so the mask is drawn alike)."""
    from torch.utils.checkpoint import checkpoint

    from qlora_studio.core.model.lora_product import LoraProduct

    g = torch.Generator(device="cuda").manual_seed(0)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(torch.bfloat16).requires_grad_()

    x, result, a, b = leaf(1, 4500, 4096), leaf(1, 4500, 1024), leaf(16, 4096, scale=0.02), leaf(1024, 16, scale=0.02)

    def run(fn):
        torch.manual_seed(7)
        for t in (x, result, a, b):
            t.grad = None
        out = fn(x, result, a, b)
        (out.float() ** 2).sum().backward()
        return out.detach(), [t.grad.clone() for t in (x, result, a, b)]

    def product(*tensors):
        x, result, a, b = tensors  # a copy of the leaf stands for the base output the product adds into
        return LoraProduct.apply(x, result.clone(), a, b, 2.0, 0.1, 1000 * 4096 * 2)  # 4 chunks of 1,000 rows and a rest

    out, grads = run(product)
    torch.manual_seed(7)
    ones = torch.ones(1000, 4096, device="cuda", dtype=torch.bfloat16)
    keep = torch.cat([torch.native_dropout(ones[:rows], 0.1, True)[1] for rows in (1000,) * 4 + (500,)]).view(1, 4500, 4096)
    with torch.no_grad():
        expected = result.float() + 2.0 * ((x.float() * keep / 0.9) @ a.float().t()) @ b.float().t()
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    assert 0.08 < 1 - keep.float().mean().item() < 0.12
    _, checkpointed = run(lambda *t: checkpoint(product, *t, use_reentrant=False))
    for what, grad, again in zip(("x", "result", "a", "b"), grads, checkpointed):
        torch.testing.assert_close(again, grad, rtol=0, atol=0, msg=what)
