"""Export: a merged model that computes what (4-bit base + adapter) computed, GGUF files that read
back with transformers and gguf's reader, an Ollama Modelfile with the right template and stops."""

import json
from pathlib import Path

import pytest
import torch

from qlora_studio.core.after.adapters import AdapterRef, locate_adapter
from qlora_studio.core.after.export import ExportCancelled, ExportError
from qlora_studio.core.after.export.chat_format import _render_jinja, analyze_chat_template
from qlora_studio.core.after.export.gguf_file import write_gguf
from qlora_studio.core.after.export.merge import merge_to_folder
from qlora_studio.core.after.export.ollama import write_ollama
from qlora_studio.core.after.export.run import export_run
from qlora_studio.core.after.inference import InferenceSession
from qlora_studio.core.cli import main


def prompt_ids(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    text = tok.apply_chat_template([{"role": "user", "content": "Normalize the date: March 5, 2021"}],
                                   tokenize=False, add_generation_prompt=True) + "2021-"
    return tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


@torch.no_grad()
def logits_of(model, ids):
    model.eval()
    return model(input_ids=ids).logits.float()


def plain_logits(folder: Path, ids, **kwargs):
    from transformers import AutoModelForCausalLM

    return logits_of(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs), ids)


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


def reference_logits(ref: AdapterRef, ids):
    """(4-bit base + adapter, 4-bit base alone), as the app serves them."""
    session = InferenceSession(ref)
    tuned = logits_of(session.model, ids)
    with session.using(base=True):
        base = logits_of(session.model, ids)
    return tuned, base


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The shared tiny run exported once: merged, f16 and q8_0 GGUF, Ollama; with the reference logits."""
    out = tmp_path_factory.mktemp("exports")
    ref = locate_adapter(tiny_run.run_dir)
    ids = prompt_ids(ref.adapter_dir)
    tuned, base = reference_logits(ref, ids)
    progress = []
    merged = export_run(ref, "merged", out / "merged", progress=lambda f, m: progress.append(f))
    assert progress == sorted(progress) and progress[-1] == 1.0
    files = {quant: write_gguf(merged, out / f"tiny-{quant}.gguf", quant) for quant in ("f16", "q8_0")}
    return {"out": out, "ref": ref, "ids": ids, "tuned": tuned, "base": base, "merged": merged, "gguf": files}


def test_merged_model_matches_4bit_base_plus_adapter(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    merged = exported["merged"]
    model = AutoModelForCausalLM.from_pretrained(str(merged))  # plain transformers, no kwargs
    assert model.dtype == torch.float16 and model.config.use_cache
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    err = rel_err(logits_of(model.float(), exported["ids"]), exported["tuned"])
    assert err < 0.05
    assert err < 0.05 * rel_err(exported["base"], exported["tuned"])  # the adapter's change survives
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    assert "<|im_start|>" in tokenizer.chat_template
    eos = GenerationConfig.from_pretrained(str(merged)).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])


@pytest.mark.parametrize("quant, max_err", [("f16", 0.01), ("q8_0", 0.08)])
def test_gguf_reads_back(exported, quant, max_err):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    path = exported["gguf"][quant]
    reader = GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert len(reader.tensors) == 2 * 9 + 3  # per layer 4 attention + 3 MLP + 2 norms; embeddings, norm, lm_head
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == quant.upper() and types["blk.0.attn_norm.weight"] == "F32"
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.pre"] == "gpt-2"
    hf_tok = AutoTokenizer.from_pretrained(str(exported["merged"]))
    assert fields["tokenizer.chat_template"] == hf_tok.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == hf_tok.eos_token_id
    gguf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = hf_tok.apply_chat_template([{"role": "user", "content": "Is 2024-02-29 a real date?"}], tokenize=False)
    assert gguf_tok(text)["input_ids"] == hf_tok(text)["input_ids"]
    ids = exported["ids"]
    got = plain_logits(path.parent, ids, gguf_file=path.name)
    assert rel_err(got, plain_logits(exported["merged"], ids)) < max_err


def test_ollama_modelfile_names_the_gguf_and_carries_template_and_stops(exported):
    out = write_ollama(exported["gguf"]["q8_0"], exported["out"] / "ollama")
    assert (out / "model.gguf").stat().st_size == exported["gguf"]["q8_0"].stat().st_size
    assert (out / "Modelfile").read_text().splitlines()[2:] == [
        "FROM ./model.gguf",
        'TEMPLATE """{{ range .Messages }}<|im_start|>{{ .Role }}',
        "{{ .Content }}<|im_end|>",
        "{{ end }}<|im_start|>assistant",
        '"""',
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|im_start|>"',
    ]


