"""Thread-safe requests from the outside (window, signal handler, tests) to a running training.

The runner polls this object between optimizer steps: a queued Qt slot could not run while the
worker thread is busy training, and a flag needs no event loop.
"""

from __future__ import annotations

import threading
from typing import Callable

Asker = Callable[[str, list[str]], str]


class TrainControl:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._paused = False
        self._save = False
        self._extend = 0
        self.asker: Asker | None = None
        """Answers a question the run cannot settle alone (e.g. at micro-batch 1 after an OOM).
        Called on the training thread; may block until the user answers."""
        self.process_id: int | None = None
        """The child process training this run, while a supervisor runs one (training.supervisor)."""

    # ---- requests (any thread) ----
    def request_stop(self) -> None:
        """Stop after the current step, saving a checkpoint first."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()

    def pause(self) -> None:
        with self._wake:
            self._paused = True

    def resume(self) -> None:
        with self._wake:
            self._paused = False
            self._wake.notify_all()

    def request_save(self) -> None:
        """Write a checkpoint after the current step."""
        with self._wake:
            self._save = True
            self._wake.notify_all()

    def extend(self, steps: int) -> None:
        """Train `steps` more optimizer steps than planned."""
        if steps < 1:
            raise ValueError("extend by at least one step")
        with self._wake:
            self._extend += steps
            self._wake.notify_all()

    # ---- state (any thread) ----
    @property
    def stop_requested(self) -> bool:
        with self._lock:
            return self._stop

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    @property
    def wants_attention(self) -> bool:
        """Any request waiting to be served between steps (a pause included)."""
        with self._lock:
            return self._stop or self._paused or self._save or self._extend > 0

    # ---- polling (training thread) ----
    def take_save(self) -> bool:
        with self._lock:
            wanted, self._save = self._save, False
            return wanted

    def take_extension(self) -> int:
        with self._lock:
            steps, self._extend = self._extend, 0
            return steps

    def wait_while_paused(self, on_tick: Callable[[], None] | None = None) -> None:
        """Block while paused, until resumed, stopped, or a checkpoint is asked for (the caller then
        saves and waits again). `on_tick` runs about twice a second while waiting (other processes'
        heartbeat)."""
        with self._wake:
            while self._paused and not self._stop and not self._save:
                self._wake.wait(timeout=0.5)
                if on_tick is not None:
                    self._wake.release()
                    try:
                        on_tick()
                    finally:
                        self._wake.acquire()

    def ask(self, question: str, options: list[str], default: str) -> str:
        if self.asker is None:
            return default
        answer = self.asker(question, options)
        return answer if answer in options else default


class ControlFile:
    """Requests to a run in another process (training.supervisor), through <run>/control.json.

    Writers (the supervisor, a second terminal) call stop/pause/resume/save/extend/answer; rank 0 of
    the run follows the file with `follow(control)` and turns changes into `TrainControl` requests.
    Save and extend are counters, so every request is served once; answers are keyed by question.
    """

    def __init__(self, run_dir) -> None:
        from pathlib import Path

        self.path = Path(run_dir) / "control.json"

    def read(self) -> dict:
        import json

        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _update(self, **changes) -> None:
        import json
        import os

        data = {"stop": False, "paused": False, "save": 0, "extend": 0, "answers": {}, **self.read()}
        for key, value in changes.items():
            if key in ("save", "extend"):
                data[key] += value
            elif key == "answers":
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def stop(self) -> None:
        self._update(stop=True)

    def pause(self) -> None:
        self._update(paused=True)

    def resume(self) -> None:
        self._update(paused=False)

    def save(self) -> None:
        self._update(save=1)

    def extend(self, steps: int) -> None:
        self._update(extend=steps)

    def answer(self, question_id: int, answer: str) -> None:
        self._update(answers={str(question_id): answer})

    def answer_to(self, question_id: int) -> str | None:
        return self.read().get("answers", {}).get(str(question_id))

    def follow(self, control: TrainControl, interval: float = 0.2) -> threading.Event:
        """Apply the file's requests to `control` until the returned event is set."""
        done = threading.Event()
        seen = {"save": self.read().get("save", 0), "extend": self.read().get("extend", 0)}

        def watch() -> None:
            while not done.wait(interval):
                data = self.read()
                if data.get("stop"):
                    control.request_stop()
                if data.get("paused") and not control.paused:
                    control.pause()
                elif not data.get("paused") and control.paused:
                    control.resume()
                if data.get("save", 0) > seen["save"]:
                    seen["save"] = data["save"]
                    control.request_save()
                if data.get("extend", 0) > seen["extend"]:
                    control.extend(data["extend"] - seen["extend"])
                    seen["extend"] = data["extend"]

        threading.Thread(target=watch, name="control-file", daemon=True).start()
        return done
