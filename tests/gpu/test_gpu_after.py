"""After training on a GPU (marked `gpu`; skipped without CUDA): probes during a CUDA run, the
playground session on CUDA (tuned vs base), a merged export that plain transformers loads and that
computes what the 4-bit CUDA base + adapter computed, and a GGUF that reads back.
    source bench/gpu_setup.sh && python3 -m pytest -m gpu tests/gpu/test_gpu_after.py -q
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROBES = ["Normalize the date: March 5, 2021", "Date: June 21, 2021\nGive it as YYYY-MM-DD."]


@torch.no_grad()
def _logits(model, ids):
    model.eval()
    return model(input_ids=ids.to(model.device)).logits.float().cpu()


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_cuda_run_probes_chat_and_exports(tiny_config, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    from qlora_studio.core.after.adapters import locate_adapter
    from qlora_studio.core.after.export.run import export_run
    from qlora_studio.core.after.inference import InferenceSession
    from qlora_studio.core.model.generation import Sampling
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.runs.store import RunFolder

    result = run_training(tiny_config.with_overrides({"train.device": "cuda", "probes": PROBES,
                                                      "train.probe_max_new_tokens": 8}))
    assert result.status == "finished", result.error
    probes = RunFolder(result.run_dir).history().probes
    assert [p.label for p in probes][:2] == ["base", "step 5"] and all(len(p.answers) == 2 for p in probes)

    ref = locate_adapter(result.run_dir)
    session = InferenceSession(ref)
    assert session.chat.device.type == "cuda"  # the run's train.device
    messages = [[{"role": "user", "content": PROBES[0]}]]
    tuned = session.replies(messages, Sampling(8))[0]
    base = session.replies(messages, Sampling(8), base=True)[0]
    assert tuned.new_tokens > 0 and base.new_tokens > 0

    tok = session.chat.tokenizer
    text = tok.apply_chat_template(messages[0], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    want = _logits(session.model, ids)
    del session
    torch.cuda.empty_cache()

    merged = export_run(ref, "merged", tmp_path / "merged")
    got = _logits(AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32), ids)
    assert _rel(got, want) < 0.05
    gguf = export_run(ref, "gguf", tmp_path / "tiny.q8_0.gguf", quant="q8_0")
    assert len(GGUFReader(str(gguf)).tensors) == 2 * 9 + 3
