"""least_loaded: the decode instance with the fewest sequences (running + waiting + inbound)."""

from netkv.scheduler.policies.base import Policy
from netkv.scheduler.policies.registry import register


@register
class LeastLoaded(Policy):
    name = "least_loaded"
    order = 2  # position in the default policy list (baselines first)

    def choose(self, q, oracle):
        v = q.view
        # sequences first; among equals, the lighter KV use (fraction < 1 keeps the order of loads)
        cost = v.decode_load() + 0.999 * v.kv_used / max(v.compute.kv_blocks, 1)
        return self.argmin(cost, v)
