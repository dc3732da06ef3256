"""Exports people load: K-quants through llama.cpp's quantizer, Qwen3 in the GGUF writer, and the
parity check that answers the run's held-out rows with the run and with the export side by side.

The tests that run llama.cpp skip without llama-cpp-python (the `gguf` extra; CI does not build
it, about ten minutes on two cores): `pip install 'qlora-studio[gguf]'` runs them."""

import json
import shutil

import pytest
import torch

from qlora_studio.core.after.export import ExportError, llamacpp
from qlora_studio.core.after.export.gguf_file import write_gguf
from qlora_studio.core.after.export.parity import check_parity, save_parity
from qlora_studio.core.after.export.run import export_run, gguf_blocker
from qlora_studio.core.after.adapters import locate_adapter

needs_llama_cpp = pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python not installed (the gguf extra)")

BROKEN_TEMPLATE = "{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}"  # roles and end-of-turn lost


@pytest.fixture(scope="module")
def merged(tiny_run, tmp_path_factory):
    ref = locate_adapter(tiny_run.run_dir)
    return ref, export_run(ref, "merged", tmp_path_factory.mktemp("parity") / "merged", dtype=torch.float32)


def broken_copy(folder, to):
    """The same weights with the chat template replaced: what a lost template does to an export."""
    shutil.copytree(folder, to)
    config = json.loads((to / "tokenizer_config.json").read_text())
    config["chat_template"] = BROKEN_TEMPLATE
    (to / "tokenizer_config.json").write_text(json.dumps(config))
    (to / "chat_template.jinja").unlink(missing_ok=True)
    return to


def test_parity_tells_a_good_export_from_one_that_lost_its_template(merged, tmp_path):
    ref, folder = merged
    good = check_parity(ref, folder, "merged", limit=12, max_new_tokens=12)
    bad = check_parity(ref, broken_copy(folder, tmp_path / "broken"), "merged", limit=12, max_new_tokens=12)
    assert good.data == "validation split" and good.rows == bad.rows > 0
    assert good.agreement >= 0.75 and bad.agreement < good.agreement
    assert good.first_difference is None or good.first_difference["tuned"] != good.first_difference["exported"]
    assert bad.first_difference is not None and bad.first_difference["row"] < bad.rows
    assert "exact match" in "\n".join(good.lines())
    saved = save_parity(bad, tmp_path)
    assert json.loads(saved.read_text())["checks"][0]["agreement"] == bad.agreement


def test_a_k_quant_without_llama_cpp_says_what_to_install_before_merging(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(ExportError, match=r"pip install 'qlora-studio\[gguf\]'"):
        export_run(tiny_run.run_dir, "gguf", tmp_path / "m.gguf", quant="q4_k_m")
    assert list(tmp_path.iterdir()) == []  # refused before the merge started


def build_tiny_qwen3(folder):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_architectures_the_writer_cannot_do_are_named_with_the_reason(tiny_run):
    from qlora_studio.core.after.export.gguf_file import gguf_unsupported

    assert gguf_blocker(locate_adapter(tiny_run.run_dir)) is None
    assert gguf_unsupported({"architectures": ["Qwen3ForCausalLM"]}) is None
    assert "Gemma 2 needs its norm offset" in gguf_unsupported({"architectures": ["Gemma2ForCausalLM"]})
    assert "convert_hf_to_gguf.py" in gguf_unsupported({"architectures": ["Phi3ForCausalLM"]})


@needs_llama_cpp
def test_qwen3_gguf_computes_in_llama_cpp_what_transformers_computes(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = build_tiny_qwen3(tmp_path / "qwen3")
    path = write_gguf(folder, tmp_path / "qwen3-f16.gguf", "f16")
    ids = [2, 45, 97, 130, 8, 300, 21]
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)(torch.tensor([ids])).logits[0]
    llm = llamacpp._llama_cpp().Llama(model_path=str(path), n_ctx=64, verbose=False, logits_all=True)
    try:
        llm.eval(ids)
        got = torch.tensor(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert float((got[-1] - expected[-1]).norm() / expected[-1].norm()) < 0.01  # f16 weights: 0.13% measured


@needs_llama_cpp
@pytest.mark.parametrize("quant", ["q4_k_m", "q5_k_m", "q6_k"])
def test_k_quants_are_written_by_llama_cpp_and_answer(merged, tmp_path, quant):
    from gguf import GGUFReader

    _, folder = merged
    path = write_gguf(folder, tmp_path / f"tiny-{quant}.gguf", quant)
    file_type = {k: f.contents() for k, f in GGUFReader(str(path)).fields.items()}["general.file_type"]
    assert file_type == getattr(llamacpp._llama_cpp(), llamacpp.K_QUANTS[quant])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"tiny-{quant}.gguf"]  # the f16 step and partials gone
    replies = llamacpp.gguf_replies(path, [[{"role": "user", "content": "Normalize the date: March 5, 2021"}]], 8)
    assert len(replies) == 1 and isinstance(replies[0][0], str)


@needs_llama_cpp
def test_gguf_parity_drops_when_the_template_is_lost(merged, tmp_path):
    ref, folder = merged
    good = check_parity(ref, write_gguf(folder, tmp_path / "good.gguf", "f16"), "gguf", limit=12, max_new_tokens=12)
    broken = write_gguf(broken_copy(folder, tmp_path / "broken"), tmp_path / "bad.gguf", "f16")
    bad = check_parity(ref, broken, "gguf", limit=12, max_new_tokens=12)
    assert good.agreement >= 0.75 and bad.agreement < good.agreement
