"""Request-by-request comparison of two runs of the same experiment (e.g. simulated vs emulated)."""

from __future__ import annotations

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
        for i in ids:
            ka, kb = (
                tuple(r.get(k) for k in ("arrival_s", "input_tokens", "output_tokens")) for r in (rows_a[i], rows_b[i])
            )
            if ka != kb:
                raise CompareError(
                    f"{a} and {b} replay different requests ({pol}, request {i}: arrival, input, "
                    f"output = {ka} vs {kb}); compare runs of one experiment and trace window"
                )
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
