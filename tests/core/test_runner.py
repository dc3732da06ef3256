"""End-to-end training on CPU: run folder contract, control from another thread, resume."""

import json
import queue
import threading
from pathlib import Path

import pytest
import torch

from qlora_studio.core.errors import FailureCause
from qlora_studio.core.training.control import TrainControl
from qlora_studio.core.training.runner import run_training
from qlora_studio.core.runs.store import RunFolder, list_runs, read_jsonl


def collect(events):
    return lambda event: events.append(event.to_dict())


def test_run_folder_contract(tiny_run_and_events):
    result, emitted = tiny_run_and_events  # the shared run: trained with tiny_config's settings
    events = [event.to_dict() for event in emitted]
    run = RunFolder(result.run_dir)
    assert run.config_path.is_file() and run.status_path.is_file()
    status = run.read_status()
    assert status["status"] == "finished" and status["step"] == 12

    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == list(range(1, 13))  # every optimizer step, once
    for key in ("step", "epoch", "loss", "learning_rate", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"):
        assert all(key in m for m in metrics), key
    tokens = [m["tokens"] for m in metrics]
    assert tokens == sorted(tokens) and tokens[0] > 0  # real tokens, cumulative
    first, last = sum(m["loss"] for m in metrics[:3]) / 3, sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < first * 0.8, f"loss did not fall: {first:.3f} -> {last:.3f}"

    assert [step for step, _ in run.checkpoints()] == [5, 10, 12]
    checkpoint = run.latest_checkpoint()
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                 "qlora_studio.json", "config.yaml"):
        assert (checkpoint / name).is_file(), name
    assert json.loads((checkpoint / "qlora_studio.json").read_text())["tokens"] == tokens[-1]

    kinds = [e["type"] for e in events]
    # the stages before step 1 (issue 12: nothing moved for ~45 s), then the run
    stages = [e["stage"] for e in events if e["type"] == "preparing"]
    assert [s for i, s in enumerate(stages) if s not in stages[:i]] == \
        ["model", "adapters", "data", "tokenize", "first_step"]
    tokenize = [(e["done"], e["total"]) for e in events if e["type"] == "preparing" and e["stage"] == "tokenize"]
    assert tokenize[0] == (0, 400) and tokenize[-1] == (400, 400)
    first_step = next(i for i, e in enumerate(events) if e["type"] == "preparing" and e["stage"] == "first_step")
    assert kinds.index("run_started") < first_step < kinds.index("step")
    recorded = [r for r in read_jsonl(run.events_path) if r["type"] == "preparing"]
    assert recorded and all(r["done"] in (None, 0, r["total"]) for r in recorded)  # no progress ticks in the log
    kinds = [k for k in kinds if k != "preparing"]
    assert kinds[0] == "run_started" and kinds[-1] == "finished"
    assert kinds.count("step") == 12 and kinds.count("checkpoint") == 3 and "eval" in kinds
    started = next(e for e in events if e["type"] == "run_started")
    assert started["quantization"]["mode"] == "4bit" and started["quantization"]["double_quant"] is True
    assert (run.path / "evals.jsonl").is_file()


def test_adapter_loads_in_plain_peft(tiny_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    result = tiny_run  # only read: tiny_config's settings, trained once for the session
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model, device_map="cpu", dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32))
    model = PeftModel.from_pretrained(base, result.adapter_dir)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    # the tokenizer saved with it carries the chat template training used
    from transformers import AutoTokenizer

    assert "<|im_start|>" in AutoTokenizer.from_pretrained(result.adapter_dir).chat_template


def run_in_thread(config, control, react):
    """Train on a thread; `react(event, control)` runs on the training thread for each event."""
    events: queue.Queue = queue.Queue()
    result = {}

    def emit(event):
        data = event.to_dict()
        events.put(data)
        react(data, control)

    thread = threading.Thread(target=lambda: result.update(r=run_training(config, emit, control)))
    thread.start()
    return thread, events, result


def test_pause_holds_the_step_and_stop_saves(tiny_config):
    config = tiny_config.with_overrides({"train.max_steps": 40, "train.save_every_steps": 100})
    control = TrainControl()

    # Step 3's numbers are read while step 4 is queued (training/step_logs.py), so a pause asked for
    # then holds after step 4: the step in flight finishes, as it would for a click in the window.
    def react(event, control):
        if event["type"] == "step" and event["metrics"]["step"] == 3:
            control.pause()

    thread, events, result = run_in_thread(config, control, react)
    seen = []
    while True:
        event = events.get(timeout=120)
        seen.append(event)
        if event["type"] == "paused":
            break
    assert event["step"] == 4 and [e["metrics"]["step"] for e in seen if e["type"] == "step"][-1] == 4
    with pytest.raises(queue.Empty):  # nothing trains while paused
        events.get(timeout=1.5)
    control.request_save()  # served while paused
    saved = events.get(timeout=30)
    assert saved["type"] == "checkpoint" and saved["step"] == 4 and saved["reason"] == "requested"
    control.request_stop()  # stop while paused: no further step runs
    thread.join(timeout=120)
    r = result["r"]
    assert r.status == "stopped" and r.step == 4
    run = RunFolder(r.run_dir)
    assert run.read_status()["status"] == "stopped"
    assert [m["step"] for m in run.read_metrics()] == [1, 2, 3, 4]
    assert run.latest_checkpoint().name == "step-000004"
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()


