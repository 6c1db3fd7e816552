"""The scheduler service's journal: what a restarted service needs to resume a policy's replay.

One JSON line per record, appended as the service goes, in the order it acted:

    {"k": "start", "t0": wall seconds of trace time 0}
    {"k": "dispatch", "id": ..., "prefill": host index, "decode": host index, "now": ..., "fallback": bool,
     "rec": {decision fields of the request's record}}     written before the agents are told
    {"k": "ev", "h": agent host, "m": the agent's event (with its seq)}
    {"k": "fail", "id": ..., "reason": ...}                   a request failed by the service itself
    {"k": "dead", "h": agent host}

Lines are flushed as they are written (no fsync): the journal survives the service being killed
(the kernel has the data), not the machine losing power. A kill mid-write leaves at most a torn
last line, which `read` drops; a bad line anywhere else is an error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path


class JournalError(ValueError):
    """A journal that cannot be resumed from; the message names the file and line."""


def journal_path(run_dir: Path, policy: str) -> Path:
    """RUN/logs/journal-<policy>.jsonl: beside the run's other emulation logs."""
    return Path(run_dir) / "logs" / f"journal-{policy}.jsonl"


class Journal:
    """Append-only writer."""

    def __init__(self, path: Path, resume: bool = False):
        """A new journal, or (`resume`) the existing one, its torn last line cut off first."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and not self.path.exists():
            raise JournalError(f"{self.path}: no journal to resume from")
        if resume:
            data = self.path.read_bytes()
            whole = data.rfind(b"\n") + 1
            if whole < len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(whole)
        self._f = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115 (kept open)

    def write(self, rec: dict) -> None:
        self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read(path: Path) -> list[dict]:
    """The records of a journal; a torn last line (the writer killed mid-line) is dropped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise JournalError(f"{path}: no journal to resume from") from None
    except UnicodeDecodeError as e:
        raise JournalError(f"{path}: not a journal ({e})") from None
    torn = lines.pop() if lines else ""  # text after the last newline: a line cut short
    recs = []
    for n, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise JournalError(f"{path}:{n}: not a journal record ({e.msg})") from None
        if not isinstance(r, dict) or "k" not in r:
            raise JournalError(f"{path}:{n}: not a journal record")
        recs.append(r)
    del torn
    if not recs or recs[0].get("k") != "start" or not isinstance(recs[0].get("t0"), (int, float)):
        raise JournalError(f"{path}:1: a journal starts with the replay's start record")
    return recs
