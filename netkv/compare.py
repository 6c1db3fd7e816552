"""Request-by-request comparison of two runs of the same experiment (e.g. simulated vs emulated)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from netkv.results import RunDir


class CompareError(ValueError):
    """The two runs do not replay the same requests, so a request-by-request comparison is meaningless."""


METRICS = ("ttft_s", "transfer_s", "prefill_s", "queue_s", "decode_wait_s", "tbt_mean_s", "e2e_s")


def compare_runs(a: str | Path, b: str | Path) -> dict:
    """Per policy and metric: requests compared, mean of each run, mean and p90 absolute error,
    relative error of the means, per-request relative error |b - a| / a (median, p95), Pearson
    correlation, and the share of requests whose decode choice and tier agree. `transfer_s` is also
    given over the requests that chose the same (prefill, decode) pair in both runs
    (`transfer_s_same_pair`), so that it measures the network rather than diverging decisions."""
    ra, rb = RunDir(Path(a)), RunDir(Path(b))
    pa, pb = ra.read_summary()["policies"], rb.read_summary()["policies"]
    out = {}
    for pol in [p for p in pa if p in pb]:
        rows_a = {r["id"]: r for r in ra.read_requests(pol) if r["status"] == "completed"}
        rows_b = {r["id"]: r for r in rb.read_requests(pol) if r["status"] == "completed"}
        ids = sorted(rows_a.keys() & rows_b.keys())
        _check_same_requests(rows_a, rows_b, ids, pol, a, b)
        res = {"requests": len(ids)}
        if not ids:
            out[pol] = res
            continue
        res["same_decode"] = float(np.mean([rows_a[i]["decode"] == rows_b[i]["decode"] for i in ids]))
        res["same_tier"] = float(np.mean([rows_a[i]["tier"] == rows_b[i]["tier"] for i in ids]))
        same = [
            i for i in ids if (rows_a[i]["prefill"], rows_a[i]["decode"]) == (rows_b[i]["prefill"], rows_b[i]["decode"])
        ]
        for key, m, sel in [*((m, m, ids) for m in METRICS), ("transfer_s_same_pair", "transfer_s", same)]:
            x = np.array([rows_a[i][m] for i in sel if rows_a[i][m] is not None and rows_b[i][m] is not None], float)
            y = np.array([rows_b[i][m] for i in sel if rows_a[i][m] is not None and rows_b[i][m] is not None], float)
            if len(x) == 0:
                continue
            err = np.abs(x - y)
            corr = float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else None
            pos = x > 0
            rel = err[pos] / x[pos]
            res[key] = {
                "n": int(len(x)),
                "mean_a": float(x.mean()),
                "mean_b": float(y.mean()),
                "mae": float(err.mean()),
                "p90_abs_err": float(np.percentile(err, 90)),
                "rel_err_p50": float(np.median(rel)) if len(rel) else None,
                "rel_err_p95": float(np.percentile(rel, 95)) if len(rel) else None,
                "rel_err_of_means": float((y.mean() - x.mean()) / x.mean()) if x.mean() else None,
                "pearson": corr,
            }
        out[pol] = res
    return out


def format_comparison(cmp: dict, label_a: str = "A", label_b: str = "B") -> str:
    lines = [
        f"{'policy':<17} {'metric':<20} {label_a + ' mean':>10} {label_b + ' mean':>10} {'MAE':>8} "
        f"{'p90 |err|':>9} {'rel err':>8} {'rel p50':>7} {'rel p95':>7} {'corr':>6}"
    ]
    for pol, res in cmp.items():
        lines.append(
            f"{pol:<17} requests {res['requests']}, same decode {res.get('same_decode', 0):.0%}, "
            f"same tier {res.get('same_tier', 0):.0%}"
        )
        for m in (*METRICS, "transfer_s_same_pair"):
            r = res.get(m)
            if not r:
                continue
            rel = "-" if r["rel_err_of_means"] is None else f"{r['rel_err_of_means']:+.1%}"
            corr = "-" if r["pearson"] is None else f"{r['pearson']:.2f}"
            pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
            name = m if m != "transfer_s_same_pair" else f"transfer same pair ({r['n']})"
            lines.append(
                f"{'':<17} {name:<20} {r['mean_a']:>10.4f} {r['mean_b']:>10.4f} {r['mae']:>8.4f} "
                f"{r['p90_abs_err']:>9.4f} {rel:>8} {pct(r['rel_err_p50']):>7} {pct(r['rel_err_p95']):>7} {corr:>6}"
            )
    return "\n".join(lines)


# ---- fidelity: an emulated run against the flow model ------------------------------------------

# what a faithful emulation must reach (the faithful-emulation issue's targets; docs/emulation.md)
FIDELITY_TARGETS = {"transfer_rel_p50": 0.10, "transfer_rel_p95": 0.30, "ttft_mean_rel": 0.05}


def _completed(run: RunDir, pol: str) -> dict[int, dict]:
    return {r["id"]: r for r in run.read_requests(pol) if r["status"] == "completed"}


def transfer_pairs(m: RunDir, e: RunDir, pol: str) -> list[tuple[int, int, float, float]]:
    """(request id, tier, model seconds, emulated seconds) of every KV transfer that took the same
    (prefill, decode) pair in both runs and moved bytes in the model."""
    rm, re_ = _completed(m, pol), _completed(e, pol)
    out = []
    for i in sorted(rm.keys() & re_.keys()):
        a, b = rm[i], re_[i]
        if (
            (a["prefill"], a["decode"]) == (b["prefill"], b["decode"])
            and a["transfer_s"]
            and b["transfer_s"] is not None
        ):
            out.append((i, a["tier"], a["transfer_s"], b["transfer_s"]))
    return out


def _rel_stats(model: np.ndarray, emu: np.ndarray) -> dict:
    rel = np.abs(emu - model) / model
    return {
        "n": int(len(model)),
        "model_mean": float(model.mean()),
        "emu_mean": float(emu.mean()),
        "rel_p50": float(np.median(rel)),
        "rel_p95": float(np.percentile(rel, 95)),
        "bias": float(np.median((emu - model) / model)),  # > 0: emulated transfers are longer
    }


# sizes of an emulated transfer in frames, as the fidelity report groups them (lower bounds)
FRAME_GROUPS = (1, 2, 4, 9, 31)
TCP_IP_OVERHEAD = 52  # IPv4 + TCP headers with timestamps, per frame


def frames_of(real_bytes: float, emulation: dict) -> int:
    """Frames a transfer of `real_bytes` takes on the emulated fabric: its bytes scaled as the agents
    scale them (time_dilation / bandwidth_scale) over the payload of one MTU-sized frame."""
    emu_bytes = real_bytes * emulation["time_dilation"] / emulation["bandwidth_scale"]
    return max(1, math.ceil(emu_bytes / (emulation["mtu"] - TCP_IP_OVERHEAD)))


def _by_frames(rows: list[tuple[int, float, float]]) -> list[dict]:
    """Emulated minus model per transfer, grouped by the transfer's size in emulated frames: n, the
    median difference in seconds and the median relative one (from (frames, model s, emu s))."""
    out = []
    bounds = [*FRAME_GROUPS, math.inf]
    for lo, nxt in zip(bounds, bounds[1:]):
        g = [(m, e) for f, m, e in rows if lo <= f < nxt]
        if not g:
            continue
        m, e = np.array([x[0] for x in g]), np.array([x[1] for x in g])
        hi = nxt - 1
        label = str(lo) if hi == lo else f"{lo}-{hi}" if math.isfinite(hi) else f">={lo}"
        out.append(
            {
                "frames": label,
                "n": len(g),
                "median_diff_s": float(np.median(e - m)),
                "median_rel": float(np.median((e - m) / m)),
            }
        )
    return out


def _ranking(run: RunDir, pols: list[str]) -> list[str]:
    s = run.read_summary()["policies"]
    return sorted(pols, key=lambda p: s[p]["ttft_s"]["mean"] if s[p].get("ttft_s") else float("inf"))


def fidelity(model_dir: str | Path, emu_dir: str | Path, free_dir: str | Path | None = None) -> dict:
    """How far an emulated run is from the flow model, per policy: KV transfer time request by
    request (over requests that took the same (prefill, decode) pair in both runs), overall and per
    tier (relative error |emu - model| / model: median, p95, and the median signed error as bias),
    mean TTFT error, the policy ranking by mean TTFT in each run, whether the targets are met, and
    the fidelity guard's verdict from the emulated run. `model_dir` is normally the simulator
    replaying the emulated run's choices; `free_dir` a simulation that chose for itself."""
    m, e = RunDir(Path(model_dir)), RunDir(Path(emu_dir))
    pols = [p for p in e.read_summary()["policies"] if p in m.read_summary()["policies"]]
    report: dict = {"model": str(m.root), "emulated": str(e.root), "targets": FIDELITY_TARGETS, "policies": {}}
    try:
        meta = e.read_meta()
    except FileNotFoundError:
        meta = {}
    emulation = meta.get("emulation")  # an emulated run's scale, dilation and MTU
    if not (isinstance(emulation, dict) and {"time_dilation", "bandwidth_scale", "mtu"} <= emulation.keys()):
        emulation = None  # a simulated run (or one written before these were recorded)
    sized: list[tuple[int, float, float]] = []  # (emulated frames, model s, emulated s), all policies
    for pol in pols:
        rm, re_ = _completed(m, pol), _completed(e, pol)
        ids = sorted(rm.keys() & re_.keys())
        _check_same_requests(rm, re_, ids, pol, m.root, e.root)
        same = [i for i in ids if (rm[i]["prefill"], rm[i]["decode"]) == (re_[i]["prefill"], re_[i]["decode"])]
        res: dict = {"requests": len(ids), "same_choice": len(same) / len(ids) if ids else None}
        pairs = transfer_pairs(m, e, pol)
        if pairs:
            tiers = np.array([p[1] for p in pairs])
            xm, xe = np.array([p[2] for p in pairs]), np.array([p[3] for p in pairs])
            res["transfer"] = _rel_stats(xm, xe)
            res["transfer_by_tier"] = {
                str(t): _rel_stats(xm[tiers == t], xe[tiers == t]) for t in sorted(set(tiers.tolist()))
            }
            if emulation:
                sized += [(frames_of(re_[i]["bytes_sent"], emulation), a, b) for i, _, a, b in pairs]
        if ids:
            tm = float(np.mean([rm[i]["ttft_s"] for i in ids]))
            te = float(np.mean([re_[i]["ttft_s"] for i in ids]))
            res["ttft_mean_model"], res["ttft_mean_emu"] = tm, te
            res["ttft_mean_rel"] = (te - tm) / tm if tm else None
        t = res.get("transfer", {})
        ttft_rel = res.get("ttft_mean_rel")
        res["meets"] = {
            "transfer_rel_p50": t.get("rel_p50", float("inf")) <= FIDELITY_TARGETS["transfer_rel_p50"],
            "transfer_rel_p95": t.get("rel_p95", float("inf")) <= FIDELITY_TARGETS["transfer_rel_p95"],
            "ttft_mean_rel": ttft_rel is not None and abs(ttft_rel) <= FIDELITY_TARGETS["ttft_mean_rel"],
        }
        report["policies"][pol] = res
    report["ranking"] = {"emulated": _ranking(e, pols), "model": _ranking(m, pols)}
    if free_dir is not None:
        report["ranking"]["free_simulation"] = _ranking(RunDir(Path(free_dir)), pols)
    report["same_ranking"] = report["ranking"]["emulated"] == report["ranking"].get(
        "free_simulation", report["ranking"]["model"]
    )
    # the emulated frame is a coarse quantum: small transfers err by about one frame (docs/emulation.md)
    report["transfer_by_frames"] = _by_frames(sized)
    report["guard"] = meta.get("fidelity")
    # the hosts' TCP counters per policy (emulated runs since 2026-11-28): where a tail comes from
    report["tcp"] = {p: meta["tcp"][p] for p in pols if p in meta.get("tcp", {})}
    report["queue_drops"] = {p: meta["queue_drops"][p] for p in pols if p in meta.get("queue_drops", {})}
    return report


