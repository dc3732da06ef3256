"""A run trained in a child process that this process supervises: every run the window starts, and
every `--processes N` run.

The child (`training.worker`, or torch's launcher starting one worker per process) trains the run
folder made here. It writes one JSON object a line on its stdout, which stays free of anything
else: the run's events in their own codec, a heartbeat every second, and a question when the run
needs an answer (out of memory at micro-batch 1). Requests reach it through <run>/control.json
(`ControlFile`): pause, stop, save now, extend, and the answers. It exits at the end of the run,
so its CUDA context and allocator cache go back to the GPU whole.

Whatever ends the child without a result (a signal such as SIGKILL or SIGSEGV, an exit code, or
silence longer than `SILENCE_LIMIT_S`) is a failed run with cause `crash`, recorded in the run
folder, whose last checkpoint stays resumable: a native crash costs the run, never the window.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from qlora_studio.core.config.files import absolute_paths
from qlora_studio.core.config.schema import RunConfig
from qlora_studio.core.errors import FailureCause, UserError
from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.control import ControlFile, TrainControl
from qlora_studio.core.runs.recorder import RunRecorder
from qlora_studio.core.runs.store import RunFolder

HEARTBEAT_S = 1.0  # the child's
SILENCE_LIMIT_S = 120.0  # no line for this long: the child is hung (a heartbeat thread still runs in a busy one)
STDERR_LINES = 200  # the child's last stderr lines, kept as the details of a crash


class Spare:
    """One worker started before its run (`worker --spare`): python up and the libraries imported
    while the user is still setting up, so Start waits only for the run's own loading. It is taken
    only by a run whose environment and working folder are those it started with; otherwise it is
    let go and the run starts cold. A frozen app (no `python -m`) starts every run cold."""

    _lock = threading.Lock()
    _waiting: tuple[subprocess.Popen, dict[str, str], str] | None = None

    @classmethod
    def prepare(cls) -> None:
        """Have one spare waiting (no-op if one already is)."""
        if getattr(sys, "frozen", False):
            return
        with cls._lock:
            if cls._waiting is not None and cls._waiting[0].poll() is None:
                return
            env, cwd = dict(os.environ), os.getcwd()
            process = _start([sys.executable, "-m", "qlora_studio.core.training.worker", "--spare"], env,
                             stdin=subprocess.PIPE)
            cls._waiting = (process, env, cwd)

    @classmethod
    def take(cls, env: dict[str, str]) -> subprocess.Popen | None:
        """The waiting spare for a run with `env`, if it matches and is alive; it is no longer the spare."""
        with cls._lock:
            waiting, cls._waiting = cls._waiting, None
        if waiting is None:
            return None
        process, spare_env, cwd = waiting
        if process.poll() is None and spare_env == env and cwd == os.getcwd():
            return process
        _let_go(process)
        return None

    @classmethod
    def release(cls) -> None:
        """Let the spare go (the app is closing)."""
        with cls._lock:
            waiting, cls._waiting = cls._waiting, None
        if waiting is not None:
            _let_go(waiting[0])


atexit.register(Spare.release)


def _start(command: list[str], env: dict[str, str], stdin=subprocess.DEVNULL) -> subprocess.Popen:
    # A session of its own: Ctrl+C in a terminal reaches this process, which asks the child to stop
    # after a checkpoint, instead of killing it mid-step.
    return subprocess.Popen(command, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1, start_new_session=True)


def _let_go(process: subprocess.Popen) -> None:
    """A spare not taken holds nothing yet (no run, no files, no GPU): ended at once, without waiting for its imports."""
    _kill(process)


def run_supervised(config: RunConfig | None, emit: ev.Emit | None, control: TrainControl | None,
                   resume_from: str | Path | None = None) -> ev.RunResult:
    """`run_training` in a child process (several with distributed.num_processes > 1): the same
    events, control and result; never raises for a failed run."""
    emit = emit or (lambda event: None)
    control = control or TrainControl()
    try:
        if resume_from is not None:
            folder = RunFolder.open(resume_from)
            config = config or folder.load_config()
            folder.check_resumable(config)
            config.save(folder.config_path)
        else:
            config = absolute_paths(config)
        env = child_environment(config)
        if resume_from is None:
            folder = RunFolder.create(config)
    except UserError as exc:
        emit(ev.Failed(str(exc), "", None, None, exc.cause))
        return ev.RunResult("failed", None, 0, None, None, error=str(exc), cause=exc.cause)
    return Supervision(folder, config, emit, control, env, fresh=resume_from is None).run()


def child_environment(config: RunConfig) -> dict[str, str]:
    from qlora_studio.core.training.distributed import check_processes

    env = dict(os.environ)
    processes = config.distributed.num_processes
    gpus = check_processes(config) if processes > 1 else None
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    if processes > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // processes)))
    return env


def child_command(run_dir: Path, processes: int) -> list[str]:
    """One worker on the run folder, or torch's launcher starting one per process. A frozen app
    (PyInstaller) is its own Python: it runs the worker through its hidden `worker` command."""
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                "-m", "qlora_studio.core.training.worker", str(run_dir)]
    if getattr(sys, "frozen", False):
        return [sys.executable, "worker", str(run_dir)]
    return [sys.executable, "-m", "qlora_studio.core.training.worker", str(run_dir)]


class Supervision:
    """One child (or launcher) on one run folder, from its start to its result."""

    def __init__(self, folder: RunFolder, config: RunConfig, emit: ev.Emit, control: TrainControl,
                 env: dict[str, str], fresh: bool):
        self.folder, self.config, self.emit, self.control = folder, config, emit, control
        self.env, self.fresh = env, fresh
        self.files = ControlFile(folder.path)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.last: ev.Event | None = None  # the child's Finished or Failed
        self.started = False
        self.silent = False

    def run(self) -> ev.RunResult:
        self.files.clear()  # a stale request must not steer the new child
        processes = self.config.distributed.num_processes
        process = Spare.take(self.env) if processes == 1 else None
        if process is not None:
            try:
                process.stdin.write(f"{self.folder.path}\n")
                process.stdin.close()
            except OSError:  # it died after all: start cold
                _kill(process)
                process = None
        if process is None:
            process = _start(child_command(self.folder.path, processes), self.env)
        self.control.process_id = process.pid
        done = threading.Event()
        readers = [threading.Thread(target=self._read, args=(process.stdout, self.lines), daemon=True),
                   threading.Thread(target=self._read, args=(process.stderr, None), daemon=True)]
        for thread in readers:
            thread.start()
        threading.Thread(target=forward_control, args=(self.control, self.files, done), daemon=True).start()
        try:
            self._follow(process)
            code = process.wait()
        except BaseException:  # a second Ctrl+C, or the caller going away: take the child down too
            _kill(process)
            raise
        finally:
            done.set()
            self.control.process_id = None
        readers[1].join(timeout=5)
        return self._result(code)

    def _read(self, stream, into: queue.Queue | None) -> None:
        for line in stream:
            if into is not None:
                into.put(line)
            else:
                self.stderr.append(line)
        if into is not None:
            into.put(None)

    def _follow(self, process: subprocess.Popen) -> None:
        while True:
            try:
                line = self.lines.get(timeout=SILENCE_LIMIT_S)
            except queue.Empty:
                self.silent = True
                _kill(process)
                return
            if line is None:
                return
            try:
                message = json.loads(line)
            except ValueError:
                continue
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "heartbeat":
                continue
            if kind == "question":
                self._answer(message)
                continue
            try:
                event = ev.event_from_dict(message)
            except (KeyError, TypeError, ValueError):
                continue
            if isinstance(event, (ev.Finished, ev.Failed)):
                self.last = event
            self.started = self.started or isinstance(event, ev.RunStarted)
            self.emit(event)

    def _answer(self, message: dict) -> None:
        """The child waits on a question: the caller's asker answers it here (the window shows a dialog)."""
        options = [str(o) for o in message.get("options", [])]
        default = "stop" if "stop" in options else (options[-1] if options else "")
        answer = self.control.ask(str(message.get("question", "")), options, default)
        self.files.answer(int(message.get("id", 0)), answer)

    def _result(self, code: int) -> ev.RunResult:
        folder, last = self.folder, self.last
        if isinstance(last, ev.Finished):
            return ev.RunResult(last.status, str(folder.path), last.step, last.final_loss, last.adapter_dir,
                                adapter_digest=_rank_digest(folder.path))
        if not isinstance(last, ev.Failed):  # the child ended without a result
            last = self._crashed(code)
            self.emit(last)
        if not self.started and self.fresh:
            shutil.rmtree(folder.path, ignore_errors=True)  # it never trained: no run folder to leave behind
            return ev.RunResult(last.status, None, 0, None, None, error=last.reason, cause=last.cause,
                                details=last.details)
        return ev.RunResult(last.status, str(folder.path), last.step or 0, None, None, error=last.reason,
                            cause=last.cause, details=last.details)

    def _crashed(self, code: int) -> ev.Failed:
        """What a child that died took with it, recorded in the folder once it had trained (its
        checkpoints are kept and resumable)."""
        details = "".join(self.stderr)
        if not self.started and self.fresh:
            reason = f"the training process {describe_exit(code, self.silent)} before the first step"
            return ev.Failed(reason, details, None, None, FailureCause.CRASH)
        folder = self.folder
        folder.repair()  # what the dead process left half written
        checkpoints = folder.checkpoints()
        step = checkpoints[-1][0] if checkpoints else 0
        kept = (f"; the checkpoint of step {step} is kept: Resume continues from there" if checkpoints
                else "; no checkpoint had been saved yet")
        reason = (_rank_failure(folder.path) or f"the training process {describe_exit(code, self.silent)}") + kept
        failed = ev.Failed(reason, details, str(folder.path), step, FailureCause.CRASH)
        RunRecorder(folder)(failed)  # status.json and events.jsonl say what happened
        return failed