def test_cli_export_checkpoint_and_refusals(tiny_run, tmp_path, capsys):
    assert main(["export", tiny_run.run_dir, "--checkpoint", "step-5", "--to", "adapter", "--out", str(tmp_path / "a")]) == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "adapter_model.safetensors" in files and "optimizer.pt" not in files and "tokenizer.json" in files
    assert main(["export", tiny_run.run_dir, "--to", "ollama", "--quant", "f16", "--system", "Dates only.",
                 "--out", str(tmp_path / "o")]) == 0
    assert 'SYSTEM """Dates only."""' in (tmp_path / "o" / "Modelfile").read_text()
    capsys.readouterr()
    assert main(["export", tiny_run.run_dir, "--to", "gguf", "--out", str(tmp_path / "x.bin")]) == 2
    assert "ending in .gguf" in capsys.readouterr().err
    assert main(["export", tiny_run.run_dir, "--checkpoint", "step-7", "--to", "merged", "--out", str(tmp_path / "m")]) == 2
    assert "no checkpoint at step 7" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "o"]  # nothing half-written left


def test_cancel_leaves_nothing(exported, tmp_path):
    calls = []
    with pytest.raises(ExportCancelled):
        export_run(exported["ref"], "gguf", tmp_path / "c.gguf", cancel=lambda: calls.append(1) or len(calls) > 3)
    with pytest.raises(ExportCancelled):
        write_gguf(exported["merged"], tmp_path / "d.gguf", "q8_0", cancel=lambda: calls.append(1) or len(calls) > 12)
    assert list(tmp_path.iterdir()) == []


def test_gguf_refuses_what_llama_cpp_would_not_read(exported, tmp_path):
    with pytest.raises(ExportError, match="not offered"):
        write_gguf(exported["merged"], tmp_path / "x.gguf", "q3_k_s")
    other = tmp_path / "gpt2-like"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ExportError, match="GGUF export covers Llama, Mistral, SmolLM2, Qwen2 and Qwen3; GPT2LMHeadModel"):
        write_gguf(other, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# Official templates of the families we export, and the app's own.
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
MISTRAL_V03 = ("{%- if messages[0][\"role\"] == \"system\" %}{%- set system_message = messages[0][\"content\"] %}"
               "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
               "{{- bos_token }}{%- for message in loop_messages %}{%- if message[\"role\"] == \"user\" %}"
               "{%- if loop.last and system_message is defined %}{{- \"[INST] \" + system_message + \"\\n\\n\" + "
               "message[\"content\"] + \"[/INST]\" }}{%- else %}{{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}"
               "{%- endif %}{%- elif message[\"role\"] == \"assistant\" %}{{- \" \" + message[\"content\"]|trim + eos_token}}"
               "{%- endif %}{%- endfor %}")
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>"]


@pytest.mark.parametrize("template, bos, eos, mode, stops", [
    (SMOLLM2, None, "<|im_end|>", "turn", ["<|im_end|>", "<|im_start|>"]),
    (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "turn", ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]),
    (MISTRAL_V03, "<s>", "</s>", "last_user", ["</s>", "[INST]"]),
], ids=["smollm2", "llama3", "mistral-v0.3"])
def test_chat_templates_become_ollama_templates(template, bos, eos, mode, stops):
    fmt = analyze_chat_template(template, bos, eos, SPECIALS)
    assert (fmt.system_mode, fmt.stops) == (mode, stops)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Date?"}]
    for conv in (conversation, conversation[1:]):
        expected = _render_jinja(template, conv, True, bos, eos)
        assert fmt.render_like_ollama(conv, fmt.default_system) == expected.removeprefix(bos or "")
    with pytest.raises(ExportError, match="cannot translate"):
        analyze_chat_template("{% for m in messages | reverse %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}")


@pytest.mark.slow
def test_smollm2_merged_export(smollm2_dir, tmp_path):
    """The real SmolLM2-135M: an adapter with non-zero B matrices, merged, equals 4-bit base + adapter."""
    from qlora_studio.core.config import RunConfig
    from qlora_studio.core.model.loading import load_for_training

    config = RunConfig.model_validate({"model": {"name_or_path": str(smollm2_dir)}, "lora": {"r": 8, "alpha": 16}})
    loaded = load_for_training(config)
    generator = torch.Generator().manual_seed(0)
    for name, param in loaded.model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.03
    ids = prompt_ids(smollm2_dir)
    tuned = logits_of(loaded.model, ids)
    with loaded.model.disable_adapter():
        base = logits_of(loaded.model, ids)
    loaded.model.save_pretrained(str(tmp_path / "adapter"))
    loaded.tokenizer.save_pretrained(str(tmp_path / "adapter"))
    del loaded
    merged = merge_to_folder(AdapterRef(tmp_path / "adapter", None, config, "final"), tmp_path / "merged")
    err = rel_err(plain_logits(merged, ids), tuned)
    assert err < 0.05 and err < 0.05 * rel_err(base, tuned)
