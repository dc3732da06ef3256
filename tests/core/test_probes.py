"""The taste test: probe prompts answered before step 1 and at every checkpoint, without changing
what the run trains, and kept across a resume."""

import threading

from qlora_studio.core.training.control import TrainControl
from qlora_studio.core.training.runner import run_training
from qlora_studio.core.runs.store import RunFolder, read_jsonl

PROBES = ["Normalize the date: March 5, 2021", "Date: June the fourteenth, 1949\nGive it as YYYY-MM-DD."]


def test_probes_per_checkpoint_leave_training_unchanged_and_survive_a_resume(tiny_config, tiny_run):
    config = tiny_config.with_overrides({"probes": PROBES, "train.probe_max_new_tokens": 8})
    control = TrainControl()
    stopped = threading.Event()
    events = []

    def stop_after_step_6(event):  # step 6's numbers are read during step 7, which then ends the run
        events.append(event)
        if event.type == "step" and event.metrics.step >= 6 and not stopped.is_set():
            stopped.set()
            control.request_stop()

    first = run_training(config, stop_after_step_6, control)
    assert first.status == "stopped" and first.step == 7, first.error
    run = RunFolder(first.run_dir)
    assert [(r["step"], r["base"]) for r in read_jsonl(run.probes_path)] == [(0, True), (5, False), (7, False)]
    assert [e.label for e in events if e.type == "probes"] == ["base", "step 5", "step 7"]
    resumed = run_training(resume_from=first.run_dir)
    assert resumed.status == "finished", resumed.error

    # the same losses and adapter as the run without probes (the resume itself is exact)
    assert [m["loss"] for m in run.read_metrics()] == [m["loss"] for m in RunFolder(tiny_run.run_dir).read_metrics()]
    assert resumed.adapter_digest == tiny_run.adapter_digest

    history = run.history()  # the resumed run kept the earlier columns
    assert [p.label for p in history.probes] == ["base", "step 5", "step 7", "step 10", "step 12"]
    for probe in history.probes:
        assert [a["prompt"] for a in probe.answers] == PROBES and probe.seconds > 0
        assert all(0 <= a["tokens"] <= 8 and isinstance(a["reply"], str) for a in probe.answers)
    # the answers change as the adapter trains
    assert [a["reply"] for a in history.probes[0].answers] != [a["reply"] for a in history.probes[-1].answers]
    assert '"probes"' not in run.events_path.read_text()  # they live in probes.jsonl
