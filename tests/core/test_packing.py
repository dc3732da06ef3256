"""Padding-free packing on a tiny 4-bit NF4 (double quant) Llama with LoRA, on the CPU in fp32:
packed losses and gradients equal padded ones, every row once an epoch, the probe catches broken
packing, the chunked loss equals the model's."""

from __future__ import annotations

import pytest
import torch

from qlora_studio.core.data.packing import (
    IGNORE_INDEX,
    PackedCollator,
    TokenBudgetBatchSampler,
    packed_row_spans,
    packing_plan,
    probe_packed_attention,
    steps_per_epoch,
    summarize_batching,
)
from qlora_studio.core.model.attention import VARLEN, register
from qlora_studio.core.model.patches import RunPatches


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matrices: one thread is many times faster than two on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_qlora(folder, attn: str = "sdpa", seed: int = 0, dtype: torch.dtype = torch.float32, dropout: float = 0.0):
    """4-bit NF4 + double quant, fp32 compute, LoRA on every linear layer with random B (so A gets
    gradients too) and no dropout unless asked (its masks would fall differently packed and padded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from qlora_studio.core.model.loading import prepare_for_adapter_training

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=dtype,
                                                 device_map={"": "cpu"}, attn_implementation="sdpa")
    prepare_for_adapter_training(model)
    model.config.use_cache = True  # as checkpoints say: the collator must guard against it
    register()
    model.set_attn_implementation(attn)
    torch.manual_seed(seed)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def make_rows(n: int, seed: int, lo: int = 4, hi: int = 40, vocab: int = 500) -> list[dict[str, list[int]]]:
    """Chat-like rows: the first third of each row is prompt (labels -100), the rest is trained."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = torch.randint(5, vocab, (length,), generator=g).tolist()
        cut = max(1, length // 3)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:]})
    return rows


def padded_batch(rows, pad_id: int = 0):
    """What an unpacked run does: ids and labels padded to the longest row, with an attention mask."""
    longest = max(len(r["input_ids"]) for r in rows)
    pad = [longest - len(r["input_ids"]) for r in rows]
    return {"input_ids": torch.tensor([r["input_ids"] + [pad_id] * p for r, p in zip(rows, pad)]),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * p for r, p in zip(rows, pad)]),
            "labels": torch.tensor([r["labels"] + [IGNORE_INDEX] * p for r, p in zip(rows, pad)])}


def per_token_nll(logits, labels):
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                            reduction="none")
    return nll, targets != IGNORE_INDEX


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def trained_targets(rows) -> int:
    return sum(sum(1 for t in r["labels"][1:] if t != IGNORE_INDEX) for r in rows)


def test_collator_layout():
    rows = [{"input_ids": [11, 12, 13], "labels": [11, 12, 13]}, {"input_ids": [], "labels": []},
            {"input_ids": [21, 22], "labels": [IGNORE_INDEX, 22]}, {"input_ids": [31], "labels": [31]}]
    batch = PackedCollator(flash_kwargs=True)(rows)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    # each row's first label is -100: no row learns to predict the next row's start
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 12, 13, IGNORE_INDEX, 22, IGNORE_INDEX]]
    assert batch["use_cache"] is False and "attention_mask" not in batch
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 6] and batch["max_length_q"] == 3
    assert packed_row_spans(batch["position_ids"]) == [(0, 3), (3, 5), (5, 6)]


