"""Prefill and decode agents: one asyncio process per instance, inside its Mininet host.

python -m netkv.agents.agent --role prefill|decode --host NAME --experiment FILE --sock-dir DIR

Prefill agent: FCFS queue; LRU prefix cache; sleeps the profile's prefill time for the uncached
tokens (x time_dilation); then streams the blocks the chosen decode instance lacks over a pooled,
long-lived TCP connection to it, real bytes scaled by byte_scale, framed per block
(agents/protocol.py). With
`emulation.layerwise = true` the transfer starts with the prefill and block i leaves once (i+1)/n
of the prefill time has passed (layer-wise streaming that overlaps transfer and compute).

Decode agent: accepts KV streams, checks each is complete (bytes and block count), admits the
request into continuous batching within its KV capacity and max batch, runs iterations of the
profile's step time (x time_dilation) and reports the first token at once and every token's
timestamp when the request finishes; keeps the request's blocks in its prefix cache.

All timestamps are wall-clock time.time(); the scheduler converts them to real-cluster seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from netkv.agents.protocol import ACK, KV_PORT, read_kv, read_msg, send_msg, write_kv
from netkv.compute import compute_from_config
from netkv.config import ConfigError, load_json
from netkv.kvcache import PrefixCache
from netkv.trace import BLOCK_TOKENS

# a prefill agent opens its idle KV connections this many at a time at reset: at k = 8 it holds
# one to each of 256 decode agents, and 256 prefill agents open them at once (65,536 handshakes)
PEER_CONNECT_PARALLEL = 8
# accept queue of a decode agent's KV port: every prefill agent may connect at the same moment
KV_BACKLOG = 1024


class Agent:
    """Control-socket server shared by both roles.

    Every event since the last reset is numbered (`seq`) and kept, so that a scheduler that was
    killed and restarted can ask for those it never saw ("resume" with the last seq it journaled);
    the request ids it has handed out are remembered, so that an op sent twice (the scheduler
    re-sending what it cannot tell was delivered) is done once."""

    role = ""

    def __init__(self, host: str, exp, sock_dir: Path):
        self.host = host
        self.exp = exp
        self.compute = compute_from_config(exp)
        self.dilation = exp.emulation.time_dilation
        self.byte_scale = exp.emulation.byte_scale
        self.checksum = exp.emulation.kv_checksum
        self.kv_tok = self.compute.model.kv_bytes_per_token
        self.sock_path = Path(sock_dir) / f"{host}.sock"
        self.writer: asyncio.StreamWriter | None = None
        self._kick = asyncio.Event()
        self.duplicates = 0  # ops for a request id already handed out (ignored)
        self._reset_events()

    def _reset_events(self) -> None:
        self.events: list[dict] = []  # every event since the last reset; events[i] has seq i + 1
        self._sent = 0  # events[:_sent] went to the current scheduler
        self.known: set[int] = set()  # request ids handed out since the last reset

    def emit(self, ev: str, **kw) -> None:
        self.events.append({"ev": ev, "host": self.host, "seq": len(self.events) + 1, **kw})
        self._kick.set()

    async def _sender(self):
        """Sends the events in order to whichever scheduler is connected (none: they wait)."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            while (w := self.writer) is not None and self._sent < len(self.events):
                try:
                    await send_msg(w, self.events[self._sent])
                except (ConnectionError, RuntimeError):
                    if self.writer is w:
                        self.writer = None
                    break
                if self.writer is w:
                    self._sent += 1

    async def _control(self, reader, writer):
        await send_msg(writer, {"ev": "hello", "host": self.host, "role": self.role, "pid": os.getpid()})
        try:
            while True:
                msg = await read_msg(reader)
                if msg is None:
                    break
                op = msg.get("op")
                if op == "reset":
                    self.writer = None
                    self.reset()
                    self._reset_events()
                    await self.connect_peers(msg.get("peers") or [])
                    self.writer = writer
                    self.emit("reset_done")
                elif op == "resume":
                    # a restarted scheduler: what it handed out that arrived, then the events after
                    # the last one it journaled
                    self.writer = None
                    after = min(max(0, int(msg.get("after", 0))), len(self.events))
                    await send_msg(writer, {"ev": "resumed", "host": self.host, "known": sorted(self.known)})
                    self._sent = after
                    self.writer = writer
                    self._kick.set()
                elif op == "shutdown":
                    asyncio.get_running_loop().stop()
                    return
                elif "id" in msg and msg["id"] in self.known:
                    self.duplicates += 1  # sent again by a resumed scheduler: already being done
                else:
                    if "id" in msg:
                        self.known.add(msg["id"])
                    self.handle(msg)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if self.writer is writer:
                self.writer = None

    def reset(self) -> None:
        raise NotImplementedError

    async def connect_peers(self, peers: list[str]) -> None:
        """Open the long-lived connections to the given peers (prefill agents only)."""

    def handle(self, msg: dict) -> None:
        raise NotImplementedError

    async def serve(self) -> None:
        self.sock_path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._control, path=str(self.sock_path))
        os.chmod(self.sock_path, 0o600)  # the control socket is the scheduler's (root's) alone
        asyncio.get_running_loop().create_task(self._sender())
        await self.start()
        async with server:
            await server.serve_forever()

    async def start(self) -> None:
        pass


