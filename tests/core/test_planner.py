"""The planner's one number, its long-context levers, and its verdicts against GPU validation runs."""

import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qlora_studio.core.config import RunConfig
from qlora_studio.core.planner.estimate import GIB
from qlora_studio.core.planner.fit import make_it_fit
from qlora_studio.core.planner.plan import assume, config_shape, estimate_config, model_config_of
from shapes import shape_folder

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    return shape_folder("llama-3.1-8b", tmp_path_factory.mktemp("shapes"))


@pytest.fixture(autouse=True)
def _default_allocator(monkeypatch):
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.setenv(name, "")  # recorded, so whatever a test sets is undone afterwards
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _workstation_ram(monkeypatch):
    """Plans that offload are checked against the computer's RAM: every test here plans for a 64 GB
    workstation, whatever runs the suite."""
    set_ram(monkeypatch, 64)


def set_ram(monkeypatch, gib: float) -> None:
    from qlora_studio.core.planner import host_memory

    monkeypatch.setattr(host_memory, "host_ram_bytes", lambda: int(gib * GIB))


def long_context(folder, tokens: int, **train) -> RunConfig:
    return RunConfig.model_validate({"model": {"name_or_path": str(folder)}, "data": {"max_length": tokens},
                                     "train": {"micro_batch_size": 1, "grad_accum": 1, "liger_kernels": "off", **train}})


def test_one_number_for_setup_the_cli_and_the_run(llama8b, tmp_path, capsys):
    """Setup and `qlora-studio estimate` call estimate_config; the run predicts through speed.predict
    with the assumptions it acts on. For the same config and card they are one number."""
    from qlora_studio.core.cli import main
    from qlora_studio.core.training.speed import SpeedPlan, predict

    config = RunConfig.model_validate({"model": {"name_or_path": str(llama8b)}, "data": {"max_length": 2048},
                                       "train": {"micro_batch_size": 4, "liger_kernels": "off"}})
    path = tmp_path / "run.yaml"
    config.save(path)
    assert main(["estimate", str(path), "--json", "--gpu-gb", "24"]) == 0
    cli = json.loads(capsys.readouterr().out)
    setup = estimate_config(config, 24)
    shape, model_config = config_shape(config), model_config_of(config)
    run = predict(config, SimpleNamespace(source=SimpleNamespace(path=str(llama8b))),
                  SpeedPlan(assume(config, model_config, shape, budget_bytes=24 * GIB), 8192, 24 * GIB))
    assert cli["total_bytes"] == setup.total_bytes == run.total_bytes
    assert cli["peak_allocated_bytes"] == setup.peak_allocated_bytes == run.peak_allocated_bytes
    # it says what it assumes and what it includes
    assert cli["assumptions"].startswith("micro-batches of 8,192 packed tokens (varlen attention)")
    assert "PyTorch peak" in cli["includes"] and "CUDA context" in cli["includes"] and "expandable" in cli["includes"]
    assert setup.total_bytes == setup.peak_allocated_bytes + setup.context_bytes + setup.slack_bytes


def test_experimental_levers_are_config_the_planner_and_the_run_both_read(llama8b):
    """Issue 24: every_n_layers changed the run's prediction but not Setup's (it was an environment switch)."""
    from qlora_studio.core.training.speed import SpeedPlan, predict

    config = long_context(llama8b, 16384)
    sparse = config.with_overrides({"train.experimental.every_n_layers": 2})
    shape, model_config = config_shape(config), model_config_of(config)
    loaded = SimpleNamespace(source=SimpleNamespace(path=str(llama8b)))
    setup = estimate_config(sparse)
    run = predict(sparse, loaded, SpeedPlan(assume(sparse, model_config, shape), 16384, None))
    assert setup.total_bytes == run.total_bytes > estimate_config(config).total_bytes  # half the layers keep activations
    # and the run folder's config.yaml carries it
    assert RunConfig.model_validate(sparse.model_dump(mode="json")).train.experimental.every_n_layers == 2


