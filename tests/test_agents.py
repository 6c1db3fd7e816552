"""Agents without Mininet: a prefill and a decode agent on localhost, driven over their Unix sockets
like the scheduler drives them; real KV bytes cross a local TCP connection."""

import asyncio
import json
import math
import os
import subprocess

import pytest

from netkv.agents.agent import command as agent_command
from netkv.agents.protocol import block_sizes, read_msg, send_msg
from netkv.config import load, to_dict

# the agents run as child processes
pytestmark = pytest.mark.spawns

EXP = """
name = "agents"
[topology]
k = 2
gpus_per_server = 2
[emulation]
bandwidth_scale = 4000
time_dilation = 1.0
layerwise = {layerwise}
"""


def start(tmp_path, role, host, exp):
    log = open(tmp_path / f"{host}.log", "wb")
    return subprocess.Popen(
        agent_command(role, host, exp, tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NETKV_RUN": "netkv"},
    )


async def drive(tmp_path, n_tokens=5000, output=20, send_from=1024):
    async def conn(host):
        for _ in range(200):
            try:
                r, w = await asyncio.open_unix_connection(str(tmp_path / f"{host}.sock"))
                assert (await read_msg(r))["ev"] == "hello"
                return r, w
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.05)
        raise AssertionError(f"agent {host} did not start")

    pr, pw = await conn("h0_0_0_0")
    dr, dw = await conn("h1_0_0_1")
    for w in (pw, dw):
        await send_msg(w, {"op": "reset"})
    assert (await read_msg(pr))["ev"] == "reset_done" and (await read_msg(dr))["ev"] == "reset_done"
    sizes = block_sizes(send_from, n_tokens, 128 * 1024, 1 / 4000)
    ids = list(range(math.ceil(n_tokens / 512)))
    await send_msg(
        dw,
        {
            "op": "expect",
            "id": 0,
            "input": n_tokens,
            "output": output,
            "need": 12,
            "hash_ids": ids,
            "bytes": sum(sizes),
            "blocks": len(sizes),
        },
    )
    await send_msg(
        pw,
        {
            "op": "prefill",
            "id": 0,
            "hash_ids": ids,
            "input": n_tokens,
            "decode_host": "h1_0_0_1",
            "decode_ip": "127.0.0.1",
            "send_from_token": send_from,
        },
    )
    pev, dev = {}, {}

    async def collect(r, out, until):
        while until not in out:
            m = await asyncio.wait_for(read_msg(r), 30)
            out.setdefault(m["ev"], m)

    await asyncio.gather(collect(pr, pev, "xfer_sent"), collect(dr, dev, "done"))
    for w in (pw, dw):
        await send_msg(w, {"op": "shutdown"})
    return pev, dev, sizes


@pytest.mark.parametrize("layerwise, checksum", [(False, False), (True, False), (False, True)])
def test_prefill_to_decode_over_tcp(tmp_path, layerwise, checksum):
    toml = tmp_path / "exp.toml"
    toml.write_text(EXP.format(layerwise=str(layerwise).lower()) + f"kv_checksum = {str(checksum).lower()}\n")
    exp = tmp_path / "experiment.json"  # agents read the validated JSON the orchestrator writes
    exp.write_text(json.dumps(to_dict(load(toml))))
    procs = [start(tmp_path, "prefill", "h0_0_0_0", exp), start(tmp_path, "decode", "h1_0_0_1", exp)]
    try:
        pev, dev, sizes = asyncio.run(drive(tmp_path))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    assert pev["xfer_sent"]["bytes"] == sum(sizes) and pev["xfer_sent"]["blocks"] == len(sizes)
    k = dev["kv_arrived"]
    assert k["ok"] and k["bytes"] == sum(sizes) and k["blocks"] == len(sizes) == 8  # tokens 1024..5000
    toks = dev["done"]["tokens"]
    assert len(toks) == 20 and toks == sorted(toks)
    assert dev["first_token"]["t"] == toks[0] >= k["t"] >= pev["prefill_start"]["t"]
    pf = pev["prefill_end"]["t"] - pev["prefill_start"]["t"]
    assert pf > 0.1  # 5,000 tokens of Llama-3-8B prefill on the H200 profile ~0.15 s (time_dilation 1)
    if layerwise:
        # streaming starts with the prefill and ends about when it does
        assert pev["xfer_start"]["t"] < pev["prefill_start"]["t"] + 0.05
        assert k["t"] >= pev["prefill_start"]["t"] + 0.8 * pf
    else:
        assert pev["xfer_start"]["t"] >= pev["prefill_end"]["t"]


