import pytest
import torch

from qlora_studio.core.config import LoraSettings, ModelSettings, QuantizationSettings, RunConfig
from qlora_studio.core.errors import ModelLoadError
from qlora_studio.core.model.devices import resolve_compute_dtype
from qlora_studio.core.model.loading import load_for_training
from qlora_studio.core.model.lora import build_lora_config, linear_module_names, select_targets
from qlora_studio.core.model.quantization import build_bnb_config
from qlora_studio.core.model.sources import resolve_model_source
from qlora_studio.core.model.quant_layout import quant_constants_4bit_bytes


def test_bnb_config_for_every_mode():
    q = build_bnb_config(QuantizationSettings(), torch.bfloat16)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    fp4 = build_bnb_config(QuantizationSettings(quant_type="fp4", double_quant=False), torch.float16)
    assert fp4.bnb_4bit_quant_type == "fp4" and not fp4.bnb_4bit_use_double_quant
    assert build_bnb_config(QuantizationSettings(mode="8bit"), torch.float32).load_in_8bit
    assert build_bnb_config(QuantizationSettings(mode="none"), torch.float32) is None


def test_compute_dtype_auto_is_fp32_on_cpu():
    assert resolve_compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_compute_dtype("float16", torch.device("cpu")) == torch.float16


def test_target_module_groups(tiny_model):
    from transformers import AutoModelForCausalLM

    names = linear_module_names(AutoModelForCausalLM.from_pretrained(tiny_model))
    assert select_targets(names, "all-linear") == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert select_targets(names, "attention") == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert select_targets(names, "mlp") == ["down_proj", "gate_proj", "up_proj"]
    assert select_targets(names, ["q_proj"]) == ["q_proj"]
    with pytest.raises(ModelLoadError, match="qkv not in this model"):
        select_targets(names, ["qkv"])
    lora = build_lora_config(LoraSettings(r=4, alpha=8, use_dora=True, use_rslora=True), ["q_proj"])
    assert lora.r == 4 and lora.lora_alpha == 8 and lora.use_dora and lora.use_rslora


