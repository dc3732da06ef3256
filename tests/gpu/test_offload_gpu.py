"""Checkpoints offloaded on a side stream (training.offload) on a CUDA GPU (marked `gpu`):
the gradients are those of checkpoints kept on the GPU, and the checkpoints do leave the GPU.
    source bench/gpu_setup.sh && python3 -m pytest -m gpu tests/gpu/test_offload_gpu.py -q
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def grads_and_held(model, ids, offload: bool, prefetch: bool = False):
    """Every parameter's gradient, and what the forward leaves on the GPU for the backward (the
    checkpoints: a peak would be the recomputed layer's attention, the same either way)."""
    from qlora_studio.core.model.patches import RunPatches
    from qlora_studio.core.training.offload import use_async_offload

    model.activation_checkpointing_disable()
    use_async_offload(model, RunPatches(), prefetch=prefetch)
    model.activation_checkpointing_enable({"use_reentrant": False}, offload=offload)
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    loss.backward()
    torch.cuda.synchronize()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, held


def test_async_offload_gives_the_same_gradients_and_frees_the_checkpoints():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=1000, max_position_embeddings=8192,
                         attn_implementation="eager")
    model = LlamaForCausalLM(config).cuda()
    model.train()
    ids = torch.randint(0, 1000, (1, 4096), device="cuda")
    kept, kept_held = grads_and_held(model, ids, offload=False)
    moved, moved_held = grads_and_held(model, ids, offload=True)
    again, _ = grads_and_held(model, ids, offload=True)  # the wrapper is idempotent over Trainer segments
    fetched, fetched_held = grads_and_held(model, ids, offload=True, prefetch=True)
    for name, grad in kept.items():
        torch.testing.assert_close(moved[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(again[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(fetched[name], grad, rtol=1e-4, atol=1e-6, msg=name)  # a layer early, the same
    hidden_state = 4096 * 512 * 4  # fp32 residual stream
    assert kept_held - moved_held > 6 * hidden_state, (kept_held, moved_held)  # the 8 checkpoints left the GPU
    assert abs(fetched_held - moved_held) < hidden_state  # prefetching starts in the backward, not before