def _check_same_requests(ra: dict, rb: dict, ids: list[int], pol: str, a, b) -> None:
    for i in ids:
        ka, kb = (tuple(r.get(k) for k in ("arrival_s", "input_tokens", "output_tokens")) for r in (ra[i], rb[i]))
        if ka != kb:
            raise CompareError(
                f"{a} and {b} replay different requests ({pol}, request {i}: arrival, input, "
                f"output = {ka} vs {kb}); compare runs of one experiment and trace window"
            )


def _drops_text(drops: dict | None) -> str:
    if drops is None:
        return ""
    return "; queues dropped " + (", ".join(f"{v} at {k}" for k, v in sorted(drops.items()) if v) or "nothing")


def format_fidelity(rep: dict) -> str:
    """The fidelity report as a table: per policy and tier, transfer error; TTFT error; rankings."""
    pct = lambda v: "-" if v is None else f"{v:+.1%}" if v < 0 else f"{v:.1%}"  # noqa: E731
    tiers = {"0": "same server", "1": "same edge", "2": "same pod", "3": "cross-pod"}
    lines = [
        f"{'policy':<17} {'transfers':<14} {'n':>4} {'model ms':>9} {'emu ms':>8} {'rel p50':>8} {'rel p95':>8} "
        f"{'bias':>7}   TTFT mean err",
    ]
    for pol, res in rep["policies"].items():
        t = res.get("transfer")
        ttft = pct(res.get("ttft_mean_rel"))
        if t is None:
            lines.append(f"{pol:<17} {'(none)':<14} {'':>4} {'':>9} {'':>8} {'':>8} {'':>8} {'':>7}   {ttft}")
            continue
        rows = [("all", t), *((tiers.get(k, k), v) for k, v in res["transfer_by_tier"].items())]
        for j, (name, s) in enumerate(rows):
            lines.append(
                f"{pol if j == 0 else '':<17} {name:<14} {s['n']:>4} {s['model_mean'] * 1e3:>9.2f} "
                f"{s['emu_mean'] * 1e3:>8.2f} {s['rel_p50']:>8.1%} {s['rel_p95']:>8.1%} {pct(s['bias']):>7}"
                f"   {ttft if j == 0 else ''}"
            )
    r = rep["ranking"]
    lines.append(f"ranking by mean TTFT, emulated:  {' < '.join(r['emulated'])}")
    other = "free_simulation" if "free_simulation" in r else "model"
    lines.append(
        f"ranking by mean TTFT, simulated: {' < '.join(r[other])}" + ("" if rep["same_ranking"] else "  (differs)")
    )
    tg = rep["targets"]
    met = [p for p, res in rep["policies"].items() if all(res["meets"].values())]
    lines.append(
        f"targets (transfer rel p50 <= {tg['transfer_rel_p50']:.0%}, p95 <= {tg['transfer_rel_p95']:.0%}, "
        f"TTFT mean <= {tg['ttft_mean_rel']:.0%}): met by {len(met)} of {len(rep['policies'])} policies"
        + (f" ({', '.join(met)})" if met else "")
    )
    if rep.get("transfer_by_frames"):
        lines.append(
            "by size in emulated frames (all policies; median emulated - model): "
            + "; ".join(
                f"{g['frames']}: {g['median_diff_s'] * 1e3:+.2f} ms / {pct(g['median_rel'])} (n={g['n']})"
                for g in rep["transfer_by_frames"]
            )
        )
    for pol, c in rep.get("tcp", {}).items():
        lines.append(
            f"TCP on the hosts, {pol} (KV and background): {c['Tcp.RetransSegs']} of {c['Tcp.OutSegs']} segments "
            f"retransmitted, {c['TcpExt.TCPTimeouts']} retransmission timeouts"
            + _drops_text(rep.get("queue_drops", {}).get(pol))
        )
    g = rep.get("guard")
    if g:
        lines.append(f"fidelity guard: {g.get('note', g)}")
    return "\n".join(lines)
