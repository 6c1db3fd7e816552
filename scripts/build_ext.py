#!/usr/bin/env python3
"""Build the compiled flow network and prefix caches in place (simulator/compiled.py says why).

Cythonizes simulator/_fastnet.pyx and netkv/_fastcache.pyx to C++ and compiles them next to their
sources, where the editable install finds them (netkv.simulator._fastnet, netkv._fastcache). Quick
when nothing changed: a module is rebuilt only when its .pyx is newer than its built file. Run by
scripts/setup.sh; needs Cython (the `compiled` extra) and a C++ compiler (build-essential).
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (module name inside the netkv package, source): the full name keeps the classes' __module__ right
MODULES = [
    ("netkv.simulator._fastnet", ROOT / "simulator/_fastnet.pyx"),
    ("netkv._fastcache", ROOT / "netkv/_fastcache.pyx"),
]


def built_path(src: Path) -> Path:
    return src.with_name(src.stem + sysconfig.get_config_var("EXT_SUFFIX"))


def main() -> int:
    stale = [
        (name, src)
        for name, src in MODULES
        if not built_path(src).exists() or built_path(src).stat().st_mtime < src.stat().st_mtime
    ]
    if not stale:
        return 0
    try:
        from Cython.Build import cythonize
        from setuptools import Extension, setup
    except ImportError as e:
        print(f"build_ext: error: {e.name} is missing; install the project with its `compiled` extra", file=sys.stderr)
        return 2
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="netkv-build-") as tmp:
        exts = [Extension(name, [str(src)], language="c++", extra_compile_args=["-O2"]) for name, src in stale]
        setup(
            name="netkv-compiled",
            ext_modules=cythonize(exts, language_level=3, quiet=True, build_dir=str(Path(tmp) / "c")),
            script_args=[
                "-q",
                "build_ext",
                "--build-lib",
                str(Path(tmp) / "lib"),
                "--build-temp",
                str(Path(tmp) / "o"),
            ],
        )
        for name, src in stale:
            out = Path(tmp) / "lib" / (name.replace(".", "/") + sysconfig.get_config_var("EXT_SUFFIX"))
            shutil.copy2(out, built_path(src))
            print(f"build_ext: built {built_path(src).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
