"""Reading rows from wherever the user keeps them, through `datasets` (Arrow, memory-mapped,
cached), with errors that name the file and line.

A source becomes a list of `SourcePart`s, one per file (or one for a Hub / save_to_disk
dataset), so every row keeps a location the user can open in an editor.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from qlora_studio.core.atomic import write_bytes_atomic
from qlora_studio.core.config.schema import SAMPLE_PREFIX, DataSettings
from qlora_studio.core.errors import DataError

SUFFIX_KINDS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".txt": "txt"}
SUPPORTED = ", ".join(SUFFIX_KINDS)


@dataclass
class SourcePart:
    dataset: object  # datasets.Dataset
    label: str  # what the user sees: a path or a Hub id
    kind: str  # jsonl | json | csv | tsv | parquet | txt | hub | disk
    path: Path | None = None
    _line_numbers: list[int] | None = field(default=None, repr=False)
    bad_lines: list[dict[str, str]] = field(default_factory=list)  # lines no reader could take: where, reason

    def where(self, row: int) -> str:
        """'file.jsonl:17' where a line is meaningful, else 'file.csv row 3' (1-based)."""
        if self.kind == "jsonl" and self.path is not None:
            return f"{self.label}:{self._line_of(row)}"
        noun = {"json": "item", "txt": "piece"}.get(self.kind, "row")
        return f"{self.label} {noun} {row + 1}"

    def _line_of(self, row: int) -> int:
        # pyarrow skips blank lines, so row i is the i-th non-blank line. Counted only when an
        # error needs it.
        if self._line_numbers is None:
            numbers = []
            with open(self.path, "rb") as fh:  # type: ignore[arg-type]
                for number, line in enumerate(fh, start=1):
                    if line.strip():
                        numbers.append(number)
            self._line_numbers = numbers
        return self._line_numbers[row] if row < len(self._line_numbers) else row + 1


def resolve_data_path(path: str) -> str:
    """`sample:<name>` becomes the bundled file; anything else is returned as given."""
    if path.startswith(SAMPLE_PREFIX):
        from qlora_studio.resources import sample_names, sample_path

        name = path[len(SAMPLE_PREFIX):]
        if name not in sample_names():
            raise DataError(f"no bundled sample '{name}'; bundled: {', '.join(sample_names())}", path=path)
        return str(sample_path(name))
    return path


def load_parts(settings: DataSettings, path: str | None = None) -> list[SourcePart]:
    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("datasets").setLevel(logging.CRITICAL)  # we report load errors ourselves
    asked = path if path is not None else settings.path
    resolved = resolve_data_path(asked.strip())
    target = Path(resolved).expanduser()
    if target.is_file():
        return [_load_file(target, settings)]
    if target.is_dir():
        if (target / "dataset_dict.json").is_file() or (target / "state.json").is_file():
            return [_load_from_disk(target, settings)]
        files = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIX_KINDS)
        if not files:
            raise DataError(f"the folder holds no data files ({SUPPORTED})", path=str(target))
        return [_load_file(p, settings) for p in files]
    if target.exists():
        raise DataError("not a regular file or folder", path=str(target))
    looks_like_path = resolved.startswith((".", "/", "~")) or Path(resolved).suffix.lower() in SUFFIX_KINDS
    if looks_like_path or resolved.count("/") > 1 or "\\" in resolved:
        raise DataError("no such file or folder", path=resolved)
    return [_load_hub(resolved, settings)]


def _load_file(path: Path, settings: DataSettings) -> SourcePart:
    import datasets

    kind = SUFFIX_KINDS.get(path.suffix.lower())
    label = str(path)
    if kind is None:
        raise DataError(f"unsupported file type '{path.suffix}'; use one of {SUPPORTED}", path=label)
    _check_text_file(path, binary_ok=(kind == "parquet"))
    if kind == "json":
        kind, field_name = _json_layout(path, settings.field)
    try:
        if kind == "jsonl":
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        elif kind == "json":
            ds = datasets.load_dataset("json", data_files=str(path), field=field_name, split="train")
        elif kind in ("csv", "tsv"):
            ds = datasets.load_dataset("csv", data_files=str(path), split="train", sep="\t" if kind == "tsv" else ",")
        elif kind == "parquet":
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        else:
            sample_by = {"line": "line", "paragraph": "paragraph", "document": "document"}[settings.text_split]
            ds = datasets.load_dataset("text", data_files=str(path), split="train", sample_by=sample_by)
    except Exception as exc:  # datasets wraps every reader's error differently
        # The JSON reader fails on the whole file for one bad line: read the good ones instead.
        part = _load_good_lines(path) if kind == "jsonl" else None
        if part is None:
            raise _describe_load_error(path, kind, exc) from None
        return part
    if len(ds) == 0:
        raise DataError("the file holds no rows", path=label)
    if kind in ("jsonl", "json") and _has_time_columns(ds):
        ds = _as_written(path, kind, field_name if kind == "json" else None)
    return SourcePart(ds, label, kind, path)


def _has_time_columns(ds) -> bool:
    return any(getattr(f, "dtype", "").startswith(("timestamp", "date")) for f in ds.features.values())


def _as_written(path: Path, kind: str, field_name: str | None):
    """pyarrow's JSON reader turns a column whose every value is an ISO date into timestamps, which
    read back as "1903-06-01 00:00:00": such a file is read with Python's json instead, strings kept
    as written."""
    import datasets

    text = path.read_text(encoding="utf-8")
    if kind == "jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        rows = data[field_name] if field_name else data
    return datasets.Dataset.from_list(rows)


def _check_text_file(path: Path, binary_ok: bool) -> None:
    size = path.stat().st_size
    if size == 0:
        raise DataError("the file is empty", path=str(path))
    if binary_ok:
        return
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if not head.strip():
        raise DataError("the file holds only whitespace", path=str(path))
    if b"\x00" in head:
        raise DataError("this is not a text file (binary data?)", path=str(path), line=head[: head.index(b"\x00")].count(b"\n") + 1)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4 or size <= len(head):  # not merely a character cut at the 64 KiB boundary
            line = head[: exc.start].count(b"\n") + 1
            raise DataError("not UTF-8 text (save the file as UTF-8)", path=str(path), line=line) from None


def _json_layout(path: Path, field_name: str | None) -> tuple[str, str | None]:
    """A .json file is an array, an object holding a list of rows, or JSON Lines in disguise."""
    with open(path, "rb") as fh:
        first = fh.read(4096).lstrip()[:1]
    if first == b"[":
        if field_name:
            raise DataError(f"data.field is {field_name!r}, but the file is an array, not an object", path=str(path))
        return "json", None
    if first != b"{":
        raise DataError("expected a JSON array or object", path=str(path), line=1)
    try:
        with open(path, encoding="utf-8") as fh:
            whole = json.load(fh)
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text (save the file as UTF-8)", path=str(path)) from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line: JSON Lines named .json
            return "jsonl", None
        raise DataError(f"invalid JSON ({exc.msg}, column {exc.colno})", path=str(path), line=exc.lineno) from None
    lists = [k for k, v in whole.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)]
    if field_name:
        if field_name not in whole:
            raise DataError(f"data.field {field_name!r} is not a key of the object; keys: {', '.join(whole)}", path=str(path))
        return "json", field_name
    if len(lists) == 1:
        return "json", lists[0]
    if not lists:
        raise DataError("the JSON object holds no list of rows; use an array of objects or JSON Lines", path=str(path))
    raise DataError(f"the JSON object holds several lists ({', '.join(lists)}); set data.field to one", path=str(path))


def _describe_load_error(path: Path, kind: str, exc: Exception) -> DataError:
    cause = exc.__cause__ or exc.__context__ or exc
    if kind == "json":
        try:
            with open(path, encoding="utf-8") as fh:
                json.load(fh)
        except UnicodeDecodeError:
            return DataError("not UTF-8 text (save the file as UTF-8)", path=str(path))
        except json.JSONDecodeError as err:
            return DataError(f"invalid JSON ({err.msg}, column {err.colno})", path=str(path), line=err.lineno)
    if kind in ("csv", "tsv"):
        text = str(cause)
        if "No columns to parse" in text:
            return DataError("the file is empty", path=str(path))
        return DataError(f"cannot parse as {kind.upper()}: {_first_line(text)}", path=str(path))
    if isinstance(cause, StopIteration):
        return DataError("the file holds no rows", path=str(path))
    return DataError(f"cannot read as {kind}: {_first_line(str(cause))}", path=str(path))


def _load_good_lines(path: Path) -> SourcePart | None:
    """A JSON Lines file with lines that are not JSON objects: the good lines, read through the same
    reader from a cleaned copy in our cache, and the bad ones as bad rows (skipped and counted, or
    named, as `data.skip_bad_rows` says). None when every line is a JSON object (the reader
    failed for another reason)."""
    import datasets

    from qlora_studio.core.model.sources import cache_dir

    good_lines: list[int] = []
    bad: list[dict[str, str]] = []
    kept: list[bytes] = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            problem = _json_line_problem(raw)
            if problem:
                bad.append({"where": f"{path}:{number}", "reason": problem})
            else:
                good_lines.append(number)
                kept.append(raw.rstrip(b"\r\n") + b"\n")
    if not bad:
        return None
    if not kept:
        raise DataError(f"no line holds a JSON object (first: line {bad[0]['where'].rsplit(':', 1)[-1]}: "
                        f"{bad[0]['reason']})", path=str(path))
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    clean = cache_dir() / "clean-jsonl" / f"{path.stem}-{key}.jsonl"  # same key, same copy: datasets' cache holds
    if not clean.is_file():
        clean.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(clean, b"".join(kept))
    try:
        ds = datasets.load_dataset("json", data_files=str(clean), split="train")
    except Exception as exc:  # noqa: BLE001 - objects the reader still cannot type: said in one line
        raise DataError(f"cannot read as jsonl: {_first_line(str(exc.__cause__ or exc))}", path=str(path)) from None
    return SourcePart(ds, str(path), "jsonl", path, _line_numbers=good_lines, bad_lines=bad)


def _json_line_problem(raw: bytes) -> str | None:
    try:
        value = json.loads(raw.rstrip(b"\r\n"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"invalid JSON ({exc.msg}, column {exc.colno})"
    if not isinstance(value, dict):
        return f"each line must be a JSON object, this one is a {type(value).__name__}"
    return None


def _load_from_disk(path: Path, settings: DataSettings) -> SourcePart:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - reported to the user in one line
        raise DataError(f"cannot read this save_to_disk folder: {_first_line(str(exc))}", path=str(path)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if settings.split not in loaded:
            raise DataError(f"no split {settings.split!r}; splits: {', '.join(loaded)} (set data.split)", path=str(path))
        loaded = loaded[settings.split]
    if len(loaded) == 0:
        raise DataError("the dataset holds no rows", path=str(path))
    return SourcePart(loaded, str(path), "disk", path)


def _load_hub(repo_id: str, settings: DataSettings) -> SourcePart:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        ds = datasets.load_dataset(repo_id, name=settings.subset, split=settings.split)
    except DatasetNotFoundError:
        raise DataError("no such file, folder or Hub dataset", path=repo_id) from None
    except ValueError as exc:  # unknown split or subset
        raise DataError(f"{_first_line(str(exc))} (set data.subset / data.split)", path=repo_id) from None
    except (ConnectionError, OSError) as exc:
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the Hub cannot be reached ({type(exc).__name__})"
        raise DataError(f"not a local file, and it cannot be fetched from the Hub: {why}", path=repo_id) from None
    return SourcePart(ds, repo_id, "hub", None)


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
