"""The project's habits, checked: ruff (lint + format), the import-linter layer contracts, mypy.

python scripts/lint.py [--fix]

Run by scripts/test.sh before the tests (so CI runs it). import-linter and mypy read the installed
layout (netkv.* as pyproject's package-dir maps the top-level folders), which an editable install
only provides through an import hook they cannot see; the script therefore stages that layout in
build/lint/ (a copy, the checkout is never touched) and points them at it. Exits non-zero on the
first failing step, naming it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "lint"
# mypy runs on the bottom layer and the policies (the code every other layer stands on)
MYPY_TARGETS = [
    "netkv/config.py",
    "netkv/trace.py",
    "netkv/compute.py",
    "netkv/kvcache.py",
    "netkv/results.py",
    "netkv/registry.py",
    "netkv/scheduler/policies",
]


def stage() -> None:
    """Copy the sources into build/lint/ in their installed layout."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = pyproject["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data")
    for pkg, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        shutil.copytree(ROOT / folder, STAGE / pkg.replace(".", "/"), ignore=ignore, dirs_exist_ok=True)


def step(name: str, args: list[str], env: dict | None = None, cwd: Path = ROOT) -> None:
    print(f"[lint] {name}", flush=True)
    p = subprocess.run(args, cwd=cwd, env=env)
    if p.returncode != 0:
        sys.exit(f"[lint] {name} failed (exit {p.returncode}); see above")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fix", action="store_true", help="let ruff fix what it can and format the code first")
    a = ap.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    tool = lambda name: str(bin_dir / name) if (bin_dir / name).exists() else name  # noqa: E731
    if a.fix:
        subprocess.run([tool("ruff"), "check", "--fix", "-q", "."], cwd=ROOT)
        subprocess.run([tool("ruff"), "format", "-q", "."], cwd=ROOT)
    step("ruff check", [tool("ruff"), "check", "."])
    step("ruff format --check", [tool("ruff"), "format", "--check", "-q", "."])
    stage()
    env = {**os.environ, "PYTHONPATH": str(STAGE), "MYPYPATH": str(STAGE)}
    step(
        "import-linter (layer contracts in pyproject.toml)",
        [tool("lint-imports"), str(ROOT / "pyproject.toml")],
        env=env,
        cwd=STAGE,
    )
    step(
        "mypy (bottom layer and policies)",
        [
            tool("mypy"),
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--no-error-summary",
            *[str(STAGE / t) for t in MYPY_TARGETS],
        ],
        env=env,
        cwd=STAGE,
    )
    print("[lint] all green", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
