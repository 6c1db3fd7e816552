"""Plots of a run directory: TTFT CDFs, per-policy bars, transfer time by tier (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netkv.compare import transfer_pairs
from netkv.results import RunDir


def _save(fig, path: str | Path) -> Path:
    """Lay out, write (120 dpi, parent directories made) and close a figure; returns its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_plots(run_dir: str | Path) -> list[Path]:
    """Draw the standard plots of a run into RUN_DIR/plots and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunDir(Path(run_dir))
    try:
        doc = run.read_summary()
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir}: no summary.json (not a run directory, or the run wrote nothing)") from None
    policies = list(doc["policies"])
    rows = {p: [r for r in run.read_requests(p) if r["status"] == "completed"] for p in policies}
    out = run.root / "plots"
    out.mkdir(exist_ok=True)
    paths = []
    tag = " (partial run)" if doc.get("partial") else ""

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for p in policies:
        a = np.sort([r["ttft_s"] for r in rows[p]])
        if len(a):
            ax.plot(a, np.arange(1, len(a) + 1) / len(a), label=p)
    ax.set_xscale("log")  # TTFT spans two decades; the policies differ in the lower one
    ax.set_xlabel("TTFT (s, real-cluster units, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"TTFT CDF{tag}")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(_save(fig, out / "ttft_cdf.png"))

    s = doc["policies"]
    metrics = [
        ("mean TTFT (s)", lambda x: x.get("ttft_s", {}).get("mean")),
        ("p99 TTFT (s)", lambda x: x.get("ttft_s", {}).get("p99")),
        ("mean KV transfer (s)", lambda x: x.get("transfer_s", {}).get("mean")),
        ("SLO attainment (%)", lambda x: 100 * x["slo_attainment"] if "slo_attainment" in x else None),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.8))
    for ax, (title, fn) in zip(axes, metrics):
        vals = [fn(s[p]) or 0.0 for p in policies]
        ax.bar(range(len(policies)), vals, color=[f"C{i}" for i in range(len(policies))])
        ax.set_xticks(range(len(policies)), policies, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"per-policy summary{tag}")
    paths.append(_save(fig, out / "policy_bars.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.8 / max(len(policies), 1)
    for i, p in enumerate(policies):
        means = []
        for t in range(4):
            a = [r["transfer_s"] for r in rows[p] if r["tier"] == t and r["transfer_s"] is not None]
            means.append(np.mean(a) if a else 0.0)
        ax.bar(np.arange(4) + i * width, means, width, label=p)
    ax.set_xticks(np.arange(4) + 0.4 - width / 2, ["same server", "same edge", "same pod", "cross pod"])
    ax.set_ylabel("mean KV transfer time (s)")
    ax.set_title(f"KV transfer time by tier{tag}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    paths.append(_save(fig, out / "transfer_by_tier.png"))
    return paths


def fidelity_plot(model_dir: str | Path, emu_dir: str | Path, path: str | Path) -> Path:
    """Scatter of each request's KV transfer time, flow model (x) vs emulated (y), per policy,
    coloured by tier, over the requests that took the same (prefill, decode) pair in both runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, e = RunDir(Path(model_dir)), RunDir(Path(emu_dir))
    pols = [p for p in e.read_summary()["policies"] if p in m.read_summary()["policies"]]
    fig, axes = plt.subplots(1, max(len(pols), 1), figsize=(3.3 * max(len(pols), 1), 3.6), squeeze=False)
    names = ["same server", "same edge", "same pod", "cross pod"]
    for ax, pol in zip(axes[0], pols):
        pairs = [p for p in transfer_pairs(m, e, pol) if p[3] > 0]  # log axes
        lo, hi = np.inf, 0.0
        for tier in range(4):
            pts = [(p[2], p[3]) for p in pairs if p[1] == tier]
            if pts:
                x, y = np.array(pts).T
                ax.scatter(x * 1e3, y * 1e3, s=9, label=names[tier], color=f"C{tier}")
                lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
        if hi > 0:
            ax.plot([lo * 1e3, hi * 1e3], [lo * 1e3, hi * 1e3], "k--", lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_title(pol, fontsize=10)
        ax.set_xlabel("flow model (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("emulated (ms)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("KV transfer time per request: emulated vs flow model (same choices)", fontsize=10)
    return _save(fig, path)


def fidelity_sweep_plot(conditions: dict[str, dict], path: str | Path) -> Path:
    """Per condition and policy, each KV transfer's emulated / model time (log scale) with its median
    and p95 error marked; conditions the fidelity guard flagged are shaded and labelled excluded.
    `conditions`: name -> fidelity report (fidelity.json, with its "model" and "emulated" run dirs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(conditions)
    pols = sorted({p for rep in conditions.values() for p in rep["policies"]})
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(names), 4.2))
    width = 0.8 / max(len(pols), 1)
    rng = np.random.default_rng(0)  # horizontal jitter only
    for ci, name in enumerate(names):
        rep = conditions[name]
        m, e = RunDir(Path(rep["model"])), RunDir(Path(rep["emulated"]))
        if (rep.get("guard") or {}).get("flagged"):
            ax.axvspan(ci - 0.45, ci + 0.45, color="0.85", zorder=0)
            ax.text(
                ci, 0.97, "flagged:\nexcluded", transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7
            )
        for pi, pol in enumerate(pols):
            if pol not in rep["policies"]:
                continue
            ratio = np.array([p[3] / p[2] for p in transfer_pairs(m, e, pol) if p[3] > 0])
            if not len(ratio):
                continue
            x = ci + (pi - (len(pols) - 1) / 2) * width
            ax.scatter(
                x + rng.uniform(-0.3, 0.3, len(ratio)) * width,
                ratio,
                s=5,
                color=f"C{pi}",
                alpha=0.5,
                label=pol if ci == 0 else None,
            )
            t = rep["policies"][pol]["transfer"]
            ax.text(
                x,
                0.03,
                f"{100 * t['rel_p50']:.0f}/{100 * t['rel_p95']:.0f}%",
                transform=ax.get_xaxis_transform(),
                ha="center",
                fontsize=6,
                color=f"C{pi}",
            )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhspan(0.7, 1.3, color="C2", alpha=0.08, zorder=0)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace(", ", ",\n") for n in names], fontsize=8)
    ax.set_ylabel("emulated / flow model, per KV transfer")
    ax.set_title("Fidelity per condition (labels: |error| median / p95; band: within 30%)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)
