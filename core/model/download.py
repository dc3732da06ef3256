"""Downloading a model from the Hugging Face Hub into its cache, with progress and a cancel that
always works: `DownloadProcess` runs `snapshot_download` in a spawned child process, so cancelling
terminates it whatever the transport (an exception from the progress bar stops plain-HTTP downloads,
but not Xet transfers running in Rust). Hub errors become one line the window can show as it is,
gated models included ("accept its terms, then `hf auth login`").

The token is huggingface_hub's business: it reads HF_TOKEN or the file `hf auth login` writes. This
module never reads, passes, stores or logs one.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qlora_studio.core.model.library import LibraryError


class DownloadCancelled(Exception):
    """Raised from the progress bar once cancelled; huggingface_hub then deletes the partial file."""


@dataclass
class Progress:
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0

    @property
    def fraction(self) -> float:
        if self.bytes_total:
            return min(1.0, self.bytes_done / self.bytes_total)
        return self.files_done / self.files_total if self.files_total else 0.0


def progress_class(on_progress: Callable[[Progress], None], cancel: threading.Event | None = None,
                   bytes_total: int = 0):
    """A tqdm class for snapshot_download(tqdm_class=...) that reports to a callback and cancels.

    snapshot_download (huggingface_hub 2.4) builds, from this class, one bar counting files
    ("Fetching N files") and two byte bars (unit "B": bytes received, bytes written), and feeds
    every file's progress into those bars from its worker threads: the class is *not* passed to the
    individual file downloads, so there is no per-file progress (call hf_hub_download per file for
    that). update() raises DownloadCancelled once `cancel` is set, which ends the download of a
    plain-HTTP file in its read loop; Xet downloads report through a callback from Rust, so use
    DownloadProcess (a child process that can be terminated) where cancelling must be certain.
    The byte bars' totals grow as files start; `bytes_total`, known beforehand, keeps the fraction steady.
    """
    from tqdm.auto import tqdm

    state = Progress(bytes_total=bytes_total)
    lock = threading.Lock()

    class _Bar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.pop("name", None)  # huggingface_hub's own tqdm takes name=; plain tqdm does not
            kwargs["disable"] = True  # no terminal output: the window draws its own bar
            self._is_bytes = kwargs.get("unit") == "B"
            self._count = int(kwargs.get("initial") or 0)
            self._total = int(kwargs.get("total") or 0)
            super().__init__(*args, **kwargs)
            self._publish()

        def update(self, n: float | None = 1) -> bool | None:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled("download cancelled")
            self._count += int(n or 0)
            self._publish()
            return super().update(n)

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            # snapshot_download grows `total` while files are discovered, then calls refresh()
            self._total = int(self.total or 0)
            self._publish()
            return super().refresh(*args, **kwargs)

        def _publish(self) -> None:
            with lock:
                total = int(getattr(self, "total", None) or self._total or 0)
                if self._is_bytes:
                    state.bytes_done = max(state.bytes_done, self._count)
                    state.bytes_total = max(state.bytes_total, total)
                else:
                    state.files_done = self._count
                    state.files_total = total
                snapshot = Progress(state.files_done, state.files_total, state.bytes_done, state.bytes_total)
            on_progress(snapshot)

    return _Bar


def download_model(repo_id: str, *, cache_dir: str | Path | None = None, revision: str | None = None,
                   allow_patterns: list[str] | None = None, on_progress: Callable[[Progress], None] = lambda p: None,
                   cancel: threading.Event | None = None, endpoint: str | None = None, max_workers: int = 8) -> Path:
    """snapshot_download into the cache with progress and cancellation; returns the snapshot folder.

    Hub errors become LibraryError with a message the window can show as it is.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import DryRunError

    where = {"revision": revision, "cache_dir": str(cache_dir) if cache_dir else None, "allow_patterns": allow_patterns,
             "endpoint": endpoint}
    try:
        try:
            plan = snapshot_download(repo_id, dry_run=True, tqdm_class=progress_class(lambda p: None), **where)
            todo = sum(f.file_size for f in plan if f.will_download)
        except DryRunError:
            todo = 0  # offline or refused: the download itself raises the error that says which
        path = snapshot_download(repo_id, tqdm_class=progress_class(on_progress, cancel, todo),
                                 max_workers=max_workers, **where)
    except DownloadCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - translated below, re-raised when not a Hub error
        message = explain_hub_error(exc, repo_id)
        if message is None:
            raise
        raise LibraryError(message) from exc
    return Path(path)


