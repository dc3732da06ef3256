"""What the terminal shows: a progress bar with loss, tokens/s and ETA, the closing summary, and the
dataset X-ray as text."""

from __future__ import annotations

import sys
from pathlib import Path

from qlora_studio.core.errors import FailureCause
from qlora_studio.core.runs import events as ev


class ProgressPrinter:
    """A progress bar with loss, tokens/s and ETA, then a closing summary."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bar = None
        self.run_dir = None
        # A bar redraws in place on a terminal only; in a log file each redraw is one more line
        # (the last bar three times: after the last step, the last evaluation and the last
        # checkpoint). There, a plain line every tenth of the run instead.
        self.animated = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stage = None
        self.total_steps = 0
        self.next_line_step = 0

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, event: ev.Event) -> None:
        from tqdm import tqdm

        match event:
            case ev.RunStarted():
                self._close()
                self.run_dir = event.run_dir
                q = event.quantization
                self._say(f"run folder  {event.run_dir}")
                self._say(f"device      {event.device_name} ({event.device}), {q.label}, compute {q.compute_dtype}")
                self._say(f"data        {event.train_rows} training rows, {event.eval_rows} validation rows")
                self._say(f"adapter     {event.trainable_params:,} trainable parameters on the model's {event.total_params:,}")
                if event.batching:
                    self._say(f"batches     {event.batching}")
                if event.prediction:
                    self._say(f"memory      {event.prediction}")
                self.total_steps = event.total_steps
                if self.animated:
                    self.bar = tqdm(total=event.total_steps, initial=event.start_step, unit="step", file=self.stream,
                                    dynamic_ncols=True, smoothing=0.1)
            case ev.Preparing():
                self._preparing(event)
            case ev.StepLogged(metrics=m):
                self.stage = None
                self.total_steps = event.total_steps
                postfix = {"loss": f"{m.loss:.4f}", "tok/s": f"{m.tokens_per_s:,.0f}"}
                if m.vram_peak_gb is not None:
                    postfix["peak"] = f"{m.vram_peak_gb:.1f}G"
                if self.bar is not None:
                    if event.total_steps != self.bar.total:
                        self.bar.total = event.total_steps
                    self.bar.n = m.step
                    self.bar.set_postfix(postfix, refresh=False)
                    self.bar.refresh()
                    if m.step >= self.bar.total:
                        self._close()  # drawn once, complete; what follows prints below it
                elif not self.animated and (m.step >= self.next_line_step or m.step >= event.total_steps):
                    self.next_line_step = m.step + max(1, event.total_steps // 10)
                    self._say(f"step {m.step}/{event.total_steps}  " + "  ".join(f"{k} {v}" for k, v in postfix.items())
                              + f"  {_duration(m.elapsed_s)}")
            case ev.EvalLogged():
                self._say(f"step {event.step}: validation loss {event.eval_loss:.4f}")
            case ev.CheckpointSaved():
                self._say(f"step {event.step}: checkpoint {Path(event.path).name} ({event.reason})")
            case ev.Warning():
                self._say(f"warning: {event.message}")
            case ev.NonFiniteStep(action="skipped"):  # a stopping one is said once, by Failed
                self._say(f"warning: {event.message}")
            case ev.SettingsChanged():
                self._say(f"note: {event.message}")
            case ev.Paused():
                self._say(f"paused at step {event.step}")
            case ev.Finished():
                self._close()
                lines = [
                    f"{event.status} at step {event.step}/{event.total_steps} in {_duration(event.elapsed_s)}",
                    f"final loss  {event.final_loss:.4f}" if event.final_loss is not None else "final loss  -",
                ]
                if event.peak_vram_gb is not None:
                    lines.append(f"peak VRAM   {event.peak_vram_gb:.2f} GiB (allocated)")
                lines.append(f"adapter     {event.adapter_dir}")
                lines.append(f"run folder  {event.run_dir}")
                if event.status == "stopped":
                    lines.append(f"resume with: qlora-studio train --resume {event.run_dir}")
                self._say("\n".join(lines))
            case ev.Failed():
                self._close()
                where = f" (run folder {event.run_dir})" if event.run_dir else ""
                self._say(f"{'stopped' if event.status == 'stopped' else 'error'}: {event.reason}{where}")
                if event.run_dir and event.step and event.cause is not FailureCause.NAN:  # resuming would diverge again
                    self._say(f"resume with: qlora-studio train --resume {event.run_dir}")

    def _preparing(self, event: ev.Preparing) -> None:
        """One line per stage before the first step; tokenizing counts rows on a terminal."""
        if event.stage == "tokenize":
            if self.stage != "tokenize":
                self._say(f"preparing   tokenizing {event.total:,} rows")
                if self.animated and event.total and event.total > 1:
                    from tqdm import tqdm

                    self.bar = tqdm(total=event.total, unit="row", file=self.stream, leave=False, dynamic_ncols=True)
            elif self.bar is not None:
                self.bar.n = event.done or 0
                self.bar.refresh()
                if event.done == event.total:
                    self._close()
        else:
            if self.stage == "tokenize":
                self._close()
            self._say(f"preparing   {event.message}")
        self.stage = event.stage

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_report(report, color: bool = False) -> str:
    lines = [
        f"source      {report.source}" + (f" ({len(report.files)} files)" if len(report.files) > 1 else ""),
        f"format      {report.format}" + (f"  mixed: {report.formats}" if len(report.formats) > 1 else ""),
        f"columns     {', '.join(report.columns)}",
        f"rows        {report.rows:,} usable of {report.rows_read:,} read"
        + (f", {report.bad_rows:,} bad rows skipped" if report.bad_rows else ""),
        f"split       {report.train_rows:,} train / {report.eval_rows:,} validation",
        f"template    {report.template}; loss on {'assistant replies' if report.train_on == 'assistant' else 'all tokens'}",
    ]
    for bad in report.bad_examples:
        lines.append(f"bad row     {bad['where']}: {bad['reason']}")
    t = report.token_lengths
    if t:
        lines.append(
            f"tokens      min {t['min']}  p50 {t['p50']:.0f}  p90 {t['p90']:.0f}  p99 {t['p99']:.0f}  max {t['max']}"
            f"  (mean {t['mean']})")
        lines.append(
            f"max_length  {report.max_length}: {report.over_max_length:,} rows longer"
            + (f" -> {report.cut_rows} cut, {report.dropped_rows} dropped" if report.over_max_length else "")
            + (f", {report.split_rows} split into pieces" if report.split_rows else ""))
    share = report.trained_tokens / report.total_tokens * 100 if report.total_tokens else 0
    lines.append(f"trained     {report.trained_tokens:,} of {report.total_tokens:,} tokens ({share:.1f}%)")
    if report.batching:
        lines.append(f"batches     {report.batching}")
    lines.append(f"EOS         {'ok' if report.eos.get('ok') else 'PROBLEM'}: {report.eos.get('message', '')}")
    for warning in report.warnings:
        lines.append(f"warning     {warning}")
    for number, example in enumerate(report.examples, start=1):
        lines.append("")
        lines.append(f"example {number} ({example['trained_tokens']} of {example['tokens']} tokens trained"
                     f"{', trained text marked ' + '[[like this]]' if not color else ', trained text in green'}):")
        text = ""
        for segment in example["segments"]:
            if segment["trained"]:
                text += f"\x1b[42;30m{segment['text']}\x1b[0m" if color else f"[[{segment['text']}]]"
            else:
                text += segment["text"]
        lines.append(text)
    return "\n".join(lines)


def progress_printer():
    """A job's progress (export, evaluation) as a line on stderr every ten percent."""
    last = [-1]

    def show(fraction: float, message: str) -> None:
        percent = int(fraction * 100)
        if percent // 10 != last[0] // 10 or fraction >= 1.0:
            last[0] = percent
            print(f"  {percent:3d}%  {message}", file=sys.stderr, flush=True)

    return show
