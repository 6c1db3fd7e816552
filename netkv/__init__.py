"""NetKV testbed: network-aware decode-instance selection for disaggregated LLM inference."""

__version__ = "0.1.0"

from pathlib import Path as _Path

DATA_DIR = _Path(__file__).resolve().parent / "data"
