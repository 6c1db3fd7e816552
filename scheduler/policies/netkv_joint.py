"""netkv_joint: choose the prefill and the decode instance together, with the network in the cost.

NetKV fixes the prefill instance first (the common earliest-finish rule) and then picks the decode
instance. This variant scores pairs: for the `candidates` prefill instances expected to finish
first (exact ties in random order, as the common rule breaks them) and every decode instance,

    cost(p, d) = prefill finish(p) + transfer(p -> d, starting when p finishes) + wait(d) + first step(d)

and takes the cheapest pair. A prefill instance that finishes a little later but sits next to an idle
decode instance, away from a congested uplink, can win. One vectorised O(|D|) row per candidate.
"""

import numpy as np

from netkv.scheduler.policies.netkv import NetKV
from netkv.scheduler.policies.registry import register


@register
class NetKVJoint(NetKV):
    """With the prefill fixed (`choose`: a replayed prefill, or a caller asking for a decode
    instance only) this is netkv; the scheduler calls `choose_pair` otherwise."""

    name = "netkv_joint"
    order = 6
    defaults = {**NetKV.defaults, "candidates": 4}
    joint = True  # the scheduler calls choose_pair instead of fixing the prefill first

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        c = params.get("candidates", 1)
        if c < 1 or c != int(c):
            raise ValueError(f"parameter 'candidates' must be an integer >= 1, got {c}")

    def choose_pair(self, q, slots: np.ndarray, finish: np.ndarray, oracle, now: float | None) -> tuple[int, int]:
        """(prefill slot, decode slot) over prefill `slots` (finish: seconds until each slot's
        prefill of this request would end, indexed by slot)."""
        v, req = q.view, q.req
        tw, ww = self.params["transfer_weight"], self.params["wait_weight"]
        rest = ww * v.est_wait_s(v.compute.blocks_for(req.input_tokens + req.output_tokens))
        rest = rest + v.first_step_s(req.input_tokens)
        best = (np.inf, int(slots[0]), -1)
        for p in slots:
            at = None if now is None else now + float(finish[p])
            transfer, _ = oracle.cost_row(int(v.prefill_hosts[p]), v.decode_hosts, q.missing_bytes, at=at)
            cost = finish[p] + tw * transfer + rest
            d = self.argmin(cost, v)  # live slots only, exact ties at random
            if cost[d] < best[0]:
                best = (float(cost[d]), int(p), d)
        if best[2] < 0:  # every pair unreachable: the first candidate, and any live decode instance
            return int(slots[0]), self.argmin(rest, v)
        return best[1], best[2]
