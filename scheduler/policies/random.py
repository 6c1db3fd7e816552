"""random: a uniformly random live decode instance (seeded)."""

import numpy as np

from netkv.scheduler.policies.base import Policy
from netkv.scheduler.policies.registry import register


@register
class Random(Policy):
    name = "random"

    def choose(self, q, oracle):
        live = np.flatnonzero(q.view.decode_alive)
        if len(live) == 0:
            raise RuntimeError("no live decode instance")
        return int(live[self.rng.integers(len(live))])
