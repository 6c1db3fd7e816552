"""The state directory (/run/netkv, or $NETKV_STATE_DIR): what a live emulated fabric or run registers.

One module owns it. Entries:
  net.json                     `netkv net up`: pid, REST URL, fat-tree size, log directory
  sock-<stamp>-<pid>/          `netkv emulate`: the agents' Unix sockets (mode 0700) and owner.json
                               (what is running, its run directory)
  ovs-<pid>/                   a fabric's per-switch Open vSwitch daemons (databases, sockets, logs)
                               and the controller's OpenFlow socket (mode 0700)
An entry whose owner process is alive is a live run (named by `netkv net status`, refused by
`netkv clean` without --force, and a second fabric refuses to start beside it); one whose owner is
gone is stale (a run killed hard) and `netkv clean` removes it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import psutil

STATE_DIR = Path(os.environ.get("NETKV_STATE_DIR", "/run/netkv"))


def _private_dir(path: Path) -> Path:
    """Create `path` (and the state directory) readable by root only."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


# ---- netkv net up ----------------------------------------------------------------------------
def net_file() -> Path:
    return STATE_DIR / "net.json"


def register_net(rest: str, k: int, gpus: int, log_dir: Path) -> None:
    """Record the fabric this process keeps up (`netkv net up`)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    net_file().write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "rest": rest,
                "k": k,
                "gpus": gpus,
                "log_dir": str(Path(log_dir).resolve()),
                "started": time.time(),
            }
        )
    )


def read_net() -> dict | None:
    """The registered `net up` fabric (its net.json), or None when there is none or it is unreadable."""
    try:
        return json.loads(net_file().read_text())
    except (OSError, ValueError):
        return None


def unregister_net() -> None:
    net_file().unlink(missing_ok=True)


# ---- netkv emulate ---------------------------------------------------------------------------
def claim_run(stamp: str, what: str, run_dir: Path) -> Path:
    """Create this process's socket directory for an emulated run and mark the run live (before any
    bridge exists, so that status and clean name it instead of calling its fabric leftovers)."""
    d = _private_dir(STATE_DIR / f"sock-{stamp}-{os.getpid()}")
    (d / "owner.json").write_text(json.dumps({"what": what, "run_dir": str(run_dir)}))
    return d


# ---- the fabric's own Open vSwitch daemons ----------------------------------------------------
OVS_PREFIX = "ovs-"
CLUSTER_PREFIX = "cluster-"  # + pid: the keys, configs and Open vSwitch files of namespace servers
WMEM_PREFIX = "wmem_default.orig-"  # + pid: the value net.core.wmem_default had before a fabric raised it


def claim_ovs_dir() -> Path:
    """This process's directory for per-switch OVS daemons and the OpenFlow socket (created empty)."""
    return _private_dir(STATE_DIR / f"{OVS_PREFIX}{os.getpid()}")


# ---- reading it back -------------------------------------------------------------------------
def state_entries() -> list[Path]:
    """Files and per-run socket directories in the state directory."""
    return sorted(STATE_DIR.glob("*")) if STATE_DIR.exists() else []


def owner_pid(entry: Path) -> int | None:
    """PID of the process that owns a state entry: sock-<stamp>-<pid> directories carry it in their
    name, net.json in its "pid" field; None when the entry names no owner."""
    m = (
        re.match(r"^sock-.*-(\d+)$", entry.name)
        or re.match(rf"^{OVS_PREFIX}(\d+)$", entry.name)
        or re.match(rf"^{WMEM_PREFIX}(\d+)$", entry.name)
        or re.match(rf"^{CLUSTER_PREFIX}(\d+)$", entry.name)
    )
    if m:
        return int(m.group(1))
    if entry.name == "net.json":
        try:
            return int(json.loads(entry.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


def stale_state_entries() -> list[Path]:
    """State entries whose owner is gone (or unknown): what a run killed hard leaves behind."""
    out = []
    for e in state_entries():
        pid = owner_pid(e)
        if pid is None or not psutil.pid_exists(pid):
            out.append(e)
    return out


def live_runs() -> list[str]:
    """Runs still going (a state entry whose owner process is alive, other than this process), each
    described with its pid, what it is, its run directory when known, and its state entry."""
    out = []
    entries = state_entries()
    named = {owner_pid(e) for e in entries if not e.name.startswith(OVS_PREFIX)}
    for e in entries:
        pid = owner_pid(e)
        if pid is None or pid == os.getpid() or not psutil.pid_exists(pid):
            continue
        if e.name.startswith(OVS_PREFIX) and pid in named:
            continue  # the fabric of a run already named by its other entry
        info = {}
        if e.is_dir() and (e / "owner.json").is_file():
            try:
                info = json.loads((e / "owner.json").read_text())
            except ValueError:
                info = {}
        what = info.get("what") or {"net.json": "netkv net up"}.get(
            e.name, "emulated fabric" if e.name.startswith(OVS_PREFIX) else "netkv emulate"
        )
        where = f", run directory {info['run_dir']}" if info.get("run_dir") else ""
        out.append(f"pid {pid} ({what}{where}; state {e})")
    return out
