"""The memory planner: weights exactly as bitsandbytes lays them out, peaks against measured GPU runs."""

import json
import statistics
from pathlib import Path

import pytest
from transformers import AutoConfig

from qlora_studio.core.config import RunConfig
from qlora_studio.core.model.shape import model_shape
from qlora_studio.core.planner.estimate import GIB, estimate
from qlora_studio.core.planner.plan import estimate_config
from qlora_studio.core.planner.fit import make_it_fit
from shapes import SHAPES, shape_folder

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
CALIBRATION = sorted(RESULTS.glob("estimator-*.json"))


def shape_of(name):
    spec = dict(SHAPES[name])
    return model_shape(AutoConfig.for_model(spec.pop("model_type"), **spec))


@pytest.fixture(scope="module", params=CALIBRATION, ids=lambda p: p.stem)
def calibration(request):
    return json.loads(request.param.read_text())


def test_calibration_grid_is_broad():
    calibration = json.loads((RESULTS / "estimator-h100-80gb.json").read_text())
    grid = calibration["grid"]
    assert len(grid) >= 12 and calibration["environment"]["gpu"].startswith("NVIDIA")
    assert {g["seq_len"] for g in grid} >= {512, 8192} and {g["micro_batch"] for g in grid} >= {1, 8}
    assert {g["lora_r"] for g in grid} >= {8, 64}
    assert {g["double_quant"] for g in grid} == {True, False} and {g["gradient_checkpointing"] for g in grid} == {True, False}
    params = [shape_of(g["shape"]).total_params for g in grid]
    assert min(params) < 0.6e9 and max(params) > 7.9e9


def test_peak_predictions_against_measured_gpu_runs(calibration):
    errors = []
    for g in calibration["grid"]:
        predicted = estimate(shape_of(g["shape"]), double_quant=g["double_quant"], seq_len=g["seq_len"],
                             micro_batch=g["micro_batch"], lora_r=g["lora_r"],
                             gradient_checkpointing=g["gradient_checkpointing"],
                             liger=g.get("liger", False), lean_lora=False).peak_allocated_bytes  # peft's forward ran
        errors.append(abs(predicted / g["peak_allocated"] - 1))
    assert statistics.median(errors) <= 0.05, errors
    assert max(errors) <= 0.10, errors


def test_weights_after_loading_within_two_percent():
    calibration = json.loads((RESULTS / "estimator-h100-80gb.json").read_text())
    seen = set()
    for load in calibration["loads"]:
        predicted = estimate(shape_of(load["shape"]), double_quant=load["double_quant"]).weights_bytes
        assert abs(predicted / load["allocated_after_load"] - 1) < 0.02, load
        seen.add((load["shape"], load["double_quant"]))
    assert {("llama-2-7b", True), ("llama-2-7b", False)} <= seen
    loads = {(l["shape"], l["double_quant"]): l["allocated_after_load"] for l in calibration["loads"]}
    measured_saving = loads[("llama-2-7b", False)] - loads[("llama-2-7b", True)]
    predicted_saving = estimate(shape_of("llama-2-7b")).double_quant_saving_bytes
    assert abs(predicted_saving / measured_saving - 1) < 0.05


def test_llama2_7b_weights_from_a_config_only_folder(tmp_path):
    """The estimate needs config.json alone (no weights, no tokenizer)."""
    folder = tmp_path / "llama-2-7b"
    folder.mkdir()
    spec = dict(SHAPES["llama-2-7b"])
    AutoConfig.for_model(spec.pop("model_type"), **spec).save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    config = RunConfig.model_validate({"model": {"name_or_path": str(folder)}})
    with_dq = estimate_config(config)
    without = estimate_config(config.with_overrides({"quantization.double_quant": False}))
    # Llama-2-7B in 4-bit: about 3.6 GiB with double quant; constants 98 MiB vs 386 MiB
    assert 3.55 < with_dq.weights_bytes / GIB < 3.65
    assert 95 < with_dq.quant_constants_bytes / 2**20 < 101 and 380 < without.quant_constants_bytes / 2**20 < 392
    assert with_dq.double_quant_saving_bytes == without.weights_bytes - with_dq.weights_bytes
    eight = estimate_config(config.with_overrides({"quantization.mode": "8bit"}))
    none = estimate_config(config.with_overrides({"quantization.mode": "none"}))
    assert with_dq.weights_bytes < eight.weights_bytes < none.weights_bytes
    assert 12.4 < none.weights_bytes / GIB < 12.7


def test_checkpointing_and_batch_move_the_estimate():
    shape = shape_of("llama-3.1-8b")
    on = estimate(shape, seq_len=4096, micro_batch=2, gradient_checkpointing=True)
    off = estimate(shape, seq_len=4096, micro_batch=2, gradient_checkpointing=False)
    assert off.activations_bytes > 3 * on.activations_bytes
    assert estimate(shape, seq_len=4096, micro_batch=4).total_bytes > on.total_bytes
    eight_bit = estimate(shape, seq_len=4096, micro_batch=2, optimizer="adamw_8bit")
    assert eight_bit.optimizer_bytes * 4 == on.optimizer_bytes