class _Ctl:
    """The scheduler's side of one agent's control socket."""

    def __init__(self, tmp_path, host):
        self.path, self.host, self.seen = tmp_path / f"{host}.sock", host, []

    async def open(self):
        for _ in range(200):
            try:
                self.r, self.w = await asyncio.open_unix_connection(str(self.path))
                assert (await read_msg(self.r))["ev"] == "hello"
                return self
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.05)
        raise AssertionError(f"agent {self.host} did not start")

    async def send(self, **msg):
        await send_msg(self.w, msg)

    async def wait(self, ev, rid=None):
        while True:
            m = await asyncio.wait_for(read_msg(self.r), 30)
            self.seen.append(m)
            if m["ev"] == ev and (rid is None or m.get("id") == rid):
                return m


async def _one_transfer(pre, dec, rid, n_tokens=3000):
    sizes = block_sizes(0, n_tokens, 128 * 1024, 1 / 4000)
    ids = list(range(100 * rid, 100 * rid + math.ceil(n_tokens / 512)))
    await dec.send(
        op="expect", id=rid, input=n_tokens, output=2, need=8, hash_ids=ids, bytes=sum(sizes), blocks=len(sizes)
    )
    await pre.send(
        op="prefill",
        id=rid,
        hash_ids=ids,
        input=n_tokens,
        decode_host="h1_0_0_1",
        decode_ip="127.0.0.1",
        send_from_token=0,
    )
    got = await dec.wait("kv_arrived", rid)
    sent = await pre.wait("xfer_sent", rid)
    assert got["ok"] and got["bytes"] == sent["bytes"] == sum(sizes)
    return got["conn"]


def test_kv_connections_are_long_lived_and_reopened_after_the_decode_agent_restarts(tmp_path):
    """The prefill agent opens its connection to the decode peer at reset and every transfer reuses
    it; when the decode agent is killed and started again, the next transfer opens a new one and
    succeeds (the dead connection is not reused)."""
    toml = tmp_path / "exp.toml"
    toml.write_text(EXP.format(layerwise="false"))
    exp = tmp_path / "experiment.json"
    exp.write_text(json.dumps(to_dict(load(toml))))
    pre_p, dec_p = start(tmp_path, "prefill", "h0_0_0_0", exp), start(tmp_path, "decode", "h1_0_0_1", exp)
    procs = [pre_p, dec_p]
    modes = []

    async def scenario():
        pre, dec = await _Ctl(tmp_path, "h0_0_0_0").open(), await _Ctl(tmp_path, "h1_0_0_1").open()
        modes[:] = [(tmp_path / f"{h}.sock").stat().st_mode & 0o777 for h in ("h0_0_0_0", "h1_0_0_1")]
        await dec.send(op="reset")
        await dec.wait("reset_done")
        await pre.send(op="reset", peers=["127.0.0.1"])  # opens the long-lived connection
        await pre.wait("reset_done")
        conns = [await _one_transfer(pre, dec, rid) for rid in range(3)]
        dec_p.kill()
        dec_p.wait(10)
        procs.append(start(tmp_path, "decode", "h1_0_0_1", exp))
        dec2 = await _Ctl(tmp_path, "h1_0_0_1").open()
        await dec2.send(op="reset")
        await dec2.wait("reset_done")
        after = await _one_transfer(pre, dec2, 3)
        failed = [m for m in pre.seen if m["ev"] == "xfer_failed"]
        for c in (pre, dec2):
            await c.send(op="shutdown")
        return conns, after, failed

    try:
        conns, after, failed = asyncio.run(scenario())
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
    assert len(set(conns)) == 1, conns  # one connection carried all three transfers
    assert modes == [0o600, 0o600]  # control sockets: the scheduler's (root's) alone
    assert after != conns[0] and failed == []