@dataclass
class _Job:
    id: int
    hash_ids: list
    input: int
    decode_host: str
    decode_ip: str
    send_from_token: int


class PrefillAgent(Agent):
    role = "prefill"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.zero = bytes(1 << 16)
        self.layerwise = self.exp.emulation.layerwise
        # idle long-lived KV connections per decode IP (kept across resets, like RDMA queue pairs)
        self._pool: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self.connections_opened = 0
        self.reset()

    async def connect_peers(self, peers: list[str]) -> None:
        """Open one idle connection to each peer that has none, PEER_CONNECT_PARALLEL at a time."""
        gate = asyncio.Semaphore(PEER_CONNECT_PARALLEL)

        async def one(ip: str) -> None:
            async with gate:
                try:
                    self._release(ip, *(await self._open(ip)))
                except (TimeoutError, OSError) as e:  # the transfer that needs it will fail and say why
                    self.emit("peer_unreachable", ip=ip, reason=f"{type(e).__name__}: {e}")

        await asyncio.gather(*(one(ip) for ip in dict.fromkeys(peers) if not self._pool.get(ip)))

    async def _open(self, ip: str):
        conn = await asyncio.wait_for(asyncio.open_connection(ip, KV_PORT), 10)
        self.connections_opened += 1
        return conn

    async def _connection(self, ip: str):
        """An idle pooled connection to `ip`, or a new one (none idle, or the peer closed them)."""
        idle = self._pool.get(ip, [])
        while idle:
            reader, writer = idle.pop()
            if not (writer.is_closing() or reader.at_eof()):
                return reader, writer
            writer.close()
        return await self._open(ip)

    def _release(self, ip: str, reader, writer) -> None:
        self._pool.setdefault(ip, []).append((reader, writer))

    def reset(self) -> None:
        if getattr(self, "_worker", None) is not None:
            self._worker.cancel()
        for t in list(getattr(self, "_transfers", ())):
            t.cancel()
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.cache = PrefixCache(self.compute.prefill_cache_blocks)
        self._transfers: set[asyncio.Task] = set()
        self._worker = asyncio.get_running_loop().create_task(self._work()) if _loop_running() else None

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def handle(self, msg: dict) -> None:
        if msg.get("op") == "prefill":
            self.queue.put_nowait(
                _Job(
                    msg["id"],
                    msg["hash_ids"],
                    msg["input"],
                    msg["decode_host"],
                    msg["decode_ip"],
                    msg["send_from_token"],
                )
            )

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            job = await self.queue.get()
            hits = self.cache.match(job.hash_ids)
            self.cache.touch(job.hash_ids[:hits])
            dur = self.compute.prefill_s(job.input - hits * BLOCK_TOKENS) * self.dilation
            t0 = time.time()
            self.emit("prefill_start", id=job.id, t=t0, hits=hits)
            pace = None
            if self.layerwise:
                start = loop.time()
                n = math.ceil(max(job.input - job.send_from_token, 0) / BLOCK_TOKENS)
                pace = [start + dur * (i + 1) / max(n, 1) for i in range(n)]
                self._spawn(job, pace)
            await asyncio.sleep(dur)
            self.cache.insert(job.hash_ids)
            self.emit("prefill_end", id=job.id, t=time.time())
            if not self.layerwise:
                self._spawn(job, None)

    def _spawn(self, job: _Job, pace):
        t = asyncio.get_running_loop().create_task(self._transfer(job, pace))
        self._transfers.add(t)
        t.add_done_callback(self._transfers.discard)

    async def _transfer(self, job: _Job, pace):
        from netkv.agents.protocol import block_sizes

        sizes = block_sizes(job.send_from_token, job.input, self.kv_tok, self.byte_scale)
        t0 = time.time()
        self.emit("xfer_start", id=job.id, t=t0)
        writer = None
        try:
            reader, writer = await self._connection(job.decode_ip)
            sent = await write_kv(writer, job.id, self.host, sizes, pace, self.zero, self.checksum)
            if await reader.readexactly(1) != ACK:
                raise ConnectionError("the decode agent answered something other than an ACK")
            self._release(job.decode_ip, reader, writer)
            self.emit("xfer_sent", id=job.id, t=time.time(), bytes=sent, blocks=len(sizes))
        except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError) as e:
            if writer is not None:
                writer.close()
            self.emit("xfer_failed", id=job.id, t=time.time(), reason=f"{type(e).__name__}: {e}")


