"""Mutation testing of the core modules with mutmut: stage, run, score, report the survivors.

    .venv/bin/python scripts/mutation.py [--sample N [--seed S] | --names FILE | --only GLOB ...]
                                          [--max-children N] [--source DIR] [--stage DIR] [--report-only]

mutmut (https://github.com/boxed/mutmut) copies the code it mutates into `mutants/` and imports it
from there, so this script first stages the installed layout of the project (the top-level folders
as `netkv.*`, the way pyproject maps them) in `build/mutation/`, with the tests and the shipped
experiments, and runs mutmut there against the non-root tests. Nothing in the checkout is changed.

The score counts every mutant of the core modules (policies, oracle, view, simulator engine and
network, results, kvcache, trace, config): killed / (total - equivalent). Mutants proven equivalent
(no input can tell them from the original) are listed with the reason in
`tests/mutation_equivalent.toml`; every other survivor is a gap in the tests. The report goes to
`build/mutation/report.md` (survivors with their diffs) and the figures are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE = REPO / "build" / "mutation"
EQUIVALENT = REPO / "tests" / "mutation_equivalent.toml"
NOTHING = "zz_no_such_mutant*"  # a name glob matching no mutant: `mutmut run` then only generates
# folder in the checkout -> package path in the installed layout (pyproject [tool.setuptools.package-dir])
LAYOUT = {
    folder: pkg.replace(".", "/")
    for pkg, folder in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].items()
}
# the core modules, as staged paths
CORE = [
    "netkv/scheduler/policies/*.py",
    "netkv/scheduler/core.py",
    "netkv/scheduler/oracle.py",
    "netkv/scheduler/view.py",
    "netkv/simulator/engine.py",
    "netkv/simulator/network.py",
    "netkv/simulator/maxmin.py",
    "netkv/results.py",
    "netkv/kvcache.py",
    "netkv/trace.py",
    "netkv/config.py",
    "netkv/scheduler/runtime.py",
    "netkv/scheduler/cluster.py",
    "netkv/registry.py",
    "netkv/topology/placement.py",
]
MUTMUT_VERSION = "3.8.1"  # pinned: mutmut's 3.x config keys and meta-file format change between releases
MEMORY_LIMIT_GB = 4


def stage(source: Path) -> None:
    """Copy the installed layout of `source`, its tests and experiments into STAGE, with a pyproject
    for mutmut."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, dst in LAYOUT.items():
        shutil.copytree(source / src, STAGE / dst, ignore=ignore, dirs_exist_ok=True)
    for extra in ("tests", "experiments", "docs"):
        shutil.copytree(source / extra, STAGE / extra, ignore=ignore)
    pyproject = tomllib.loads((source / "pyproject.toml").read_text())
    pytest_ini = pyproject["tool"]["pytest"]["ini_options"]
    lines = [
        "[tool.pytest.ini_options]",
        f"markers = {json.dumps(pytest_ini['markers'])}",
        f"filterwarnings = {json.dumps(pytest_ini['filterwarnings'])}",
        # mutants are tried against the tests that need neither root nor external binaries
        'addopts = "-p no:cacheprovider -m \\"not root and not iperf3 and not spawns\\""',
        "",
        "[tool.mutmut]",
        'source_paths = ["netkv/"]',
        f"only_mutate = {json.dumps(CORE)}",
        'also_copy = ["experiments/", "docs/"]',
        'pytest_add_cli_args_test_selection = ["tests/"]',
    ]
    (STAGE / "pyproject.toml").write_text("\n".join(lines) + "\n")


def ensure_mutmut(python: str) -> None:
    probe = "import importlib.metadata as m; print(m.version('mutmut'))"
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"mutation: cannot run {python}: {e}")
    if out.stdout.strip() != MUTMUT_VERSION:
        print(f"installing mutmut=={MUTMUT_VERSION} into {Path(python).parent.parent}", flush=True)
        subprocess.run([python, "-m", "pip", "install", "-q", f"mutmut=={MUTMUT_VERSION}"], check=True)


