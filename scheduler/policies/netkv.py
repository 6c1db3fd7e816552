"""netkv: greedy O(|D|) scan minimising transfer + wait + first decode step (NetKV, arXiv 2606.03910).

For every live decode candidate d: the oracle's time to move the KV bytes d lacks from the chosen
prefill instance to d, plus d's expected wait before the sequence joins its batch, plus d's
iteration time with the sequence in it. All terms are numpy arrays over candidates.
"""

from netkv.scheduler.policies.base import Policy
from netkv.scheduler.policies.registry import register


@register
class NetKV(Policy):
    name = "netkv"
    order = 4  # position in the default policy list (baselines first)
    defaults = {"transfer_weight": 1.0, "wait_weight": 1.0}

    def choose(self, q, oracle):
        return self.argmin(self.ttft_cost(q, oracle), q.view)

    def ttft_cost(self, q, oracle):
        """Per candidate: weighted transfer + wait + the first decode step (the new request's TTFT)."""
        v = q.view
        transfer, _age = oracle.cost_row(q.prefill_host, v.decode_hosts, q.missing_bytes, at=q.transfer_start)
        # the instance reserves blocks for the input and the output (as the engine and agents do)
        wait = v.est_wait_s(v.compute.blocks_for(q.req.input_tokens + q.req.output_tokens))
        if self.params["transfer_weight"] != 1.0:
            transfer = self.params["transfer_weight"] * transfer
        if self.params["wait_weight"] != 1.0:
            wait = self.params["wait_weight"] * wait
        cost = transfer + wait
        cost += v.first_step_s(q.req.input_tokens)
        return cost
