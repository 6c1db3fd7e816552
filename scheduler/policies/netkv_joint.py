"""netkv_joint: choose the prefill and the decode instance together, with the network in the cost.

NetKV fixes the prefill instance first (the common earliest-finish rule) and then picks the decode
instance. This variant scores pairs: for the `candidates` prefill instances expected to finish
first (exact ties in random order, as the common rule breaks them) and every decode instance,

    cost(p, d) = prefill finish(p) + transfer(p -> d, starting when p finishes) + wait(d) + first step(d)

and takes the cheapest pair. A prefill instance that finishes a little later but sits next to an idle
decode instance, away from a congested uplink, can win. One vectorised O(|D|) row per candidate.
"""

import numpy as np

from netkv.scheduler.policies.base import Policy
from netkv.scheduler.policies.registry import register


@register
class NetKVJoint(Policy):
    name = "netkv_joint"
    order = 6
    defaults = {"candidates": 4}
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
        wait = v.est_wait_s(v.compute.blocks_for(req.input_tokens + req.output_tokens)) + v.first_step_s(
            req.input_tokens
        )
        if not v.all_alive:
            wait = np.where(v.decode_alive, wait, np.inf)
        best = (np.inf, int(slots[0]), -1)
        for p in slots:
            at = None if now is None else now + float(finish[p])
            transfer, _ = oracle.cost_row(int(v.prefill_hosts[p]), v.decode_hosts, q.missing_bytes, at=at)
            cost = finish[p] + transfer + wait
            d = int(cost.argmin())
            if cost[d] < best[0]:
                best = (float(cost[d]), int(p), d)
        if best[2] < 0:  # every pair unreachable: the fixed-prefill rule's fallback
            return int(slots[0]), self.argmin(wait, v)
        return best[1], best[2]

    def choose(self, q, oracle):  # with the prefill fixed (a replayed or forced prefill): netkv's rule
        v, req = q.view, q.req
        transfer, _ = oracle.cost_row(q.prefill_host, v.decode_hosts, q.missing_bytes, at=q.transfer_start)
        wait = v.est_wait_s(v.compute.blocks_for(req.input_tokens + req.output_tokens))
        return self.argmin(transfer + wait + v.first_step_s(req.input_tokens), v)
