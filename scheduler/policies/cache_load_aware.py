"""cache_load_aware: Dynamo KV-router style cost = overlap_weight x blocks to prefill + decode blocks.

NVIDIA Dynamo's KV router (`selector.rs`) scores a worker as
    overlap_weight * potential_prefill_blocks + potential_decode_blocks
and picks the lowest (temperature 0). Here, at the decode tier: the blocks the candidate lacks
(they must cross the network and be written) weighted by `overlap_weight`, plus the KV blocks the
candidate will hold once the request joins (its load). `overlap_weight` is tuned by
scripts/tune_cache_load_aware.py (a sweep on the simulator; see docs/policies.md).
"""

from netkv.scheduler.policies.base import Policy
from netkv.scheduler.policies.registry import register


@register
class CacheLoadAware(Policy):
    name = "cache_load_aware"
    order = 3  # position in the default policy list (baselines first)
    defaults = {"overlap_weight": 1.0}

    def choose(self, q, oracle):
        v = q.view
        w = self.params["overlap_weight"]
        load = v.kv_used + v.kv_pending + q.req.n_blocks
        cost = w * q.missing_blocks + load
        return self.argmin(cost, v)