@pytest.mark.parametrize("attn,equal", [(VARLEN, False), (VARLEN, True), ("sdpa", False)])
def test_per_row_losses_and_lora_gradients_match_padded(tiny_model, attn, equal, monkeypatch):
    """The packed batch (our varlen path, or transformers' dense mask) against the padded one; rows
    of one length take varlen's batched-SDPA path."""
    from qlora_studio.core.model import attention

    batched = []
    equal_rows = attention._equal_rows
    monkeypatch.setattr(attention, "_equal_rows", lambda *a, **k: batched.append(a[4]) or equal_rows(*a, **k))
    rows = make_rows(5, seed=1, lo=24 if equal else 4, hi=24 if equal else 40)
    model = load_qlora(tiny_model, "sdpa")
    model.train()
    n_items = torch.tensor(trained_targets(rows))

    padded = padded_batch(rows)
    out = model(**padded, num_items_in_batch=n_items)
    out.loss.backward()
    grads_padded = lora_grads(model)
    nll, valid = per_token_nll(out.logits.detach(), padded["labels"])
    losses_padded = [(nll[i][valid[i]].sum() / valid[i].sum()).item() for i in range(len(rows))]
    model.zero_grad(set_to_none=True)

    model.get_base_model().set_attn_implementation(attn)
    packed = PackedCollator(flash_kwargs=attn == VARLEN)(rows)
    out_p = model(**packed, num_items_in_batch=n_items)
    out_p.loss.backward()
    nll_p, valid_p = per_token_nll(out_p.logits.detach(), packed["labels"])
    losses_packed = [(nll_p[0, s:e][valid_p[0, s:e]].sum() / valid_p[0, s:e].sum()).item()
                     for s, e in packed_row_spans(packed["position_ids"])]

    assert batched == ([5] * 2 if equal else [])  # both layers saw 5 rows of 24 as one batch
    assert int(valid_p.sum()) == int(valid.sum()) == int(n_items)  # the same targets, none across rows
    assert losses_packed == pytest.approx(losses_padded, rel=1e-5, abs=1e-6)
    assert out_p.loss.item() == pytest.approx(out.loss.item(), rel=1e-5)
    grads_packed = lora_grads(model)
    assert len(grads_packed) == 2 * 7 * 2  # A and B of 7 linears in 2 layers
    for name, grad in grads_padded.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_cache_or_a_mask_breaks_packing_and_the_probe_sees_it(tiny_model):
    """Why the collator sends use_cache=False and no attention_mask: either one makes rows attend
    across their boundaries, silently; the probe that guards every run must catch both."""
    model = load_qlora(tiny_model, "sdpa")
    assert probe_packed_attention(model)[0]
    assert not probe_packed_attention(model, use_cache=True)[0]
    assert not probe_packed_attention(model, attention_mask=torch.ones(1, 12, dtype=torch.long))[0]


ARCHITECTURES = {  # config class, extra config, attn setting, planned attention, rows kept apart
    "llama": ("LlamaConfig", {}, "auto", VARLEN, True),
    "mistral-sliding-window": ("MistralConfig", {"sliding_window": 6}, "auto", "sdpa", True),  # window < row
    "opt": ("OPTConfig", {"ffn_dim": 128, "word_embed_proj_dim": 64}, "auto", VARLEN, True),
    # OPT's sdpa path builds its mask without the position ids: packed rows leak, and the probe says so
    "opt-sdpa": ("OPTConfig", {"ffn_dim": 128, "word_embed_proj_dim": 64}, "sdpa", "sdpa", False),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architectures_plans_and_the_probe(name):
    """Plain causal attention packs through varlen, sliding windows through sdpa's mask; a model
    that ignores packed positions is caught by the probe every run makes."""
    import transformers

    cls, extra, setting, attention, apart = ARCHITECTURES[name]
    config = getattr(transformers, cls)(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)
    plan = packing_plan("auto", setting, config, 64)
    assert plan.packed and plan.attention == attention, plan.reason
    assert not packing_plan("auto", "eager", config, 64).packed  # eager would hold heads x T x T
    if attention == "sdpa":  # no varlen path: auto packs only while the dense T x T work stays small
        assert not packing_plan("auto", setting, config, 4096).packed
        assert packing_plan("on", setting, config, 4096).packed
    torch.manual_seed(0)
    register()
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    ok, detail = probe_packed_attention(model, lengths=(9, 11))
    assert ok is apart, detail


def test_sampler_holds_every_row_once_per_epoch():
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(3, 200, (301,), generator=g).tolist()
    sampler = TokenBudgetBatchSampler(lengths, 512, seed=7)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # the same count every epoch, as Trainer assumes
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= 512 for b in batches)
        orders.append([tuple(b) for b in batches])
    assert orders[0] != orders[1] != orders[2]
    again = TokenBudgetBatchSampler(lengths, 512, seed=7)
    again.set_epoch(1)
    assert [tuple(b) for b in again] == orders[1]  # a pure function of (seed, epoch): resumes land alike
    assert sampler.fill() > 0.95
    split = TokenBudgetBatchSampler(lengths, 512, seed=7, batches_multiple_of=4)  # four processes
    assert len(split) % 4 == 0 and sorted(i for b in split for i in b) == list(range(len(lengths)))
    with pytest.raises(ValueError, match="longest row"):
        TokenBudgetBatchSampler(lengths, 100)