def test_make_it_fit_keeps_the_effective_batch(tmp_path):
    folder = shape_folder("llama-3.1-8b", tmp_path)
    config = RunConfig.model_validate({
        "model": {"name_or_path": str(folder)}, "data": {"max_length": 4096},
        "train": {"micro_batch_size": 8, "grad_accum": 2, "gradient_checkpointing": False},
    })
    assert not estimate_config(config).fits(24)
    result = make_it_fit(config, 24)
    fitted = result.config
    assert fitted is not None and result.estimate.fits(24)
    assert fitted.train.micro_batch_size * fitted.train.grad_accum == 16
    assert fitted.data.max_length == 4096  # cutting data is the last resort
    assert "effective batch stays 16" in result.message
    roomy = make_it_fit(config, 80)
    assert roomy.config.train.micro_batch_size >= fitted.train.micro_batch_size
    impossible = make_it_fit(config, 4)
    assert impossible.config is None and "does not fit" in impossible.message


def test_estimate_and_fit_commands(tmp_path, capsys):
    from qlora_studio.core.cli import main

    folder = shape_folder("llama-2-7b", tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  name_or_path: {folder}\ndata:\n  max_length: 2048\ntrain:\n  micro_batch_size: 4\n")

    def cli(*args):
        """The command in this process (test_cli.py starts the real entry point once): (exit code, stdout, stderr)."""
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    code, stdout, stderr = cli("estimate", str(cfg), "--json", "--gpu-gb", "24")
    assert code == 0, stderr
    data = json.loads(stdout)
    for key in ("weights_bytes", "quant_constants_bytes", "lora_bytes", "optimizer_bytes", "activations_bytes", "total_bytes"):
        assert isinstance(data[key], int) and data[key] > 0, key
    assert data["fits"] is True and data["total_bytes"] < 24 * GIB
    assert "micro-batches of 8,192 packed tokens" in data["assumptions"] and not data["offload"]
    _, text, _ = cli("estimate", str(cfg), "--gpu-gb", "8")  # offload_checkpoints auto: on where it makes the run fit
    assert "fits in 8 GiB" in text and "checkpoints offloaded to CPU" in text
    assert "double quant saves" in text and "PyTorch peak" in text
    assert "does NOT fit in 4 GiB" in cli("estimate", str(cfg), "--gpu-gb", "4")[1]
    fitted = tmp_path / "fitted.yaml"
    code, stdout, stderr = cli("fit", str(cfg), "--gpu-gb", "8", "--write", str(fitted))
    assert code == 0, stdout + stderr
    assert "effective batch stays 16" in stdout and fitted.is_file()  # default grad_accum 4 x micro-batch 4


def test_presets_plan_offline_from_the_builtin_shapes():
    """Issue 12: the 8/12/24 GB presets showed no estimate offline (the planner needs config.json).
    The popular families ship their shapes; the estimate and the model line say where the shape
    came from, and an unknown id is still an error."""
    from qlora_studio.core.config import load_config
    from qlora_studio.core.errors import ModelLoadError
    from qlora_studio.core.model.info import model_info
    from qlora_studio.core.model.shape import builtin_config
    from qlora_studio.resources import preset_paths

    expected = {"8gb-qwen2.5-1.5b": 1.54e9, "12gb-mistral-7b": 7.25e9, "24gb-llama-3.1-8b": 8.03e9}
    for name, params in expected.items():
        config = load_config(preset_paths()[name])
        e = estimate_config(config)
        assert e.params == pytest.approx(params, rel=0.01)
        assert any("shape from the built-in table" in note and "cannot get" in note for note in e.notes), e.notes
        budget = float(name.split("gb")[0])
        assert e.fits(budget), f"the {name} preset does not fit its own card: {e.total_bytes / GIB:.2f} GiB"
    info = model_info("Qwen/Qwen3-8B")
    assert info.params == pytest.approx(8.19e9, rel=0.01) and info.note.startswith("shape from the built-in table")
    assert builtin_config("qwen/qwen2.5-7b-instruct").hidden_size == 3584  # ids match whatever the case
    with pytest.raises(ModelLoadError, match="cannot get 'someone/unknown-model'"):
        model_info("someone/unknown-model")


@pytest.mark.slow
def test_builtin_smollm2_shape_is_the_real_one(smollm2_dir):
    from qlora_studio.core.model.shape import builtin_config, load_model_config

    real = model_shape(load_model_config(str(smollm2_dir)))
    table = model_shape(builtin_config("HuggingFaceTB/SmolLM2-135M-Instruct"))
    assert real.total_params == table.total_params and real.max_position == table.max_position
    assert [lin.__dict__ for lin in real.linears] == [lin.__dict__ for lin in table.linears]
