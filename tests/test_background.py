"""Background traffic: the delivered-rate report over counter snapshots, and the iperf3 sources'
lifecycle (always-on past iperf3's 86,400 s cap, on/off schedule, failures are errors) on loopback."""

import math
import os
import signal
import subprocess
import time

import pytest

from netkv.config import from_dict
from netkv.emulation import background as bgmod
from netkv.emulation.background import (
    BackgroundError,
    BackgroundTraffic,
    BgPair,
    delivered_report,
    flow_model_shares,
    format_report,
)
from netkv.topology import FatTree, LinkRates, Routing

from conftest import steer_exp

SCALE = 4000.0


def _topo():
    return FatTree(2, 4, LinkRates(200, 200, 200, 200))


def _pairs(topo):
    a = BgPair(0, topo.host_index["h1_0_0_2"], topo.host_index["h1_0_0_0"], 5400, on=[[0.0, 30.0]])
    b = BgPair(1, topo.host_index["h1_0_0_2"], topo.host_index["h1_0_0_3"], 5401, on=[[10.0, 20.0]])
    return [a, b]


def test_flow_model_shares_split_the_shared_uplink():
    topo = _topo()
    r = Routing(topo)
    pairs = _pairs(topo)
    gbps = lambda x: x * 8 / 1e9  # noqa: E731
    assert [gbps(x) for x in flow_model_shares(topo, r, pairs, [True, False])] == pytest.approx([200, 0])
    assert [gbps(x) for x in flow_model_shares(topo, r, pairs, [True, True])] == pytest.approx([100, 100])
    pairs[1].demand_Bps = 40e9 / 8  # a rate-capped entry leaves the rest to the elastic one
    assert [gbps(x) for x in flow_model_shares(topo, r, pairs, [True, True])] == pytest.approx([160, 40])


def _snapshots(topo, routing, pairs, measured_fraction=1.0, ramp_s=0.6, until=30.0, poll=0.5, dip=None):
    """Counter snapshots as the controller would publish them if each elephant got `measured_fraction`
    of its max-min share, ramping up for `ramp_s` after it starts (a transient the report must skip);
    `dip` = (t0, t1, f): every elephant gets f of that during [t0, t1) (a machine hiccup)."""
    snaps = []
    t = poll
    while t <= until:
        mid = t - poll / 2
        on = [any(a <= mid < b for a, b in p.on) for p in pairs]
        share = flow_model_shares(topo, routing, pairs, on)
        links = [{"rate_mbps": 0.0, "sampled_at": t, "up": True} for _ in topo.links]
        for k, p in enumerate(pairs):
            if not on[k]:
                continue
            start = max(a for a, b in p.on if a <= mid)
            f = measured_fraction * (0.3 if mid - start < ramp_s else 1.0)
            if dip and dip[0] <= mid < dip[1]:
                f *= dip[2]
            for lid in routing.path(p.src, p.dst):
                links[lid]["rate_mbps"] += share[k] * f * 8 / 1e6 / SCALE
        snaps.append({"links": links})
        snaps.append({"links": [dict(x) for x in links]})  # fetched twice per poll: must count once
        t += poll
    return snaps


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_delivered_report_compares_steady_windows_with_the_flow_model(fraction):
    topo = _topo()
    r = Routing(topo)
    pairs = _pairs(topo)
    rep = delivered_report(topo, r, pairs, _snapshots(topo, r, pairs, fraction), 0.5, SCALE)
    a, b = rep
    assert a["ratio"] == pytest.approx(fraction, abs=1e-9)  # ramps (first 0.6 s after a start) skipped
    assert b["ratio"] == pytest.approx(fraction, abs=1e-9)
    assert a["ratio_median"] == pytest.approx(fraction, abs=1e-9) and b["ratio_median"] == pytest.approx(fraction)
    # A is alone for 20 of its 30 s and shares the uplink with B for 10: the expected mean mixes both
    assert 100 < a["flow_model_gbps_on"] < 200
    assert b["flow_model_gbps_on"] == pytest.approx(100)
    assert b["delivered_gbps_off"] == 0.0 and b["off_samples"] >= 15
    assert a["on_samples"] >= 40 and a["off_samples"] == 0  # each poll once, despite two fetches
    assert a["path"] == ["h1_0_0_2->s1_0_0", "s1_0_0->h1_0_0_0"]
    assert b["path"] == ["h1_0_0_2->s1_0_0", "s1_0_0->h1_0_0_3"]
    # the shared first link carries both: "sent" reads the sum while B is on
    assert a["sent_gbps_on"] > a["delivered_gbps_on"]