def test_an_epoch_sees_the_same_tokens_packed_or_not():
    from torch.utils.data import DataLoader

    rows = make_rows(40, seed=5)
    lengths = [len(r["input_ids"]) for r in rows]
    loader = DataLoader(rows, batch_sampler=TokenBudgetBatchSampler(lengths, 96, seed=0), collate_fn=PackedCollator())
    seen, targets = [], 0
    for batch in loader:
        assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] <= 96
        seen += [tuple(batch["input_ids"][0, s:e].tolist()) for s, e in packed_row_spans(batch["position_ids"])]
        targets += int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())  # what Trainer counts as num_items
    assert sorted(seen) == sorted(tuple(r["input_ids"]) for r in rows)
    assert targets == trained_targets(rows)
    assert steps_per_epoch(len(loader), grad_accum=4) == -(-len(loader) // 4)


def test_batching_summary_for_the_xray(tiny_config):
    lengths = [50] * 900 + [400] * 100
    packed = summarize_batching(lengths, True, tiny_config.train, tiny_config.data.model_copy(update={"max_length": 512}))
    padded = summarize_batching(lengths, False, tiny_config.train, tiny_config.data)
    assert packed.tokens_per_batch == 4 * 512 and packed.fill > 0.85
    assert packed.micro_batches < padded.micro_batches and padded.fill < 0.6
    assert "packed" in packed.describe() and "padding" in padded.describe()


def test_one_optimizer_step_packed_equals_padded(tiny_model, tmp_path):
    """The same 4 rows in one optimizer step of 2 micro-batches: padded [0,1]+[2,3] through the stock
    Trainer, packed [0,1,2]+[3] through ours. num_items_in_batch makes both the same per-token mean."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from qlora_studio.core.training.trainer import StudioTrainer

    rows = make_rows(4, seed=2)
    budget = sum(len(r["input_ids"]) for r in rows[:3])

    def args(out, **extra):
        return TrainingArguments(output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                 learning_rate=5e-2, optim="sgd", use_cpu=True, logging_steps=1, max_steps=1,
                                 save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
                                 train_sampling_strategy="sequential", seed=11, **extra)

    padded_model, packed_model = load_qlora(tiny_model), load_qlora(tiny_model)
    padded = Trainer(model=padded_model, args=args(tmp_path / "a"), train_dataset=Dataset.from_list(rows),
                     data_collator=padded_batch)
    packed = StudioTrainer(model=packed_model, args=args(tmp_path / "b", include_num_input_tokens_seen="all"),
                           train_dataset=Dataset.from_list(rows), data_collator=PackedCollator(), tokens_per_batch=budget)
    padded.train()
    packed.train()
    assert packed.batch_sampler.plan == [[0, 1, 2], [3]]
    loss = [next(r["loss"] for r in t.state.log_history if "loss" in r) for t in (padded, packed)]
    assert loss[1] == pytest.approx(loss[0], rel=1e-5)
    weights = [{n: p.detach() for n, p in m.named_parameters() if p.requires_grad} for m in (padded_model, packed_model)]
    for name, weight in weights[0].items():
        torch.testing.assert_close(weights[1][name], weight, rtol=1e-5, atol=1e-7, msg=name)
    assert packed.state.num_input_tokens_seen == sum(len(r["input_ids"]) for r in rows)


def test_chunked_loss_equals_the_models_loss(tiny_model):
    from qlora_studio.core.training.lean_loss import chunked_cross_entropy_sum, lean_causal_lm_loss, lean_loss_supported

    rows = make_rows(5, seed=1)
    n_items = torch.tensor(trained_targets(rows))
    batch = PackedCollator()(rows)
    model = load_qlora(tiny_model, VARLEN)
    model.train()
    assert lean_loss_supported(model)[0]
    reference = model(**batch, num_items_in_batch=n_items).loss
    reference.backward()
    grads = lora_grads(model)
    model.zero_grad(set_to_none=True)
    loss = lean_causal_lm_loss(model, batch, n_items)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(lora_grads(model)[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert model.get_base_model().get_output_embeddings().forward.__func__ is torch.nn.Linear.forward  # restored

    # what the chunks keep for backward at a real vocabulary: never a (tokens x vocab) tensor
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(512, 64, generator=g, requires_grad=True)
    weight = torch.randn(32000, 64, generator=g) * 0.05
    targets = torch.randint(0, 32000, (512,), generator=g)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked = chunked_cross_entropy_sum(hidden, weight, targets, 128)
    full = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    assert sum(saved.values()) - weight.numel() * 4 < 512 * 32000 * 4 / 50  # the head's weight is saved either way


def test_tiled_mlp_under_checkpointing_gives_the_same_gradients(tiny_model):
    """Long context: each layer's MLP over 16-token tiles, nested in layer checkpointing, changes
    nothing but memory."""
    from qlora_studio.core.training.speed import tile_mlps

    rows = make_rows(5, seed=1)
    batch = PackedCollator(flash_kwargs=True)(rows)
    n_items = torch.tensor(trained_targets(rows))
    grads = []
    for tiled in (False, True):
        model = load_qlora(tiny_model, VARLEN)
        model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        model.train()
        if tiled:
            assert tile_mlps(model, 16, RunPatches()) == 2 and batch["input_ids"].shape[1] > 3 * 16
        model(**batch, num_items_in_batch=n_items).loss.backward()
        grads.append(lora_grads(model))
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_norms_in_the_tiles_give_the_same_gradients(tiny_model):
    """train.experimental.tiled_norms: the input norm inside tiles of the q, k and v projections, the
    post-attention norm inside the MLP's tiles, under layer checkpointing and our adapter forward."""
    from qlora_studio.core.model.lora import lean_4bit_lora
    from qlora_studio.core.training.speed import tile_mlps, tile_norms

    rows = make_rows(5, seed=2)
    batch = PackedCollator(flash_kwargs=True)(rows)
    n_items = torch.tensor(trained_targets(rows))
    grads, calls = [], []
    for tiled in (False, True):
        model = load_qlora(tiny_model, VARLEN)
        model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        model.train()
        patches = RunPatches()
        lean_4bit_lora(model, patches)
        if tiled:
            tile_mlps(model, 16, patches)
            assert tile_norms(model, 16, patches) == 2 and batch["input_ids"].shape[1] > 3 * 16
            norm = model.get_base_model().model.layers[0].input_layernorm
            norm.register_forward_hook(lambda module, args, out: calls.append(out is args[0]))
        model(**batch, num_items_in_batch=n_items).loss.backward()
        grads.append(lora_grads(model))
    assert calls and all(calls)  # the layer's own norm call passes the sequence on: the tiles normalize it
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_loss_and_tiled_mlp_under_bf16_mixed_precision(tiny_model, tmp_path):
    """What a CUDA run does, on the CPU: bf16 weights, the Trainer's bf16 mixed precision (accelerate
    wraps the forward in autocast and returns fp32 outputs), checkpointing, MLP tiles, chunked loss.
    The chunked loss once met fp32 hidden states with the bf16 head outside autocast and failed."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from qlora_studio.core.training.speed import tile_mlps
    from qlora_studio.core.training.trainer import StudioTrainer

    rows = make_rows(6, seed=3)
    model = load_qlora(tiny_model, VARLEN, dtype=torch.bfloat16)
    assert tile_mlps(model, 16, RunPatches()) == 2
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, learning_rate=1e-3, optim="sgd",
                             use_cpu=True, bf16=True, gradient_checkpointing=True,
                             gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1, max_steps=2,
                             save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
                             include_num_input_tokens_seen="all")
    trainer = StudioTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=PackedCollator(),
                            tokens_per_batch=sum(len(r["input_ids"]) for r in rows), chunked_loss=True)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_a_run_from_before_packing_resumes_padded(tmp_path, tiny_config):
    """A run folder whose config predates data.packing trained padded batches; it resumes padded."""
    from qlora_studio.core.runs.store import RunFolder

    folder = RunFolder.create(tiny_config.with_overrides({"output_dir": str(tmp_path)}))
    text = folder.config_path.read_text().replace("  packing: auto\n", "")
    folder.config_path.write_text(text)
    assert folder.load_config().data.packing == "off"
    assert folder.load_config(["data.packing=on"]).data.packing == "on"


def test_every_patch_of_a_run_is_undone_on_any_exit(tiny_model):
    """Liger's names in the modeling module, the lean LoRA forward, MLP tiles, the offload hook and
    compiled layers all go through one RunPatches: a failure halfway through a run undoes them all,
    so a model used later in the process (an export, the Playground) runs the libraries' own code."""
    import sys

    from peft.tuners.lora.bnb import Linear4bit

    from qlora_studio.core.model.lora import lean_4bit_lora
    from qlora_studio.core.training.offload import use_async_offload
    from qlora_studio.core.training.speed import compile_decoder_layers, modeling_module, tile_mlps

    model = load_qlora(tiny_model)
    module = sys.modules[modeling_module(model)]
    original = module.LlamaRMSNorm
    linears = [m for m in model.modules() if isinstance(m, Linear4bit)]
    with pytest.raises(RuntimeError, match="halfway"):
        with RunPatches() as patches:
            patches.keep_module_names(modeling_module(model))
            module.LlamaRMSNorm = type("PatchedNorm", (original,), {})  # what apply_liger_kernel does to the module
            assert lean_4bit_lora(model, patches) == 14 and tile_mlps(model, 16, patches) == 2
            use_async_offload(model, patches)
            assert compile_decoder_layers(model, patches) == 2
            assert "forward" in vars(linears[0]) and "activation_checkpointing_enable" in vars(model)
            raise RuntimeError("failed halfway through the run")
    assert module.LlamaRMSNorm is original
    assert not any("forward" in vars(m) for m in model.modules())  # lean forwards and MLP tiles gone
    assert "activation_checkpointing_enable" not in vars(model)
    assert all(m._compiled_call_impl is None for m in model.modules())


def test_lean_4bit_lora_forward_matches_peft(tiny_model):
    """The adapter added inside the base output's GEMM gives peft's logits and LoRA gradients: in
    fp32 to rounding; in bf16 under autocast (how a CUDA run trains) at least as close to the fp32
    result as peft's own forward is. Peft's forward still runs where the lean one does not apply
    (adapters disabled)."""
    from qlora_studio.core.model.lora import lean_4bit_lora

    batch = padded_batch(make_rows(4, seed=5))
    runs = {}
    for dtype, lean in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False), (torch.bfloat16, True)):
        model = load_qlora(tiny_model, "sdpa", dtype=dtype)
        if lean:
            assert lean_4bit_lora(model, RunPatches()) == 14  # 7 linears x 2 layers
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(**batch)
            out.loss.backward()
            with model.disable_adapter():
                base = model(**batch).logits.detach()
        runs[dtype, lean] = out.logits.detach().float(), lora_grads(model), base
    reference, grads, _ = runs[torch.float32, False]
    lean_logits, lean_grads, lean_base = runs[torch.float32, True]
    torch.testing.assert_close(lean_logits, reference, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.allclose(lean_base, lean_logits, atol=1e-3)  # the adapters do change the output

    def error(run):
        logits, run_grads, _ = run
        worst = max(((run_grads[n].float() - g).norm() / g.norm()).item() for n, g in grads.items())
        return ((logits - reference).norm() / reference.norm()).item(), worst

    peft_bf16, lean_bf16 = error(runs[torch.bfloat16, False]), error(runs[torch.bfloat16, True])
    assert lean_bf16[0] <= 1.1 * peft_bf16[0] and lean_bf16[1] <= 1.1 * peft_bf16[1], (lean_bf16, peft_bf16)
    torch.testing.assert_close(runs[torch.bfloat16, True][2], runs[torch.bfloat16, False][2], rtol=0, atol=0)


def test_lora_product_gradients_with_dropout():
    """The lean adapter product's hand-written backward, dropout on and its masked input cut into
    row chunks, against finite differences (each call reseeded, so the masks are the same)."""
    from qlora_studio.core.model.lora_product import LoraProduct
    g = torch.Generator().manual_seed(0)
    x, result = torch.randn(2, 5, 16, generator=g, dtype=torch.float64), torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    a, b = torch.randn(4, 16, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)

    def product(x, result, a, b):
        torch.manual_seed(1)
        # the product adds into the base output in place: here a copy of a leaf stands for it
        return LoraProduct.apply(x, result.clone(), a, b, 0.5, 0.3, 3 * 16 * 8)  # 3 rows of 16 float64 per chunk

    inputs = tuple(t.requires_grad_() for t in (x, result, a, b))
    assert torch.autograd.gradcheck(product, inputs)

    class Viewed(torch.autograd.Function):  # as bitsandbytes' 4-bit matmul returns a biased layer's output
        @staticmethod
        def forward(ctx, t):
            return t.view(t.shape)

        @staticmethod
        def backward(ctx, grad):
            return grad

    def product_into_a_view(x, result, a, b):
        torch.manual_seed(1)
        return LoraProduct.apply(x, Viewed.apply(result.clone()), a, b, 0.5, 0.3, 3 * 16 * 8)

    torch.testing.assert_close(product_into_a_view(*inputs), product(*inputs))
    assert torch.autograd.gradcheck(product_into_a_view, inputs)
    torch.manual_seed(1)
    keep = torch.cat([torch.native_dropout(torch.ones(rows, 16, dtype=torch.float64), 0.3, True)[1] for rows in (3, 3, 3, 1)])
    expected = result + 0.5 * ((x * keep.view(2, 5, 16) / 0.7) @ a.t()) @ b.t()
    torch.testing.assert_close(product(*inputs), expected)


def test_lean_4bit_lora_saves_a_mask_not_a_dropped_copy(tiny_model):
    """With dropout, peft's forward saves a dropped-out copy of the input for every adapted linear;
    the lean one saves the input itself (already alive), a 1-byte mask and the rank-r product."""
    from qlora_studio.core.model.lora import lean_4bit_lora

    def saved_beyond_input(lean: bool) -> tuple[int, int, int]:
        model = load_qlora(tiny_model, dropout=0.25)
        if lean:
            lean_4bit_lora(model, RunPatches())
        model.train()
        layer = model.base_model.model.model.layers[0].mlp.down_proj
        x = torch.randn(3, 7, layer.in_features, requires_grad=True)
        storages = {}

        def pack(t):
            if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x).sum().backward()
        assert x.grad is not None and layer.lora_A["default"].weight.grad is not None
        r = layer.lora_A["default"].weight.shape[0]
        adapters = 4 * r * (layer.in_features + layer.out_features) + 4 * x.shape[0] * x.shape[1] * r
        return sum(storages.values()), x.numel(), adapters

    lean, numel, adapters = saved_beyond_input(True)
    peft, _, _ = saved_beyond_input(False)
    assert lean <= numel + adapters, (lean, numel, adapters)  # the bool mask and the adapter's small tensors
    assert peft >= lean + 4 * numel, (lean, peft)  # peft: at least one fp32 copy of x more


def test_lean_4bit_lora_dropout_masks_are_redrawn_alike_under_checkpointing(tiny_model):
    """The recomputed forward must draw the masks the first forward used, or the adapters'
    gradients would mix two masks: checkpointed gradients equal those kept in memory, with torch's
    non-reentrant checkpoints (the default) and its reentrant ones (train.experimental.reentrant_checkpoints)."""
    from qlora_studio.core.model.lora import lean_4bit_lora

    batch = padded_batch(make_rows(4, seed=7))
    grads = []
    for reentrant in (None, False, True):  # None: no checkpointing
        model = load_qlora(tiny_model, dropout=0.25)
        lean_4bit_lora(model, RunPatches())
        if reentrant is not None:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.train()
        torch.manual_seed(3)
        model(**batch).loss.backward()
        grads.append(lora_grads(model))
    for name, grad in grads[0].items():
        for checkpointed in grads[1:]:
            torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
