"""The input embedding table in 4-bit NF4 (quantization.embeddings): what the planner saves, when
it turns it on by itself, and a run that trains with it."""

from __future__ import annotations

import pytest
import torch

from qlora_studio.core.config import RunConfig
from qlora_studio.core.planner.estimate import GIB
from qlora_studio.core.planner.fit import make_it_fit
from qlora_studio.core.planner.plan import estimate_config
from shapes import shape_folder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {name: shape_folder(name, root) for name in ("llama-3.1-8b", "llama-3.2-1b")}


def config_for(folder, **quantization) -> RunConfig:
    return RunConfig.model_validate({"model": {"name_or_path": str(folder)}, "data": {"max_length": 2048},
                                     "quantization": quantization,
                                     "train": {"micro_batch_size": 4, "grad_accum": 1, "offload_checkpoints": "off",
                                               "tiled_mlp": "off"}})


def test_the_planner_counts_the_nf4_table(shapes):
    plain = estimate_config(config_for(shapes["llama-3.1-8b"], embeddings="off"), 24)
    nf4 = estimate_config(config_for(shapes["llama-3.1-8b"], embeddings="on"), 24)
    table = 128256 * 4096
    assert plain.weights_bytes - nf4.weights_bytes == pytest.approx(table * 2 - table // 2 - table // 64 * 4, abs=4 * 2**20)
    assert 0.70 * GIB < plain.total_bytes - nf4.total_bytes < 0.74 * GIB  # with the allocator slack on it
    assert "input embeddings in NF4" in nf4.assumptions() and "NF4" not in plain.assumptions()
    tied = estimate_config(config_for(shapes["llama-3.2-1b"], embeddings="on"), 24)  # the head is the table
    assert not tied.embedding_4bit


def test_auto_quantizes_the_table_only_when_the_run_would_not_fit(shapes):
    config = config_for(shapes["llama-3.1-8b"])  # embeddings: auto
    roomy = estimate_config(config, 24)
    assert not roomy.embedding_4bit
    tight = (roomy.total_bytes - 0.4 * GIB) / GIB  # 0.7 GiB saved covers it, halving the micro-batch is not needed
    planned = estimate_config(config, tight)
    assert planned.embedding_4bit and planned.fits(tight)
    assert any("4-bit NF4" in line for line in planned.decisions)
    fitted = make_it_fit(config.with_overrides({"train.grad_accum": 4}), tight)
    assert fitted.config.train.micro_batch_size == 4 and fitted.estimate.embedding_4bit  # free in speed: taken first
    assert "input embeddings in 4-bit NF4" in fitted.message


def test_quantized_table_looks_up_the_dequantized_rows_and_saves_no_weight():
    from bitsandbytes.functional import dequantize_4bit
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora_studio.core.model.embedding import quantize_input_embeddings

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=3000,
                                         tie_word_embeddings=False))
    original = model.get_input_embeddings().weight.detach().clone()
    freed = quantize_input_embeddings(model)
    table = model.get_input_embeddings()
    assert freed > 0.8 * original.numel() * original.element_size()  # 32-bit here: 4 bits and a scale per 64 left
    ids = torch.tensor([[0, 7, 2999, 1500, 7]])
    rows = table(ids)
    whole = dequantize_4bit(table.weight.data, table.weight.quant_state).view(3000, 128)
    assert torch.equal(rows, whole[ids].to(rows.dtype))  # the row gather dequantizes exactly those rows
    assert (rows - original[ids]).norm() / original[ids].norm() < 0.12  # NF4's error on normal weights
    assert not any("embed_tokens" in key for key in model.state_dict())


def test_a_run_trains_and_saves_with_the_nf4_table(tiny_config):
    from qlora_studio.core.training.runner import run_training

    events = []
    config = tiny_config.with_overrides({"train.max_steps": 3, "data.validation_split": 0.0,
                                         "quantization.embeddings": "on"})
    result = run_training(config, events.append)
    assert result.status == "finished", result.error
    assert result.adapter_dir
    assert any("input embedding table in 4-bit NF4" in getattr(e, "message", "") for e in events)
