"""A 100 ms port-stats poll on the k=4 x 4-GPU fabric (root): the controller keeps up with every
switch, its rates match iperf3 on a loaded path and idle links read zero."""

import time

import psutil
import pytest
from test_fabric_root import SCALE, assert_counters_match, rates_during_iperf

from netkv.emulation.fabric import Fabric, FabricSpec

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_controller_keeps_up_with_a_100ms_poll(tmp_path):
    spec = FabricSpec.for_fattree(4, 4, poll_interval=0.1, bandwidth_scale=SCALE)
    with Fabric(spec, tmp_path) as fab:
        h0 = fab.health()
        cpu = psutil.Process(fab.ctrl.pid)
        cpu.cpu_percent(None)
        time.sleep(5)
        h1 = fab.health()
        ctrl_cpu = cpu.cpu_percent(None)
        # 36 switches x 10 polls/s: at least 90% of the replies arrive
        rate = (h1["stats_replies"] - h0["stats_replies"]) / 5.0
        assert rate >= 0.9 * 36 * 10, rate
        good, samples, path, idle = rates_during_iperf(fab, "h1_1_0_0", "h3_0_1_0", 5210, warmup=2.0, interval=0.1)
        mid = samples[:-5]
        assert len(mid) >= 20
        assert_counters_match(fab.topo, path, mid, good)
        assert max(s[lid]["rate_mbps"] for s in mid for lid in idle) < 1.0
        print(f"100 ms poll: {rate:.0f} stats replies/s, controller CPU {ctrl_cpu:.1f} %, iperf3 {good:.1f} Mbit/s")
        assert ctrl_cpu < 100