def describe_exit(code: int, silent: bool = False) -> str:
    """How a child ended, in words: 'was killed by SIGKILL', 'crashed with SIGSEGV', 'ended with exit code 3 ...'."""
    if silent:
        return f"stopped answering (nothing for {SILENCE_LIMIT_S:.0f} s) and was ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        verb = "was killed by" if -code in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT) else "crashed with"
        return f"{verb} {name}"
    return f"ended with exit code {code} before reporting a result"


def forward_control(control: TrainControl, files: ControlFile, done: threading.Event) -> None:
    """This process's TrainControl -> control.json, which the child (rank 0) follows."""
    stopped = paused = False
    while not done.wait(0.1):
        if control.stop_requested and not stopped:
            stopped = True
            files.stop()
        if control.paused != paused:
            paused = control.paused
            files.pause() if paused else files.resume()
        if control.take_save():
            files.save()
        steps = control.take_extension()
        if steps:
            files.extend(steps)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _rank_failure(run_dir: Path) -> str | None:
    """The first error a rank recorded (a rank other than 0 has no event stream of its own)."""
    for path in sorted((Path(run_dir) / "ranks").glob("rank-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("error"):
            return f"rank {record['rank']}: {record['error']}"
    return None


def _rank_digest(run_dir: Path) -> str | None:
    try:
        return json.loads((Path(run_dir) / "ranks" / "rank-0.json").read_text(encoding="utf-8"))["adapter_digest"]
    except (OSError, ValueError, KeyError):
        return None