def test_a_second_long_hiccup_moves_the_mean_window_not_the_median():
    """Both elephants at half rate for 1.5 s (three windows) of their steady on-time: the mean ratio
    reads the hiccup, the median window does not; a steady shortfall moves both (test above)."""
    topo = _topo()
    r = Routing(topo)
    pairs = _pairs(topo)
    rep = delivered_report(topo, r, pairs, _snapshots(topo, r, pairs, dip=(14.0, 15.5, 0.5)), 0.5, SCALE)
    a, b = rep
    assert b["on_samples"] >= 10
    assert a["ratio"] < 0.99 and b["ratio"] < 0.95
    assert a["ratio_median"] == pytest.approx(1.0) and b["ratio_median"] == pytest.approx(1.0)
    assert "median window 100%" in format_report(rep)[1]


def test_delivered_report_sees_a_missing_elephant():
    topo = _topo()
    r = Routing(topo)
    pairs = _pairs(topo)
    rep = delivered_report(topo, r, pairs, _snapshots(topo, r, pairs, 0.0), 0.5, SCALE)
    assert all(x["delivered_gbps_on"] == 0.0 and x["ratio"] == 0.0 for x in rep)


# ------------------------------------------------------------------------------------------------
# iperf3 sources on loopback: a fake fabric whose hosts are this namespace


class _LoopHost:
    ip = "127.0.0.1"

    def __init__(self, node):
        self._n = node

    def __getattr__(self, k):
        return getattr(self._n, k)


class _LoopTopo:
    def __init__(self, topo, ip="127.0.0.1"):
        self._t = topo
        self.hosts = [_LoopHost(h) for h in topo.hosts]
        for h in self.hosts:
            h.ip = ip

    def __getattr__(self, k):
        return getattr(self._t, k)


class _LoopFab:
    def __init__(self, topo, ip="127.0.0.1"):
        self.topo = _LoopTopo(topo, ip)

    def host(self, name):
        return self

    def popen(self, args, **kw):
        if "-s" in args:
            args = [*args, "-B", "127.0.0.1"]  # loopback only (in a Mininet host it is the host's own)
        return subprocess.Popen(args, **kw)


def _exp(tmp_path, **bg):
    raw = steer_exp(
        tmp_path,
        [{"src": ["h1_0_0_2"], "dst": ["h1_0_0_0"], "rate_gbps": 40.0, **bg}],
        emulation={"time_dilation": 1.0},
    )
    return from_dict(raw, None)


@pytest.mark.iperf3
def test_always_on_runs_past_iperf3s_duration_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(bgmod, "IPERF_MAX_S", 1)  # each test ends after 1 s, as 86,400 s would
    exp = _exp(tmp_path)
    bg = BackgroundTraffic(_LoopFab(exp_topo(exp)), exp, tmp_path / "logs")
    bg.start()
    try:
        time.sleep(3.6)
        assert bg.error() is None
    finally:
        bg.stop()
    assert bg.restarts >= 2
    (p,) = bg.pairs
    assert len(p.on) == 1 and p.on[0][1] - p.on[0][0] >= 3.5  # one continuous on-period
    log = (tmp_path / "logs" / "bg-0-h1_0_0_2-h1_0_0_0-client.log").read_text()
    assert log.count("--- start") >= 3 and "Mbits/sec" in log


@pytest.mark.iperf3
def test_on_off_schedule_is_kept(tmp_path):
    exp = _exp(tmp_path, start_s=0.5, on_s=1.0, off_s=1.0)
    bg = BackgroundTraffic(_LoopFab(exp_topo(exp)), exp, tmp_path / "logs")
    bg.start()
    try:
        time.sleep(4.4)
        assert bg.error() is None
    finally:
        bg.stop()
    (p,) = bg.pairs
    assert len(p.on) == 2
    t0 = p.on[0][0]
    for (a, b), want in zip(p.on, (0.0, 2.0)):
        assert b - a == pytest.approx(1.0, abs=0.25)
        assert a - t0 == pytest.approx(want, abs=0.4)


@pytest.mark.iperf3
def test_each_on_period_gets_a_fresh_server_so_a_held_test_cannot_refuse_the_next(tmp_path):
    """The server of the first on-period stops answering (SIGSTOP): its test never learns that the
    client was ended, as when the client's last control message is lost on a congested path. The
    next on-period must still deliver traffic, from a new server."""
    exp = _exp(tmp_path, start_s=0.3, on_s=1.0, off_s=1.0)
    bg = BackgroundTraffic(_LoopFab(exp_topo(exp)), exp, tmp_path / "logs")
    bg.start()
    try:
        time.sleep(0.8)  # inside the first on-period
        held = bg._servers[0]
        os.kill(held.pid, signal.SIGSTOP)
        time.sleep(2.6)  # the off-period, then most of the second on-period
        assert bg.error() is None
    finally:
        bg.stop()
    assert bg.fresh_servers >= 1 and held.poll() is not None and bg._servers == []
    log = (tmp_path / "logs" / "bg-0-h1_0_0_2-h1_0_0_0-client.log").read_text()
    second = log.split("--- start")[2]  # the second on-period's client
    assert "Mbits/sec" in second and "busy" not in second, second