def load_results() -> dict[str, dict]:
    """Every mutant's status from mutmut's meta files: name -> {file, status}."""
    from mutmut.stats import status_by_exit_code  # mutmut's own reading of its exit codes

    out = {}
    for meta in (STAGE / "mutants").rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        src = str(meta.relative_to(STAGE / "mutants"))[: -len(".meta")]
        for name, code in data.get("exit_code_by_key", {}).items():
            if code is not None and code < 0 and code not in (-24,):
                status = "killed"  # the test process crashed under the mutant (e.g. its memory cap: SIGABRT/SIGSEGV)
            else:
                status = status_by_exit_code[code]  # mutmut's own reading; unknown codes are "suspicious"
            out[name] = {"file": src, "status": status}
    return out


def load_equivalent() -> dict[str, str]:
    if not EQUIVALENT.exists():
        return {}
    data = tomllib.loads(EQUIVALENT.read_text())
    return {m["name"]: m["why"] for m in data.get("mutant", [])}


def _limit_memory() -> None:
    """Some mutants make the simulator loop while allocating; cap each process's address space so
    they end with MemoryError (a kill) instead of taking the machine's memory."""
    limit = MEMORY_LIMIT_GB << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def mutmut_cmd(python: str) -> list[str]:
    # the console script, not `python -m mutmut`: the trampolines import `mutmut.__main__`, which must
    # not be the running __main__ module (it would run its module-level setup a second time)
    return [str(Path(python).parent / "mutmut")]


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    out[name] = get_diff_for_mutant(name, path=find_mutant(name).path)
json.dump(out, sys.stdout)
"""


def mutant_diffs(python: str, names: list[str]) -> dict[str, str]:
    """Each mutant's diff, from mutmut's own code in one process (`mutmut show` once per name is slow)."""
    if not names:
        return {}
    out = subprocess.run([python, "-c", _DIFFS], cwd=STAGE, input=json.dumps(names), capture_output=True, text=True)
    if out.returncode != 0:
        return {
            n: f"(no diff: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'mutmut failed'})"
            for n in names
        }
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    global STAGE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel mutants")
    ap.add_argument("--report-only", action="store_true", help="re-read build/mutation without running")
    ap.add_argument("--python", default=sys.executable, help="interpreter with the test deps (default: this one)")
    ap.add_argument("--source", type=Path, default=REPO, help="checkout to test (default: this one)")
    ap.add_argument("--stage", type=Path, default=STAGE, help=f"working directory (default: {STAGE})")
    ap.add_argument(
        "--sample",
        type=int,
        default=0,
        help="try only N mutants drawn at random (seeded) from all of them: an estimate of the score",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--names",
        type=Path,
        help="try the mutants listed in this file (one name per line, e.g. "
        "another run's sample.txt; names no longer generated are skipped)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="GLOB",
        default=[],
        help="try only mutants whose names match, e.g. 'netkv.kvcache*' (the score covers those)",
    )
    args = ap.parse_args(argv)
    STAGE = args.stage.resolve()
    if args.sample < 0:
        ap.error(f"--sample must be >= 0, got {args.sample}")
    if args.names is not None and not args.names.is_file():
        ap.error(f"--names {args.names}: no such file")
    if not (args.source / "pyproject.toml").is_file():
        ap.error(f"--source {args.source}: not a checkout of this project (no pyproject.toml)")

    wanted = [n for n in args.names.read_text().split() if n] if args.names else []  # before staging wipes STAGE
    if not args.report_only:
        ensure_mutmut(args.python)
        stage(args.source.resolve())
        env = {k: v for k, v in os.environ.items() if k != "NETKV_REQUIRE_ROOT_TESTS"}
        run = [*mutmut_cmd(args.python), "run", "--max-children", str(args.max_children)]
        if args.sample or args.names:
            # generates the mutants and the test map, then stops (asserting that nothing matched)
            subprocess.run([*run, NOTHING], cwd=STAGE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            names = sorted(load_results())
            if not names:
                print("mutation: mutmut generated no mutants (run without --sample to see why)", file=sys.stderr)
                return 1
            if args.names:
                picked = sorted(set(wanted) & set(names))
                print(f"{len(picked)} of the {len(wanted)} mutants in {args.names} are generated here", flush=True)
            else:
                rng = random.Random(args.seed)
                picked = sorted(rng.sample(names, min(args.sample, len(names))))
                print(f"sampled {len(picked)} of {len(names)} mutants (seed {args.seed})", flush=True)
            if not picked:  # an empty name list would make mutmut try every mutant
                print("mutation: none of the requested mutants is generated here", file=sys.stderr)
                return 1
            (STAGE / "sample.txt").write_text("\n".join(picked) + "\n")
            run += picked
        elif args.only:
            run += args.only
        print(f"staged in {STAGE}; running mutmut on the core modules (this takes a while)", flush=True)
        rc = subprocess.run(run, cwd=STAGE, env=env, preexec_fn=_limit_memory).returncode
        if rc != 0:
            print(f"mutation: mutmut exited {rc}", file=sys.stderr)
            return 1

    generated = load_results()
    # only tried mutants count (a --sample, --only or --names run leaves the others "not checked")
    results = {n: r for n, r in generated.items() if r["status"] != "not checked"}
    if not results:
        print(f"mutation: no mutmut results in {STAGE} (run without --report-only first)", file=sys.stderr)
        return 1
    equivalent = load_equivalent()
    stale = sorted(set(equivalent) - set(generated))
    by_file: dict[str, dict[str, int]] = {}
    survivors = []
    wrongly_listed: list[str] = []
    for name, r in sorted(results.items()):
        caught = r["status"] in ("killed", "timeout")
        if name in equivalent and caught:
            wrongly_listed.append(name)  # a test tells it apart: it is not equivalent
        st = "equivalent" if name in equivalent and not caught else r["status"]
        by_file.setdefault(r["file"], {}).setdefault(st, 0)
        by_file[r["file"]][st] += 1
        if st in ("survived", "no tests", "skipped", "suspicious"):
            survivors.append((name, r["file"], st))
    total = len(results)
    n_eq = sum(1 for n in results if n in equivalent and n not in wrongly_listed)
    killed = sum(1 for r in results.values() if r["status"] in ("killed", "timeout"))
    score = killed / max(1, total - n_eq)

    lines = [
        "# Mutation testing report (scripts/mutation.py)",
        "",
        f"Score: **{killed} killed / {total - n_eq}** = {score:.1%} "
        f"({total} mutants tried of {len(generated)} generated, {n_eq} equivalent excluded: "
        "tests/mutation_equivalent.toml)",
        "",
        "| file | killed | timeout | survived | no tests | equivalent |",
        "|---|---|---|---|---|---|",
    ]
    for f, c in sorted(by_file.items()):
        lines.append(
            f"| {f} | {c.get('killed', 0)} | {c.get('timeout', 0)} | {c.get('survived', 0)} | "
            f"{c.get('no tests', 0)} | {c.get('equivalent', 0)} |"
        )
    lines += ["", f"## Survivors ({len(survivors)})", ""]
    diffs = mutant_diffs(args.python, [n for n, _f, _st in survivors])
    for name, _f, st in survivors:
        lines += [f"### {name} ({st})", "", "```diff", diffs.get(name, "").strip(), "```", ""]
    if stale:
        lines += ["## Listed as equivalent but no longer generated", ""] + [f"- {n}" for n in stale]
    if wrongly_listed:
        lines += ["## Listed as equivalent but killed by a test (remove them from the list)", ""]
        lines += [f"- {n}" for n in wrongly_listed]
        print(
            f"mutation: {len(wrongly_listed)} mutants listed as equivalent were killed: see the report", file=sys.stderr
        )
    (STAGE / "report.md").write_text("\n".join(lines) + "\n")
    print(
        f"mutation score: {killed} killed / {total - n_eq} = {score:.1%} "
        f"({total} tried of {len(generated)}, {n_eq} equivalent, {len(survivors)} surviving); "
        f"report: {STAGE / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
