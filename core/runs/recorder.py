"""The run folder's record of a run, written by one event sink on rank 0: metrics.jsonl,
evals.jsonl, events.jsonl and status.json follow from the events alone, so whatever a live
window saw can be replayed from the folder."""

from __future__ import annotations

import time

from qlora_studio.core.runs import events as ev
from qlora_studio.core.runs.store import RunFolder


class RunRecorder:
    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.peak_vram_gb: float | None = None

    def __call__(self, event: ev.Event) -> None:
        run = self.folder
        match event:
            case ev.StepLogged(metrics=m, total_steps=total):
                run.append_jsonl(run.metrics_path, m.to_dict())
                if m.vram_peak_gb is not None:
                    self.peak_vram_gb = max(self.peak_vram_gb or 0.0, m.vram_peak_gb)
                run.write_status("running", step=m.step, total_steps=total, last_loss=m.loss, elapsed_s=m.elapsed_s,
                                 peak_vram_gb=self.peak_vram_gb)
                return
            case ev.Preparing() if event.is_tick:
                return  # the stage's start and end are recorded; progress in between is not
            case ev.EvalLogged():
                run.append_jsonl(run.evals_path, {"step": event.step, "eval_loss": event.eval_loss, **event.metrics})
                return
            case ev.ProbesAnswered():
                run.append_jsonl(run.probes_path, event.to_dict())
                return
            case ev.RunStarted():
                run.write_status("running", total_steps=event.total_steps, model=event.config["model"]["name_or_path"],
                                 device=event.device_name, quantization=event.quantization.to_dict(),
                                 predicted_peak_gb=event.predicted_peak_gb)
            case ev.Paused() | ev.Resumed():
                run.write_status("running", paused=isinstance(event, ev.Paused))
            case ev.Finished():
                run.write_status(event.status, step=event.step, total_steps=event.total_steps,
                                 final_loss=event.final_loss, elapsed_s=event.elapsed_s,
                                 peak_vram_gb=event.peak_vram_gb, paused=False)
            case ev.Failed():
                fields = {"reason": event.reason, "cause": event.cause.value, "paused": False}
                if event.step is not None:
                    fields["step"] = event.step
                run.write_status(event.status, **fields)
        record = event.to_dict()
        record.pop("config", None)  # config.yaml holds it
        record["time"] = time.time()
        run.append_jsonl(run.events_path, record)