@pytest.mark.iperf3
def test_a_source_that_dies_is_an_error_naming_the_entry_never_retried(tmp_path):
    exp = _exp(tmp_path)
    bg = BackgroundTraffic(_LoopFab(exp_topo(exp)), exp, tmp_path / "logs")
    bg.start()
    try:
        time.sleep(1.0)
        assert bg.error() is None
        bg._servers[0].kill()  # the far end goes away mid-run
        t0 = time.monotonic()
        while bg.error() is None and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        err = bg.error()
        with pytest.raises(BackgroundError, match="background entry #0"):
            bg.check()
    finally:
        bg.stop()
    assert err is not None and "background entry #0 (h1_0_0_2 -> h1_0_0_0): iperf3" in err
    assert "exited (code" in err
    assert bg.restarts == 0  # never retried


def test_a_server_replaced_while_error_looks_is_no_failure(tmp_path):
    """error() lists the servers, then asks each whether it ended; a fresh server replacing one
    in between (it kills the old one first) must not read as that source dying."""
    exp = _exp(tmp_path, start_s=0.0, on_s=1.0, off_s=1.0)
    bg = BackgroundTraffic(_LoopFab(exp_topo(exp)), exp, tmp_path / "logs")

    class Replaced:
        returncode = -9

        def poll(self):  # _fresh_server runs now: marks the pair, kills this server, starts another
            bg._replacing.add(0)
            bg._servers[0] = object()
            return -9

    bg._servers = [Replaced()]
    assert bg.error() is None and bg.errors == []


def exp_topo(exp):
    t = exp.topology
    return FatTree(
        t.k, t.gpus_per_server, LinkRates(t.gpu_link_gbps, t.server_link_gbps, t.edge_link_gbps, t.core_link_gbps)
    )


def test_report_rejects_nothing_when_there_are_no_samples():
    topo = _topo()
    rep = delivered_report(topo, Routing(topo), _pairs(topo), [], 0.5, SCALE)
    assert all(x["delivered_gbps_on"] is None and x["ratio"] is None and x["on_samples"] == 0 for x in rep)
    assert math.isinf(BgPair(0, 0, 1, 1).demand_Bps)


@pytest.mark.iperf3
def test_a_second_run_waits_for_its_own_server(tmp_path):
    """Logs are appended across policy runs; the second start must not take the first run's
    'listening' line for its own server (its client would be refused)."""
    exp = _exp(tmp_path)
    bg = BackgroundTraffic(_LoopFab(exp_topo(exp)), exp, tmp_path / "logs")
    for _ in range(2):
        bg.start()
        try:
            time.sleep(1.5)
            assert bg.error() is None
        finally:
            bg.stop()
    log = (tmp_path / "logs" / "bg-0-h1_0_0_2-h1_0_0_0-server.log").read_text()
    assert log.count("listening") >= 2


def test_windows_from_before_the_run_are_ignored():
    """Counters at a run's start may still show the previous run's elephants: not an 'off' sample."""
    topo = _topo()
    r = Routing(topo)
    pairs = _pairs(topo)
    snaps = _snapshots(topo, r, pairs)
    stale = {"links": [dict(x, sampled_at=0.2, rate_mbps=40.0) for x in snaps[0]["links"]]}
    pairs[1].on = [[10.0, 20.0]]
    kept = delivered_report(topo, r, pairs, [stale, *snaps], 0.5, SCALE)[1]
    assert kept["delivered_gbps_off"] > 0  # without `since`, the stale window counts as off
    rep = delivered_report(topo, r, pairs, [stale, *snaps], 0.5, SCALE, since=0.5)[1]
    assert rep["delivered_gbps_off"] == 0.0


def test_client_ports_keep_the_bucket_and_stay_out_of_the_ephemeral_range(tmp_path):
    """A --cport inside the kernel's ephemeral range can be the kernel's own pick for another
    connection to the same server port (iperf3's control connection): the client then fails with
    'Address already in use'. Each start takes a fresh port with the pair's low bits."""
    exp = _exp(tmp_path)
    bg = BackgroundTraffic(_LoopFab(exp_topo(exp)), exp, tmp_path / "logs")
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for k, p in enumerate(bg.pairs):
        ports = []
        for _ in range(bgmod.CPORT_SLOTS):
            a = bg._client_args(k, 10)
            ports.append(int(a[a.index("--cport") + 1]))
        assert len(set(ports)) == bgmod.CPORT_SLOTS  # no reuse within a full cycle
        assert all(1024 < c < min(lo, 32768) for c in ports)
        assert {c % 64 for c in ports} == {p.port % 64}  # the fair-queue bucket stays the pair's
