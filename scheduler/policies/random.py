"""random: a uniformly random live decode instance (seeded)."""

import numpy as np

from netkv.scheduler.policies.base import Policy
from netkv.scheduler.policies.registry import register


@register
class Random(Policy):
    name = "random"
    order = 1  # position in the default policy list (baselines first)

    def choose(self, q, oracle):
        live = np.flatnonzero(q.view.decode_alive)
        if len(live) == 0:
            raise RuntimeError("no live decode instance")
        return int(live[self.rng.integers(len(live))])