@pytest.mark.parametrize("double_quant", [True, False])
def test_4bit_load_reports_what_was_applied(tiny_model, double_quant):
    config = RunConfig.model_validate({
        "model": {"name_or_path": str(tiny_model)},
        "quantization": {"double_quant": double_quant},
        "lora": {"target_modules": "attention"},
    })
    loaded = load_for_training(config)
    report = loaded.quantization
    assert report.mode == "4bit" and report.double_quant is double_quant
    assert report.label == ("4-bit nf4 + double quant" if double_quant else "4-bit nf4")
    assert report.quantized_layers == 2 * 7  # every linear of 2 layers, lm_head left out
    import bitsandbytes as bnb

    numels = [m.in_features * m.out_features for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(numels) == 14
    # the measured bytes equal bitsandbytes' layout written down in quant_layout
    assert report.quant_constants_bytes == sum(quant_constants_4bit_bytes(n, double_quant) for n in numels)
    key = "with" if double_quant else "without"
    assert getattr(report, f"quant_constants_bytes_{key}_double_quant") == report.quant_constants_bytes
    assert loaded.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_8bit_and_none_load_on_cpu(tiny_model):
    for mode, layer_type in (("8bit", "Linear8bitLt"), ("none", "Linear")):
        config = RunConfig.model_validate({"model": {"name_or_path": str(tiny_model)}, "quantization": {"mode": mode}})
        loaded = load_for_training(config)
        q_proj = loaded.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        assert type(q_proj).__name__ == layer_type
        assert loaded.quantization.mode == mode


def test_model_source_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such .gguf file"):
        resolve_model_source(ModelSettings(name_or_path=str(tmp_path / "x.gguf")))
    with pytest.raises(ModelLoadError, match="without config.json"):
        resolve_model_source(ModelSettings(name_or_path=str(tmp_path)))
    with pytest.raises(ModelLoadError, match="no such folder"):
        resolve_model_source(ModelSettings(name_or_path="./missing/model"))
    with pytest.raises(ModelLoadError, match="cannot get 'someone/unknown-model'"):
        resolve_model_source(ModelSettings(name_or_path="someone/unknown-model"))


def test_demo_model_falls_back_to_bundled_gguf(smollm2_dir):
    source = resolve_model_source(ModelSettings())
    assert source.kind == "gguf" and source.path == str(smollm2_dir)
    assert "offline copy" in source.note
    assert (smollm2_dir / "config.json").is_file() and (smollm2_dir / "tokenizer.json").is_file()


def test_double_quant_saving_on_a_real_layer_size():
    # 4096 x 4096: 262,144 blocks -> fp32 absmax 1 MiB, or uint8 absmax + nested state ~ 0.25 MiB
    numel = 4096 * 4096
    without, with_dq = quant_constants_4bit_bytes(numel, False), quant_constants_4bit_bytes(numel, True)
    assert without == 262144 * 4 + 64
    assert with_dq == 262144 + 1024 * 4 + 1024 + 4 + 64
    # on tiny layers the nested code table costs more than it saves
    assert quant_constants_4bit_bytes(4096, True) > quant_constants_4bit_bytes(4096, False)


def test_gradients_still_reach_early_layers_after_an_eval_pass(tiny_model):
    """bitsandbytes repacks 4-bit weights for CPU inference on its first eval-mode call; the
    repacked matmul has no backward. Training after an evaluation must still train layer 0."""
    import warnings

    config = RunConfig.model_validate({"model": {"name_or_path": str(tiny_model)}})
    model = load_for_training(config).model
    ids = torch.randint(0, 500, (2, 16))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "an autograd kernel was not registered" would be raised here
        model(input_ids=ids, labels=ids).loss.backward()
    first_b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert first_b.grad is not None and first_b.grad.abs().sum() > 0


def _fake_conversion(calls: list, delay: float = 0.3):
    def dequantize_into(gguf_path, folder):
        import time

        calls.append(folder.name)
        folder.mkdir(parents=True)
        time.sleep(delay)  # long enough for every other caller to arrive while this one converts
        (folder / "config.json").write_text("{}")
    return dequantize_into


def test_one_gguf_conversion_whoever_asks_and_no_stale_staging(tmp_path, monkeypatch):
    """Issue 12: a first start converted the demo GGUF three times at once into one folder, and a
    killed conversion left a .tmp<PID> folder behind."""
    import subprocess
    import sys
    import threading

    from qlora_studio.core.model import sources

    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    target = sources.converted_folder(gguf.resolve())
    target.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = target.with_name(target.name + f".tmp{dead.stdout.strip()}")  # a killed process's staging folder
    stale.mkdir()
    calls: list = []
    monkeypatch.setattr(sources, "_dequantize_into", _fake_conversion(calls))
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(sources.convert_gguf(gguf))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1 and results == [target] * 3
    assert not stale.exists() and sorted(p.name for p in target.parent.iterdir() if p.is_dir()) == [target.name]


def test_gguf_conversion_waits_for_another_process(tmp_path, monkeypatch):
    """The lock holds across processes: a conversion in another process (a CLI run beside the
    window) is waited for and its folder taken, not converted again."""
    import subprocess
    import sys

    from qlora_studio.core.model import sources

    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    target = sources.converted_folder(gguf.resolve())
    target.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from pathlib import Path
from filelock import FileLock
target = Path({str(target)!r})
with FileLock(str(target) + ".lock"):
    print("locked", flush=True)
    time.sleep(1.0)
    target.mkdir()
    (target / "config.json").write_text("{{}}")
    (target / ".complete").write_text("other process")
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    calls: list = []
    monkeypatch.setattr(sources, "_dequantize_into", _fake_conversion(calls))
    assert sources.convert_gguf(gguf) == target
    assert holder.wait(30) == 0
    assert calls == [] and (target / ".complete").read_text() == "other process"