def test_long_context_levers_fit_80k_on_24_gb(llama8b):
    """Llama-3.1-8B at 80k tokens on a 24 GB card: checkpoints go to CPU memory and the MLP runs in
    tiles, picked by the planner's auto rules; without them it would not fit."""
    config = long_context(llama8b, 81920)
    e = estimate_config(config, 24)
    assert e.fits(24) and e.offload and e.mlp_tile == 8192 and e.loss == "chunked"
    assert e.host_bytes == 32 * 81920 * 4096 * 2  # every layer's input in pinned CPU memory
    plain = estimate_config(config.with_overrides({"train.offload_checkpoints": "off", "train.tiled_mlp": "off"}), 24)
    assert not plain.fits(24) and plain.total_bytes > e.total_bytes + 8 * GIB
    assert estimate_config(long_context(llama8b, 49152), 16).fits(16)
    short = estimate_config(long_context(llama8b, 4096), 24)
    assert not short.offload and short.mlp_tile is None  # levers that cost speed only where needed


def test_fit_offloads_before_it_cuts_max_length(llama8b):
    config = long_context(llama8b, 65536, offload_checkpoints="off", tiled_mlp="off")
    assert not estimate_config(config, 24).fits(24)
    cut = make_it_fit(config, 24)
    assert cut.config.data.max_length < 65536  # with the levers off, only a shorter max_length fits
    kept = make_it_fit(config.with_overrides({"train.offload_checkpoints": "auto", "train.tiled_mlp": "auto"}), 24)
    assert kept.config.data.max_length == 65536 and kept.estimate.offload
    assert "offloaded to CPU" in kept.message


def test_pinned_memory_is_planned_against_the_computers_ram(llama8b, monkeypatch):
    """Offloaded checkpoints are pinned: never swapped. At most half the RAM is planned for them."""
    config = long_context(llama8b, 65536)
    roomy = estimate_config(config, 24)
    assert roomy.offload and roomy.host_bytes == 16 * GIB  # 32 layers x 65,536 tokens x 4,096 x 2 bytes
    assert "offloaded checkpoints take 16.0 GiB of pinned CPU memory (a computer with 32 GB of RAM or more)" in roomy.notes

    set_ram(monkeypatch, 16)
    small = estimate_config(config, 24)
    assert not small.offload and not small.fits(24)
    assert any("the computer's 16 GiB of RAM" in w for w in small.warnings)
    fitted = make_it_fit(config, 24)
    assert fitted.estimate.fits(24) and fitted.estimate.host_bytes <= 8 * GIB
    forced = estimate_config(config.with_overrides({"train.offload_checkpoints": "on"}), 24)
    assert any("16.0 GiB of pinned CPU memory" in w for w in forced.warnings)
    workstation = config.with_overrides({"train.experimental.host_ram_gb": 64})  # planned for another computer
    assert estimate_config(workstation, 24).offload and make_it_fit(workstation, 24).config.data.max_length == 65536


def test_prefetched_offload_holds_one_more_hidden_state(llama8b):
    config = long_context(llama8b, 32768, offload_checkpoints="on")
    plain = estimate_config(config, 24)
    early = estimate_config(config.with_overrides({"train.experimental.prefetch_offload": True}), 24)
    assert early.offload and early.host_bytes == plain.host_bytes
    assert early.peak_allocated_bytes - plain.peak_allocated_bytes == 32768 * 4096 * 2


def test_norms_in_the_tiles_take_two_hidden_states_off_the_recomputed_layer(llama8b):
    config = long_context(llama8b, 65536, offload_checkpoints="on", tiled_mlp="on")
    tiled = estimate_config(config, 24)
    norms = estimate_config(config.with_overrides({"train.experimental.tiled_norms": True}), 24)
    assert tiled.mlp_tile == norms.mlp_tile == 8192
    assert tiled.peak_allocated_bytes - norms.peak_allocated_bytes == 2 * (65536 - 8192) * 4096 * 2


def test_fixed_segments_need_a_larger_margin(llama8b, monkeypatch):
    """The run that died at 32k tokens on 24 GB: reserved-but-unallocated fragmentation. With the
    user's own allocator setting (no expandable segments) the planner keeps a quarter in reserve."""
    config = long_context(llama8b, 32768, offload_checkpoints="off", tiled_mlp="off").with_overrides(
        {"quantization.embeddings": "off"})  # no lever that auto would pull for the larger margin
    expandable = estimate_config(config, 24)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    fixed = estimate_config(config, 24)
    assert fixed.peak_allocated_bytes == expandable.peak_allocated_bytes
    assert fixed.slack_bytes > 5 * expandable.slack_bytes and not fixed.fits(24)
    assert "fixed segments" in fixed.includes()


