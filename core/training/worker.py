"""The child that trains one run folder for a supervisor (training.supervisor):
`python -m qlora_studio.core.training.worker RUN_DIR`, alone or as one rank of torch's launcher;
or, started ahead of its run as the supervisor's spare, `... worker --spare`: it imports the
libraries, then reads the run folder from stdin (an empty line or a closed stdin: it exits).

Rank 0 writes one JSON object a line on stdout (the events, a heartbeat every second, and the
questions the run asks) and follows <run>/control.json for requests and answers. Whatever the
libraries print goes to stderr, so stdout carries nothing else. Every rank records its result in
<run>/ranks/rank-N.json.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path


class Channel:
    """JSON lines on the supervisor's pipe, whole lines from any thread. A broken pipe means the
    supervisor is gone: the run is asked to stop (its checkpoint is saved) instead of training on
    for nobody."""

    def __init__(self, stream, control) -> None:
        self.stream, self.control = stream, control
        self._lock = threading.Lock()
        self.broken = False

    def send(self, message: dict) -> None:
        line = json.dumps(message, default=str) + "\n"
        with self._lock:
            if self.broken:
                return
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.broken = True
                self.control.request_stop()

    def emit(self, event) -> None:
        self.send(event.to_dict())

    def beat(self, done: threading.Event, every: float) -> None:
        while not done.wait(every):
            self.send({"type": "heartbeat", "time": time.time()})


def asker(channel: Channel, files, control):
    """The run's questions go to the supervisor; the answer comes back through control.json."""
    ids = itertools.count(1)

    def ask(question: str, options: list[str]) -> str:
        question_id = next(ids)
        channel.send({"type": "question", "id": question_id, "question": question, "options": options})
        while True:
            answer = files.answer_to(question_id)
            if answer is not None:
                return answer
            if control.stop_requested or channel.broken:  # never hang on a question nobody will answer
                return "stop" if "stop" in options else options[-1]
            time.sleep(0.2)

    return ask


def events_stream():
    """A private copy of stdout for the channel; file descriptor 1 then points at stderr, so a
    library's print cannot break a line of the channel."""
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    return stream


def main(run_dir: str) -> int:
    from qlora_studio.core.model.devices import configure_cuda_allocator
    from qlora_studio.core.quiet import quiet_libraries

    configure_cuda_allocator()  # inherited from the launching process, unless started by hand
    quiet_libraries()  # before the imports below pull in transformers and bitsandbytes
    from qlora_studio.core.atomic import write_json_atomic
    from qlora_studio.core.training.control import ControlFile, TrainControl
    from qlora_studio.core.training.runner import run_training
    from qlora_studio.core.training.supervisor import HEARTBEAT_S

    rank = int(os.environ.get("RANK", "0"))
    control = TrainControl()
    channel = done = None
    if rank == 0:
        files = ControlFile(run_dir)
        channel = Channel(events_stream(), control)
        control.asker = asker(channel, files, control)
        done = files.follow(control)
        threading.Thread(target=channel.beat, args=(done, HEARTBEAT_S), name="heartbeat", daemon=True).start()
    try:
        result = run_training(None, channel.emit if channel else None, control, resume_from=run_dir)
    finally:
        if done is not None:
            done.set()
    ranks = Path(run_dir) / "ranks"
    ranks.mkdir(exist_ok=True)
    write_json_atomic(ranks / f"rank-{rank}.json", {
        "rank": rank, "status": result.status, "step": result.step, "adapter_digest": result.adapter_digest,
        "error": result.error,
    })
    if result.status == "failed" and rank != 0:
        print(f"rank {rank} failed: {result.error}", file=sys.stderr, flush=True)
    return result.exit_code


def spare() -> int:
    """Import what training needs (the seconds a cold start costs), then train the run folder the
    supervisor names on stdin."""
    from qlora_studio.core.model.devices import configure_cuda_allocator
    from qlora_studio.core.quiet import quiet_libraries

    configure_cuda_allocator()
    quiet_libraries()
    from qlora_studio.core.libraries import import_libraries

    import_libraries()  # torch, transformers, datasets, peft
    import bitsandbytes  # noqa: F401
    import transformers.trainer  # noqa: F401 - the Trainer, accelerate with it

    import qlora_studio.core.training.runner  # noqa: F401

    run_dir = sys.stdin.readline().strip()
    return main(run_dir) if run_dir else 0


if __name__ == "__main__":
    sys.exit(spare() if sys.argv[1] == "--spare" else main(sys.argv[1]))