RECOMMENDED_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
"""allow_patterns for a model to train: config, safetensors weights, tokenizer; skips *.bin/*.pth
duplicates, ONNX/GGUF/Core ML exports and images that many repos carry as well."""


def explain_hub_error(exc: BaseException, repo_id: str) -> str | None:
    """One line for the window, or None when `exc` is not a Hub problem."""
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):  # subclass of RepositoryNotFoundError: test it first
        return (f"{repo_id} is gated: accept its terms on https://huggingface.co/{repo_id} with your account, "
                "then run `hf auth login` (or set HF_TOKEN) and try again")
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo_id} has no such revision (branch, tag or commit)"
    if isinstance(exc, DisabledRepoError):
        return f"{repo_id} has been disabled on the Hub"
    if isinstance(exc, RepositoryNotFoundError):
        return (f"{repo_id} was not found: check the name; if it is private, run `hf auth login` "
                "with an account that can read it")
    if isinstance(exc, (OfflineModeIsEnabled, IncompleteSnapshotError, LocalEntryNotFoundError)):
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        return f"{repo_id} is not (completely) in the cache and {why}"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return f"the Hub answered {status} for {repo_id}; try again later"
    return None


# ---- downloading in a child process ---------------------------------------------------------

def _child(repo_id: str, kwargs: dict[str, Any], events: Any) -> None:
    """Runs in the child: progress and the outcome go to the parent through `events`."""
    last = [0.0]

    def report(progress: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.1 or progress.fraction >= 1.0:
            last[0] = now
            events.put(("progress", progress))

    try:
        path = download_model(repo_id, on_progress=report, **kwargs)
        events.put(("done", str(path)))
    except LibraryError as exc:
        events.put(("error", str(exc)))
    except Exception as exc:  # noqa: BLE001 - anything else is still one line for the parent
        events.put(("error", f"{type(exc).__name__}: {exc}"))


class DownloadProcess:
    """A download in a spawned child process: cancel() terminates it at once, whatever the transport.

    A terminated child cannot clean up: its partial files stay as
    <cache>/models--org--name/blobs/<etag>.<random>.incomplete. huggingface_hub 2.4 never resumes
    them (the random part is unique to one download), HFCacheInfo.incomplete_files lists them and
    delete_incomplete() removes them: call it after cancel(). Poll `poll()` from the GUI thread
    (e.g. a QTimer) for progress and the outcome.
    """

    def __init__(self, repo_id: str, **kwargs: Any):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs Qt
        self.events = ctx.Queue()
        self.process = ctx.Process(target=_child, args=(repo_id, kwargs, self.events), daemon=True)
        self.progress = Progress()
        self.result: str | None = None
        self.error: str | None = None
        self.cancelled = False

    def start(self) -> "DownloadProcess":
        self.process.start()
        return self

    def poll(self) -> bool:
        """Drain the child's events; True while the download is still running."""
        alive = self.process.is_alive()  # asked first: a child that just ended has flushed its last events
        while True:
            try:
                kind, value = self.events.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                self.progress = value
            elif kind == "done":
                self.result = value
            else:
                self.error = value
        running = alive and self.result is None and self.error is None
        if not running and self.result is None and self.error is None and not self.cancelled:
            self.error = f"the download process ended unexpectedly (exit code {self.process.exitcode})"
        return running

    def cancel(self, timeout: float = 5.0) -> None:
        self.cancelled = True
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the child ends (tests, CLI); True if it finished in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        self.process.join(1)
        self.poll()
        return True
