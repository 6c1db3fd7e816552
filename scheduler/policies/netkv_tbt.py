"""netkv_tbt: NetKV's cost plus the decode slowdown its choice imposes, on itself and on the batch it joins.

NetKV (`netkv`) minimises the new request's TTFT alone: transfer + wait + first decode step. Joining a
batch also lengthens every iteration of that batch for as long as both run, which NetKV does not
price; so it favours the instance next to the prefill even when that instance's batch is long and
its sequences' tokens slow down (TBT). This variant minimises the latency the choice adds to the
whole system, in seconds summed over requests:

    cost(d) = transfer + wait + first step                          (the new request's TTFT, as netkv)
            + tbt_weight x [ out x step_with(d)                     (its own decode time)
                             + (step_with(d) - step(d)) x active(d) x min(out, mean remaining(d)) ]
                                                                    (the delay the batch's sequences absorb)

where step_with(d) is d's iteration time once the sequence (with its context) has joined and out is
the request's output length. Still one vectorised O(|D|) pass over the view's arrays.
"""

import numpy as np

from netkv.scheduler.policies.netkv import NetKV
from netkv.scheduler.policies.registry import register


@register
class NetKVTbt(NetKV):
    name = "netkv_tbt"
    order = 5
    # slowdown weights from a sweep on the tuning window (docs/policies.md)
    defaults = {**NetKV.defaults, "own_weight": 0.003, "batch_weight": 0.003}

    def choose(self, q, oracle):
        v, req = q.view, q.req
        cost = self.ttft_cost(q, oracle)  # netkv's terms: the new request's TTFT
        own, batch = self.params["own_weight"], self.params["batch_weight"]
        out, c = req.output_tokens, v.compute
        if own:  # its own decode time, at the iteration time once everyone heading there has joined
            cost += (own * out) * v.step_after_joins_s(req.input_tokens)
        if batch:  # what each sequence already there or on its way absorbs for min(out, its remaining)
            rem = np.minimum(v.remaining / np.maximum(v.active, 1), out)
            rem[v.active == 0] = out
            others = v.active + v.queued + v.inbound
            cost += (batch * (c.step_b + c.step_c * req.input_tokens)) * others * rem
        return self.argmin(cost, v)
