"""How error messages quote what a user gave or a child process said: short enough to stay one line."""

from __future__ import annotations

from pathlib import Path


def show(value, width: int = 60) -> str:
    """`value`'s repr, cut to `width` characters (a 400-digit number or a long table stays readable)."""
    try:
        r = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        r = f"<{type(value).__name__} too large to print>"
    return r if len(r) <= width else r[: width - 3] + "..."


def log_reason(path: Path, width: int = 400) -> str:
    """Why a child process stopped, from its log: the last line that says "error" (else the last
    line, else "(no output)"), cut to `width` characters."""
    try:
        lines = [x.strip() for x in Path(path).read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "(no output)"
    errs = [x for x in lines if "error" in x.lower()]
    return (errs or lines or ["(no output)"])[-1][:width]
