"""How error messages quote what a user gave: short enough to stay one readable line."""

from __future__ import annotations


def show(value, width: int = 60) -> str:
    """`value`'s repr, cut to `width` characters (a 400-digit number or a long table stays readable)."""
    try:
        r = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        r = f"<{type(value).__name__} too large to print>"
    return r if len(r) <= width else r[: width - 3] + "..."
