"""Numbers as people read them in the window."""

from __future__ import annotations

import html
from datetime import datetime

GIB = 1024**3
MIB = 1024**2


def size(nbytes: float | None) -> str:
    if nbytes is None:
        return "–"
    if abs(nbytes) >= GIB:
        return f"{nbytes / GIB:.2f} GiB"
    return f"{nbytes / MIB:.1f} MiB"


def params(n: int | None) -> str:
    if not n:
        return "–"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def loss(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def timestamp(epoch: float | None) -> str:
    return "–" if not epoch else datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def escape(text: str) -> str:
    return html.escape(text, quote=False)
