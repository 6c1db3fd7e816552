"""The agents' reset at size: a prefill agent opens its idle KV connections several at a time, and the
scheduler waits for every agent's reset at once, with a deadline that grows with the connections."""

import asyncio
import json
from types import SimpleNamespace

import pytest

from netkv.agents import agent as ag
from netkv.config import load
from netkv.scheduler.service import SchedulerService, reset_timeout_s

EXP = """
name = "reset"
[topology]
k = 2
gpus_per_server = 2
"""


def test_a_prefill_agent_opens_its_peer_connections_several_at_a_time(tmp_path):
    """Each handshake waits on the fabric; one after another, 256 of them outlast any deadline at
    k = 8. They go PEER_CONNECT_PARALLEL at a time, each peer once, and a peer that cannot be
    reached is reported without stopping the others."""
    (tmp_path / "exp.toml").write_text(EXP)
    agent = ag.PrefillAgent("h0_0_0_0", load(tmp_path / "exp.toml"), tmp_path)
    live, peak, opened = 0, 0, []

    async def fake_open(ip):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.01)
        live -= 1
        if ip == "10.9.9.9":
            raise OSError("no route to host")
        opened.append(ip)
        return SimpleNamespace(at_eof=lambda: False), SimpleNamespace(is_closing=lambda: False)

    agent._open = fake_open
    peers = [f"10.0.{i // 100}.{i % 100}" for i in range(40)] + ["10.9.9.9", "10.0.0.1"]
    asyncio.run(agent.connect_peers(peers))
    assert peak == ag.PEER_CONNECT_PARALLEL > 1
    assert sorted(opened) == sorted(set(peers) - {"10.9.9.9"})  # each peer once
    assert [e["ip"] for e in agent.events if e["ev"] == "peer_unreachable"] == ["10.9.9.9"]
    opened.clear()
    asyncio.run(agent.connect_peers(peers[:5]))  # a second reset keeps the pooled connections
    assert opened == []


def _reader(*msgs):
    r = asyncio.StreamReader()
    for m in msgs:
        if m is None:
            r.feed_eof()
        else:
            r.feed_data((json.dumps(m) + "\n").encode())
    return r


def test_the_scheduler_waits_for_all_resets_at_once_and_names_the_late_agents():
    logs = []
    svc = SimpleNamespace(log=logs.append)
    done = {"ev": "reset_done"}

    async def scenario(answers, timeout, late_after=None):
        readers = {h: _reader(*msgs) for h, msgs in answers.items()}
        if late_after is not None:
            asyncio.get_running_loop().call_later(late_after, readers["h2"].feed_data, b'{"ev": "reset_done"}\n')
        await SchedulerService._await_resets(svc, readers, timeout, progress_s=0.05)

    # the last agent answers after 0.2 s: inside the deadline, with progress printed meanwhile
    asyncio.run(scenario({"h0": [done], "h1": [done], "h2": []}, 2.0, late_after=0.2))
    assert "[netkv] agents reset: 2/3" in logs
    # two never answer: the error says how many and which
    with pytest.raises(RuntimeError, match=r"2 of 3 agents did not reset within 0 s \(first: h1\)"):
        asyncio.run(scenario({"h0": [done], "h1": [], "h2": []}, 0.3))
    # a peer not reached at reset is logged and the wait goes on; any other answer is an error
    unreached = {"ev": "peer_unreachable", "ip": "10.1.0.2", "reason": "TimeoutError: "}
    asyncio.run(scenario({"h0": [unreached, done], "h1": [done], "h2": [done]}, 2.0))
    assert "[netkv] h0: KV peer 10.1.0.2 not reached at reset: TimeoutError: " in logs
    with pytest.raises(RuntimeError, match="agent h0 did not reset"):
        asyncio.run(scenario({"h0": [{"ev": "done"}], "h1": [done]}, 2.0))
    with pytest.raises(RuntimeError, match="agent h1 did not reset: None"):  # closed its socket
        asyncio.run(scenario({"h0": [done], "h1": [None]}, 2.0))


def test_the_reset_deadline_grows_with_the_connections_to_open():
    assert reset_timeout_s(4 * 4) == pytest.approx(30.08)
    assert reset_timeout_s(256 * 256) > 300  # k = 8: 65,536 handshakes across a loaded fabric