def test_the_allocator_setting(monkeypatch):
    from qlora_studio.core.model import devices

    assert devices.configure_cuda_allocator() == "expandable_segments:True"
    assert devices.expandable_segments_expected()
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "garbage_collection_threshold:0.6")
    assert devices.configure_cuda_allocator() is None  # the user's own setting stays
    assert __import__("os").environ["PYTORCH_CUDA_ALLOC_CONF"] == "garbage_collection_threshold:0.6"
    assert not devices.expandable_segments_expected()


VALIDATION = sorted((RESULTS / "planner-validation").glob("planner-validation-*.json"))


@pytest.mark.skipif(not VALIDATION, reason="no GPU validation results yet (bench/validate_planner.py)")
def test_verdicts_against_gpu_validation():
    """The current planner, judged on every point trained at the edge of a simulated card (H100):
    "fits" where it trained, "does not fit" where it ran out of memory, the peak within 3% at the
    median, and a total that covers what each run allocated."""
    sys.path.insert(0, str(RESULTS.parent))  # bench/: the report's own judging code
    import validate_planner as vp

    from qlora_studio.core.planner import estimate as est

    points = [json.loads(p.read_text()) for p in VALIDATION]
    judged = vp.verdicts(points)
    ran = [j for j in judged if j["right"] is not None]
    assert len(ran) >= 8 and {j["point"]["card_gb"] for j in ran} >= {12, 16, 24}
    assert any(j["point"].get("fixed_segments") for j in ran)  # the default allocator's margin is checked too
    assert [j["point"] for j in ran if not j["right"]] == []
    errors = [abs(j["error"]) for j in judged if j["error"] is not None]
    assert statistics.median(errors) <= 0.03, errors
    # Where a run trained, the planner's total covers what it allocated plus the CUDA context. (Reserved
    # memory near the cap is no test of the margin: the cap bounds it, and expandable segments hand
    # pages back before failing; measured up to 5.2% over allocated in runs that trained.)
    for j in ran:
        if j["point"]["status"] == "trained":
            assert j["total"] >= j["point"]["peak_allocated"] + est.CUDA_CONTEXT_BYTES, j["point"]


def test_methods_past_sft_count_their_own_batches(llama8b):
    """DPO and ORPO run both answers in one batch; ORPO holds their logits; GRPO's peak is training's
    or generation's KV cache, whichever is larger (planner/method_memory.py)."""
    from qlora_studio.core.planner.plan import estimate_config

    base = RunConfig.model_validate({"model": {"name_or_path": str(llama8b), "random_init": True},
                                     "data": {"max_length": 2048, "packing": "off"},
                                     "train": {"micro_batch_size": 2, "grad_accum": 1}})
    sft = estimate_config(base, 24)
    dpo = estimate_config(base.with_overrides({"train.method": "dpo"}), 24)
    orpo = estimate_config(base.with_overrides({"train.method": "orpo"}), 24)
    assert (dpo.micro_batch, dpo.seq_len, dpo.loss) == (4, 2048, "chunked") and sft.micro_batch == 2
    assert dpo.decisions[0].startswith("Each micro-batch runs 2 pairs as 4 padded rows")
    assert sft.peak_allocated_bytes < dpo.peak_allocated_bytes < orpo.peak_allocated_bytes and orpo.loss == "full"
    grpo = base.with_overrides({"train.method": "grpo", "train.micro_batch_size": 8, "data.max_length": 512,
                                "train.grpo.max_completion_length": 512})
    small = estimate_config(grpo, 24)
    assert small.seq_len == 1024 and "stays below training's peak" in " ".join(small.notes)
    many = estimate_config(grpo.with_overrides({"train.grad_accum": 16}), 24)  # 128 sequences generated at once
    assert "the peak is while generating" in " ".join(many.notes)
    assert many.peak_allocated_bytes > small.peak_allocated_bytes + 5 * 2**30