def test_save_now_and_extend_from_another_thread(tiny_config):
    config = tiny_config.with_overrides({"train.max_steps": 8, "train.save_every_steps": 100})
    control = TrainControl()

    def react(event, control):
        if event["type"] == "step" and event["metrics"]["step"] == 2:
            control.request_save()
        if event["type"] == "step" and event["metrics"]["step"] == 4:
            control.extend(5)

    thread, events, result = run_in_thread(config, control, react)  # each served after the step in flight
    thread.join(timeout=180)
    r = result["r"]
    all_events = []
    while not events.empty():
        all_events.append(events.get())
    assert r.status == "finished" and r.step == 13
    checkpoints = [(e["step"], e["reason"]) for e in all_events if e["type"] == "checkpoint"]
    assert (3, "requested") in checkpoints and (5, "extend") in checkpoints and (13, "scheduled") in checkpoints
    changed = [e for e in all_events if e["type"] == "settings_changed"]
    assert changed and changed[0]["changes"]["max_steps"] == [8, 13]
    steps = [m["step"] for m in RunFolder(r.run_dir).read_metrics()]
    assert steps == list(range(1, 14))
    assert [e["total_steps"] for e in all_events if e["type"] == "step"][-1] == 13


def test_resume_continues_the_step_count_exactly(tiny_config):
    config = tiny_config.with_overrides({"train.max_steps": 10, "train.save_every_steps": 100})
    control = TrainControl()

    def react(event, control):
        if event["type"] == "step" and event["metrics"]["step"] == 4:
            control.request_stop()

    thread, _, result = run_in_thread(config, control, react)
    thread.join(timeout=120)
    stopped = result["r"]
    assert stopped.status == "stopped" and stopped.step == 5  # after the step in flight

    events = []
    resumed = run_training(None, collect(events), resume_from=stopped.run_dir)
    assert resumed.status == "finished" and resumed.step == 10
    steps = [e["metrics"]["step"] for e in events if e["type"] == "step"]
    assert steps == list(range(6, 11))
    run = RunFolder(stopped.run_dir)
    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == list(range(1, 11))
    assert metrics[5]["tokens"] > metrics[4]["tokens"]  # token count carried over
    assert metrics[5]["elapsed_s"] >= metrics[4]["elapsed_s"]
    started = [e for e in events if e["type"] == "run_started"][0]
    assert started["start_step"] == 5

    # Issue 12: resuming a finished run trained one more step each time. It must say it is finished.
    adapter = (run.adapter_dir / "adapter_model.safetensors").read_bytes()
    again = []
    refused = run_training(None, collect(again), resume_from=stopped.run_dir)
    assert refused.status == "failed" and refused.cause is FailureCause.USER
    assert "is finished (step 10 of 10)" in refused.error and "--extend N" in refused.error
    assert [e["type"] for e in again] == ["failed"]
    assert run.read_status()["status"] == "finished" and len(run.read_metrics()) == 10
    assert (run.adapter_dir / "adapter_model.safetensors").read_bytes() == adapter


def test_a_run_that_never_starts_leaves_no_run_folder(tiny_config, tmp_path):
    """Issue 12: a broken dataset (or model) left a failed run folder at each try."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json at all\n")
    events = []
    result = run_training(tiny_config.with_overrides({"data.path": str(broken)}), collect(events))
    assert result.status == "failed" and result.cause is FailureCause.DATA and result.run_dir is None
    assert "broken.jsonl" in result.error
    assert [e["type"] for e in events][-1] == "failed" and events[-1]["run_dir"] is None
    assert not Path(tiny_config.output_dir).exists() or not any(Path(tiny_config.output_dir).iterdir())


def test_resume_matches_an_uninterrupted_run(tiny_config):
    """Optimizer, scheduler, RNG and data position are restored: the losses are the same."""
    config = tiny_config.with_overrides({"train.max_steps": 8, "train.save_every_steps": 4, "lora.dropout": 0.0})
    straight = run_training(config.with_overrides({"run_name": "straight"}))
    reference = [m["loss"] for m in RunFolder(straight.run_dir).read_metrics()]

    control = TrainControl()
    thread, _, result = run_in_thread(config.with_overrides({"run_name": "split"}), control,
                                      lambda e, c: c.request_stop() if e["type"] == "step" and e["metrics"]["step"] == 4 else None)
    thread.join(timeout=120)
    run_training(None, resume_from=result["r"].run_dir)
    resumed = [m["loss"] for m in RunFolder(result["r"].run_dir).read_metrics()]
    assert resumed == pytest.approx(reference, rel=1e-6)


def test_crash_after_checkpoint_logs_each_step_once(tiny_config):
    """A run killed between checkpoints resumes from the last one; later metrics lines are replaced."""
    config = tiny_config.with_overrides({"train.max_steps": 8, "train.save_every_steps": 3})
    first = run_training(config)
    run = RunFolder(first.run_dir)
    # simulate a crash at step 7: drop checkpoints after 3, mark it running by a dead process
    import shutil

    for step, path in run.checkpoints():
        if step > 3:
            shutil.rmtree(path)
    kept = [m for m in run.read_metrics() if m["step"] <= 7]
    run.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))
    run.write_status("running")
    status = json.loads(run.status_path.read_text())
    status["pid"] = 2**22 + 12345
    run.status_path.write_text(json.dumps(status))
    assert run.effective_status() == "interrupted"
    assert list_runs(config.output_dir)[0].status == "interrupted"

    resumed = run_training(None, resume_from=run.path)
    assert resumed.status == "finished"
    assert [m["step"] for m in read_jsonl(run.metrics_path)] == list(range(1, 9))
