"""Client of the controller's REST API (127.0.0.1 only): what the scheduler, the runner and tools call.

Routes are documented in docs/controller-api.md. Errors are the caller's to handle: URLError /
OSError when the controller does not answer, ValueError for a body that is not JSON.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np


def http_json(url: str, timeout: float = 2.0):
    """GET `url` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (127.0.0.1 only)
        return json.loads(r.read())


class ControllerClient:
    """The REST API at `base` (e.g. http://127.0.0.1:8080/netkv)."""

    def __init__(self, base: str, timeout: float = 2.0):
        self.base = base.rstrip("/")
        self.timeout = timeout

    def get(self, route: str, timeout: float | None = None):
        return http_json(f"{self.base}/{route.lstrip('/')}", self.timeout if timeout is None else timeout)

    def health(self, timeout: float | None = None) -> dict:
        return self.get("health", timeout)

    def links(self) -> list[dict]:
        return self.get("links")["links"]

    def link_rates(self, bandwidth_scale: float) -> tuple[np.ndarray, np.ndarray, frozenset[int]]:
        """Per directed link: rate in real-cluster bytes/s (emulated Mbit/s x bandwidth_scale), the
        wall time its sample was taken (NaN: none yet) and the links reported down."""
        links = self.links()
        rates = np.array([lk["rate_mbps"] for lk in links]) * 1e6 / 8 * bandwidth_scale
        times = np.array([np.nan if lk["sampled_at"] is None else lk["sampled_at"] for lk in links], dtype=float)
        down = frozenset(lk["id"] for lk in links if not lk["up"])
        return rates, times, down
