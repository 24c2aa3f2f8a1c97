"""Sizes for people: one formatter for the build's output, the model README and the lock notes."""

from __future__ import annotations


def human_size(size: float) -> str:
    """``13.5 GB``: decimal units, as the Hugging Face Hub shows sizes."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
