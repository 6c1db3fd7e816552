"""round_robin: cycle through decode instances, skipping dead ones."""

from netkv.scheduler.policies.base import Policy
from netkv.scheduler.policies.registry import register


@register
class RoundRobin(Policy):
    name = "round_robin"
    order = 0  # position in the default policy list (baselines first)

    def __init__(self, params, seed=0):
        super().__init__(params, seed)
        self.next = 0

    def choose(self, q, oracle):
        alive = q.view.decode_alive
        n = len(alive)
        for i in range(n):
            slot = (self.next + i) % n
            if alive[slot]:
                self.next = slot + 1
                return slot
        raise RuntimeError("no live decode instance")
