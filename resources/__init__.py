"""Files that ship with the app: sample data, presets, icons, styles."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
SAMPLE_DATA = ROOT / "sample_data"
PRESETS = ROOT / "presets"
ICONS = ROOT / "icons"
STYLES = ROOT / "styles"
MODEL_SHAPES = ROOT / "model_shapes.json"  # config.json shape fields of popular models, for planning offline


def sample_names() -> list[str]:
    return sorted(p.stem for p in SAMPLE_DATA.glob("*.jsonl"))


def sample_path(name: str) -> Path:
    """The bundled dataset `name` (as in data.path: sample:<name>)."""
    return SAMPLE_DATA / f"{name}.jsonl"


def preset_paths() -> dict[str, Path]:
    """Bundled presets by display name (file stem)."""
    return {p.stem: p for p in sorted(PRESETS.glob("*.yaml"))}