@dataclass
class _Seq:
    id: int
    input: int
    output: int
    need: int
    hash_ids: list
    expect_bytes: int | None = None
    expect_blocks: int | None = None
    arrived: bool = False
    ctx: int = 0
    remaining: int = 0
    tokens: list = field(default_factory=list)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


class DecodeAgent(Agent):
    role = "decode"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._loop_task = None
        self.bytes_received = 0
        self.connections = 0  # KV connections accepted since start
        self.reset()

    def reset(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            self._loop_task = None
        self.seqs: dict[int, _Seq] = {}
        self.waitq: deque[_Seq] = deque()
        self.batch: list[_Seq] = []
        self.kv_used = 0
        self.cache = PrefixCache(self.compute.kv_blocks)
        self.bytes_received = 0
        self.wake = asyncio.Event()
        if _loop_running():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def start(self) -> None:
        await asyncio.start_server(  # noqa: S104 (inside the host)
            self._kv_conn, host="0.0.0.0", port=KV_PORT, backlog=KV_BACKLOG
        )
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def handle(self, msg: dict) -> None:
        if msg.get("op") == "expect":
            s = self.seqs.get(msg["id"])
            if s is None:
                s = self.seqs[msg["id"]] = _Seq(msg["id"], msg["input"], msg["output"], msg["need"], msg["hash_ids"])
            s.input, s.output, s.need, s.hash_ids = msg["input"], msg["output"], msg["need"], msg["hash_ids"]
            s.expect_bytes, s.expect_blocks = msg["bytes"], msg["blocks"]
            self._maybe_ready(s)

    async def _kv_conn(self, reader, writer):
        """One long-lived connection from a prefill agent: transfers one after another, each ACKed."""
        self.connections += 1
        peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        try:
            while True:
                try:
                    hdr, nbytes, nblocks, err = await read_kv(reader)
                except asyncio.IncompleteReadError as e:
                    if e.partial or e.expected != 4:  # not a clean close between two transfers
                        self.emit("kv_arrived", id=None, t=time.time(), ok=False, reason=f"broken stream: {e}")
                    return
                except (ConnectionError, ValueError) as e:
                    self.emit("kv_arrived", id=None, t=time.time(), ok=False, reason=f"broken stream: {e}")
                    return
                self._kv_received(hdr, nbytes, nblocks, err, time.time(), peer)
                if err is not None:
                    return  # the stream is out of step: close it, the prefill side opens a new one
                writer.write(ACK)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    def _kv_received(self, hdr: dict, nbytes: int, nblocks: int, err: str | None, t: float, peer: str) -> None:
        self.bytes_received += nbytes
        rid = hdr["id"]
        s = self.seqs.get(rid)
        if s is None:  # KV before the scheduler's expect: keep it until the expect arrives
            s = self.seqs[rid] = _Seq(rid, 0, 0, 0, [])
        if err is None and s.expect_bytes is not None and (nbytes != s.expect_bytes or nblocks != s.expect_blocks):
            err = f"expected {s.expect_blocks} blocks / {s.expect_bytes} bytes, got {nblocks} / {nbytes}"
        self.emit(
            "kv_arrived",
            id=rid,
            t=t,
            ok=err is None,
            reason=err,
            bytes=nbytes,
            blocks=nblocks,
            total_received=self.bytes_received,
            conn=peer,
        )
        if err is None:
            s.arrived = True
            self._maybe_ready(s)
        else:
            self.seqs.pop(rid, None)

    def _maybe_ready(self, s: _Seq) -> None:
        if s.arrived and s.expect_bytes is not None and s not in self.waitq and s not in self.batch:
            s.ctx, s.remaining = s.input, s.output
            self.cache.insert(s.hash_ids)
            self.waitq.append(s)
            self.wake.set()

    def _state(self) -> None:
        self.emit(
            "state",
            active=len(self.batch),
            queued=len(self.waitq),
            kv_used=self.kv_used,
            ctx_total=sum(s.ctx for s in self.batch),
            remaining=sum(s.remaining for s in self.batch),
            cached_blocks=len(self.cache),
        )

    async def _run(self):
        steps = 0
        while True:
            if not self.batch and not self.waitq:
                self.wake.clear()
                await self.wake.wait()
            changed = False
            t_admit = time.time()
            while self.waitq and self.compute.admits(len(self.batch), self.kv_used, self.waitq[0].need):
                s = self.waitq.popleft()
                self.batch.append(s)
                self.kv_used += s.need
                self.cache.resize(self.compute.kv_blocks - self.kv_used)
                self.emit("admitted", id=s.id, t=t_admit)
                changed = True
            if changed:
                self._state()
            if not self.batch:
                continue
            step = self.compute.step_s(len(self.batch), sum(s.ctx for s in self.batch)) * self.dilation
            await asyncio.sleep(step)
            t = time.time()
            done = []
            for s in self.batch:
                s.tokens.append(t)
                if len(s.tokens) == 1:
                    self.emit("first_token", id=s.id, t=t)
                s.ctx += 1
                s.remaining -= 1
                if s.remaining <= 0:
                    done.append(s)
            for s in done:
                self.batch.remove(s)
                self.kv_used -= s.need
                self.seqs.pop(s.id, None)
                self.emit("done", id=s.id, t=t, tokens=s.tokens)
            steps += 1
            if done or steps % 8 == 0:
                self.cache.resize(self.compute.kv_blocks - self.kv_used)
                self._state()


def command(role: str, host: str, experiment: Path, sock_dir: Path) -> list[str]:
    """The command line that starts an agent (the orchestrator runs it inside the host's namespace)."""
    return [sys.executable, "-m", "netkv.agents.agent", "--role", role, "--host", host,
            "--experiment", str(experiment), "--sock-dir", str(sock_dir)]  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="NetKV prefill/decode agent (runs inside a Mininet host)")
    ap.add_argument("--role", choices=("prefill", "decode"), required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--experiment", required=True, help="the run's experiment.json (netkv.config.to_dict)")
    ap.add_argument("--sock-dir", required=True)
    a = ap.parse_args(argv)
    try:
        exp = load_json(a.experiment)
    except ConfigError as e:
        print(f"netkv agent: error: {e}", file=sys.stderr)
        return 2
    cls = PrefillAgent if a.role == "prefill" else DecodeAgent

    async def run():
        agent = cls(a.host, exp, Path(a.sock_dir))
        await agent.serve()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    try:
        loop.run_until_complete(run())
    except RuntimeError:
        pass  # loop stopped by a signal or a shutdown message
    finally:
        (Path(a.sock_dir) / f"{a.host}.sock").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