def test_a_restarted_scheduler_gets_the_events_it_missed_once_and_a_repeated_op_is_ignored(tmp_path):
    """The scheduler is killed while a request is in flight: the agents keep working and keep every
    event; the restarted scheduler says the last one it journaled and gets the rest, in order, with
    the ids each agent already has; an op it sends again for such an id is not done twice."""
    toml = tmp_path / "exp.toml"
    toml.write_text(EXP.format(layerwise="false"))
    exp = tmp_path / "experiment.json"
    exp.write_text(json.dumps(to_dict(load(toml))))
    procs = [start(tmp_path, "prefill", "h0_0_0_0", exp), start(tmp_path, "decode", "h1_0_0_1", exp)]

    async def scenario():
        pre, dec = await _Ctl(tmp_path, "h0_0_0_0").open(), await _Ctl(tmp_path, "h1_0_0_1").open()
        await dec.send(op="reset")
        await dec.wait("reset_done")
        await pre.send(op="reset", peers=["127.0.0.1"])
        await pre.wait("reset_done")
        sizes = block_sizes(0, 3000, 128 * 1024, 1 / 4000)
        ids = list(range(6))
        expect = dict(op="expect", id=7, input=3000, output=30, need=8, hash_ids=ids, bytes=sum(sizes), blocks=6)
        prefill = dict(
            op="prefill", id=7, hash_ids=ids, input=3000, decode_host="h1_0_0_1", decode_ip="127.0.0.1",
            send_from_token=0,
        )  # fmt: skip
        await dec.send(**expect)
        await pre.send(**prefill)
        last = {"pre": (await pre.wait("prefill_start", 7))["seq"], "dec": dec.seen[-1]["seq"]}
        for c in (pre, dec):  # the scheduler is killed
            c.w.close()
        await asyncio.sleep(2.0)  # the request finishes meanwhile
        pre2, dec2 = await _Ctl(tmp_path, "h0_0_0_0").open(), await _Ctl(tmp_path, "h1_0_0_1").open()
        out = {}
        for name, c in (("pre", pre2), ("dec", dec2)):
            await c.send(op="resume", after=last[name])
            out[name] = await c.wait("resumed")
        await pre2.wait("xfer_sent", 7)
        await dec2.wait("done", 7)
        await pre2.send(**prefill)  # sent again: the agent already has it
        await dec2.send(**expect)
        await asyncio.sleep(1.0)
        await pre2.send(op="reset", peers=[])
        await pre2.wait("reset_done")
        for c in (pre2, dec2):
            await c.send(op="shutdown")
        return last, out, pre2.seen, dec2.seen

    try:
        last, out, pre_seen, dec_seen = asyncio.run(scenario())
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
    assert out["pre"]["known"] == [7] and out["dec"]["known"] == [7]
    for seen, after in ((pre_seen, last["pre"]), (dec_seen, last["dec"])):
        seqs = [m["seq"] for m in seen if "seq" in m and m["ev"] != "reset_done"]
        assert seqs == list(range(after + 1, after + 1 + len(seqs)))  # the rest, in order, none twice
    evs = [m["ev"] for m in pre_seen]
    assert evs[1:4] == ["prefill_end", "xfer_start", "xfer_sent"] and "prefill_start" not in evs  # not redone
    assert [m["ev"] for m in dec_seen].count("done") == 1 and "kv_arrived" in [m["ev"] for m in dec_seen]


def _kv_roundtrip(sizes, checksum, tamper=None):
    """write_kv into a stream whose bytes `tamper` may alter, then read_kv from it."""
    import asyncio

    from netkv.agents.protocol import read_kv, write_kv

    class Sink:
        def __init__(self):
            self.buf = bytearray()
            self.transport = self

        def write(self, b):
            self.buf += b

        def get_write_buffer_size(self):
            return 0

        async def drain(self):
            return None

    async def go():
        sink = Sink()
        await write_kv(sink, 42, "h0_0_0_0", sizes, None, bytes(1 << 16), checksum)
        data = bytes(tamper(sink.buf) if tamper else sink.buf)
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_kv(reader)

    return asyncio.run(go())


def test_checksummed_transfers_arrive_whole_and_an_altered_byte_fails_by_block():
    sizes = [5000, 70000, 123]
    hdr, nbytes, nblocks, err = _kv_roundtrip(sizes, True)
    assert err is None and nbytes == sum(sizes) and nblocks == 3 and len(hdr["crc"]) == 3

    def flip(buf):  # one byte in the middle of the second block's payload
        at = len(buf) - 123 - 16 - 35000
        buf[at] ^= 0xFF
        return buf

    _, _, nblocks, err = _kv_roundtrip(sizes, True, flip)
    assert nblocks == 1 and err.startswith("block 1 fails its checksum")
    # without checksums the same damage goes unnoticed (zeros, counts only): what the option is for
    assert _kv_roundtrip(sizes, False, flip)[3] is None


def test_block_payloads_differ_between_requests_and_blocks():
    from netkv.agents.protocol import block_payload

    a, b, c = block_payload(1, 0, 4096), block_payload(2, 0, 4096), block_payload(1, 1, 4096)
    assert len({a, b, c}) == 3 and len(block_payload(3, 5, 200000)) == 200000
