"""The models already on this computer: the Hugging Face cache (through huggingface_hub's cache API,
`scan_cache_dir` / `delete_revisions`) and .gguf files in folders the user adds, each with its size on
disk, architecture and parameter count, read from file headers without loading weights.

Nothing here reads or stores a Hub token: huggingface_hub finds it itself (HF_TOKEN, or the file
`hf auth login` writes).
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from qlora_studio.core.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class LibraryError(UserError):
    """A cache or download problem, said in one line."""


@dataclass(frozen=True)
class LibraryModel:
    name: str  # what model.name_or_path takes: a Hub id, or the path of a .gguf file
    kind: str  # "hub" (in the Hugging Face cache) | "gguf" (a file in a folder of the user's, or in a Hub repo)
    path: Path  # the cached snapshot folder, or the .gguf file
    size_bytes: int  # on disk: the whole cached repo (all revisions, shared blobs once), or the file
    architecture: str | None = None  # LlamaForCausalLM; for GGUF the general.architecture (llama)
    params: int | None = None  # counted from the weight files' headers
    revision: str | None = None  # the cached commit described
    last_used: float = 0.0
    problem: str | None = None  # why it cannot be trained as it is (incomplete, an adapter, no config)
    notes: tuple[str, ...] = field(default=())

    @property
    def trainable(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class Library:
    models: list[LibraryModel]
    cache_dir: Path
    incomplete_bytes: int = 0  # partial downloads (*.incomplete) left in the cache
    warnings: tuple[str, ...] = ()


def hub_cache_dir() -> Path:
    """Where downloads go: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def scan_library(gguf_folders: list[str | Path] = (), cache_dir: str | Path | None = None) -> Library:
    """Every model in the Hugging Face cache, then every .gguf file in `gguf_folders`, newest use first."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    folder = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    models: list[LibraryModel] = []
    incomplete, warnings = 0, ()
    try:
        info = scan_cache_dir(folder)
    except CacheNotFound:
        info = None
    if info is not None:
        for repo in info.repos:
            if repo.repo_type == "model" and repo.revisions:
                models += _describe_repo(repo)
        incomplete = int(getattr(info, "incomplete_size_on_disk", 0) or 0)
        warnings = tuple(str(w) for w in info.warnings)
    models.sort(key=lambda m: -m.last_used)
    seen = {m.path for m in models}
    for gguf_folder in gguf_folders:
        for path in sorted(Path(gguf_folder).expanduser().rglob("*.gguf")):
            if path.resolve() not in seen and path.is_file():
                seen.add(path.resolve())
                models.append(describe_gguf(path))
    return Library(models, folder, incomplete, warnings)


def _describe_repo(repo) -> list[LibraryModel]:
    """The revision `main` points at (else the newest); a repo of .gguf files gives one entry per file."""
    revision = sorted(repo.revisions, key=lambda r: ("main" not in r.refs, -r.last_modified))[0]
    snapshot = Path(revision.snapshot_path)
    files = {str(Path(f.file_path).relative_to(snapshot)): f for f in revision.files}
    older = len(repo.revisions) - 1
    notes = (f"{older} older revision{'s' if older > 1 else ''} cached",) if older else ()
    ggufs = sorted(name for name in files if name.lower().endswith(".gguf"))
    if "config.json" not in files and ggufs:
        return [describe_gguf(snapshot / name, repo.last_accessed, f"{repo.repo_id} (Hub)") for name in ggufs]
    config = _read_json(snapshot / "config.json") if "config.json" in files else None
    weights = [name for name in files if name.endswith(".safetensors")]
    problem = None
    if "adapter_config.json" in files and config is None:
        problem = "a LoRA adapter, not a base model"
    elif config is None:
        problem = "no config.json: not a transformers model"
    else:
        missing = _missing_shards(snapshot, files)
        if missing:
            problem = f"incomplete download: {len(missing)} weight file{'s' if len(missing) > 1 else ''} missing"
        elif not any(name.endswith(WEIGHT_SUFFIXES) for name in files):
            problem = "no weight files cached (only the config)"
    architectures = (config or {}).get("architectures") or [(config or {}).get("model_type")]
    return [LibraryModel(
        name=repo.repo_id, kind="hub", path=snapshot, size_bytes=int(repo.size_on_disk),
        architecture=architectures[0] if architectures and architectures[0] else None,
        params=safetensors_params([snapshot / name for name in weights]) if weights else None,
        revision=revision.commit_hash, last_used=float(repo.last_accessed or 0), problem=problem, notes=notes,
    )]


def _missing_shards(snapshot: Path, files: dict) -> list[str]:
    for index in SHARD_INDEXES:
        if index in files:
            weight_map = (_read_json(snapshot / index) or {}).get("weight_map", {})
            return sorted(set(weight_map.values()) - set(files))
    return []


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def safetensors_params(paths: list[Path]) -> int | None:
    """Parameters stored in .safetensors files, from their JSON headers (the format's first 8 bytes
    give the header's length); no tensor is read."""
    total = 0
    try:
        for path in paths:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > min(path.stat().st_size, 100 * 2**20):  # not a safetensors file
                    return None
                header = json.loads(fh.read(length))
            for name, tensor in header.items():
                if name != "__metadata__":
                    count = 1
                    for dim in tensor["shape"]:
                        count *= dim
                    total += count
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total or None


# ---- GGUF ------------------------------------------------------------------------------------

def describe_gguf(path: Path, last_used: float = 0.0, origin: str | None = None) -> LibraryModel:
    path = Path(path)
    try:
        stat = path.stat()
        summary = _cached_gguf_header(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        problem = None
    except (OSError, ValueError, struct.error) as exc:
        summary, problem = {}, f"not a readable GGUF file ({exc})"
    notes = tuple(n for n in (origin, summary.get("name")) if n)
    return LibraryModel(
        name=str(path), kind="gguf", path=path, size_bytes=path.stat().st_size if path.exists() else 0,
        architecture=summary.get("architecture"), params=summary.get("params"),
        last_used=last_used or (path.stat().st_mtime if path.exists() else 0.0), problem=problem, notes=notes,
    )


@lru_cache(maxsize=256)
def _cached_gguf_header(path: str, size: int, mtime_ns: int) -> dict:
    """Read once per file version: the picker and the library list the same folders again and again."""
    return gguf_header(Path(path))


# GGUF value types (ggml's gguf.h): fixed sizes, 8 = string, 9 = array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_WANTED_KEYS = {"general.architecture": "architecture", "general.name": "name"}


def gguf_header(path: Path) -> dict:
    """{architecture, name, params} from a GGUF file's header.

    Hand-written on purpose: gguf's GGUFReader builds a numpy view per array element, 17 s for the
    49k-token vocabulary of a 135M model on this CPU; walking the header with struct takes
    milliseconds. Parameters are the tensors' element counts (logical, before quantization)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError("no GGUF magic number")
        version, tensors, kvs = struct.unpack_from("<IQQ", buf, 4)
        if not 2 <= version <= 3:
            raise ValueError(f"GGUF version {version} is not supported")
        pos = 24
        found: dict = {}

        def string(at: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", buf, at)
            return bytes(buf[at + 8:at + 8 + length]).decode("utf-8", "replace"), at + 8 + length

        def skip_string(at: int) -> int:
            return at + 8 + struct.unpack_from("<Q", buf, at)[0]

        def skip(kind: int, at: int) -> int:
            if kind in _GGUF_SIZES:
                return at + _GGUF_SIZES[kind]
            if kind == 8:
                return skip_string(at)
            if kind == 9:
                inner, count = struct.unpack_from("<IQ", buf, at)
                at += 12
                if inner in _GGUF_SIZES:
                    return at + count * _GGUF_SIZES[inner]
                for _ in range(count):
                    at = skip_string(at) if inner == 8 else skip(inner, at)
                return at
            raise ValueError(f"unknown GGUF value type {kind}")

        for _ in range(kvs):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            if key in _WANTED_KEYS and kind == 8:
                found[_WANTED_KEYS[key]], pos = string(pos)
            else:
                pos = skip(kind, pos)
        params = 0
        for _ in range(tensors):
            pos = skip_string(pos)  # the tensor's name
            (dims,) = struct.unpack_from("<I", buf, pos)
            shape = struct.unpack_from(f"<{dims}Q", buf, pos + 4)
            pos += 4 + 8 * dims + 4 + 8  # dims, then the type (u32) and the data offset (u64)
            count = 1
            for dim in shape:
                count *= dim
            params += count
        found["params"] = params
        return found


# ---- deleting ----------------------------------------------------------------------------------

def delete_cached_model(repo_id: str, cache_dir: str | Path | None = None, *, dry_run: bool = False) -> int:
    """Delete every cached revision of a model through huggingface_hub's cache API; returns the bytes
    freed (blobs another revision still uses would stay)."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    folder = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    try:
        info = scan_cache_dir(folder)
    except CacheNotFound:
        raise LibraryError(f"no Hugging Face cache at {folder}") from None
    repos = [r for r in info.repos if r.repo_id == repo_id and r.repo_type == "model"]
    if not repos:
        raise LibraryError(f"{repo_id} is not in the Hugging Face cache at {folder}")
    strategy = info.delete_revisions(*(revision.commit_hash for revision in repos[0].revisions))
    if not dry_run:
        strategy.execute()
    return int(strategy.expected_freed_size)


def delete_incomplete(cache_dir: str | Path | None = None) -> int:
    """Remove the partial files of interrupted downloads (scan_cache_dir lists them); returns bytes freed."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        info = scan_cache_dir(Path(cache_dir) if cache_dir is not None else hub_cache_dir())
    except CacheNotFound:
        return 0
    freed = 0
    for item in getattr(info, "incomplete_files", ()):
        try:
            size = int(item.size_on_disk)
            Path(item.file_path).unlink()
            freed += size
        except FileNotFoundError:
            pass
    return freed
