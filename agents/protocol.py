"""Wire formats: JSON-lines control messages (Unix sockets) and the framed KV stream (TCP).

Control plane, out of band: every agent listens on a Unix socket in the run's socket directory
(path-based Unix sockets cross Mininet's network namespaces, which share the file system); the
scheduler connects to each and exchanges one JSON object per line in both directions.

KV stream, over the emulated fabric: long-lived TCP connections from the prefill agent to the
decode agent's KV port, as a real P/D cluster keeps its RDMA queue pairs: opened when the scheduler
names the decode peers (and again only if one closed), reused by every transfer, a second one
opened when two transfers to one peer overlap. Per transfer: a 4-byte big-endian length and a JSON
header {"id", "blocks", "bytes", "src"[, "crc"]}, then every block as a 16-byte frame header (request id
u64, block index u32, payload length u32) followed by its payload; the decode side answers one ACK
byte once it has read the whole transfer, and the connection is free again.

With checksums on (`emulation.kv_checksum`), payloads are not zeros but a pseudo-random pattern
that starts at a different place for every (request, block), and the header carries each block's
CRC-32 ("crc"): the decode side recomputes them as it reads, so a block that arrives altered,
shifted or from another request fails its transfer by name instead of being admitted.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import zlib

KV_PORT = 7000
BLOCK_HDR = struct.Struct("!QII")
LEN = struct.Struct("!I")
ACK = b"\x06"  # the decode side has read a whole transfer


async def send_msg(writer: asyncio.StreamWriter, obj: dict) -> None:
    writer.write((json.dumps(obj) + "\n").encode())
    await writer.drain()


async def read_msg(reader: asyncio.StreamReader) -> dict | None:
    line = await reader.readline()
    if not line:
        return None
    return json.loads(line)


def block_sizes(
    first_token: int, input_tokens: int, kv_bytes_per_token: int, byte_scale: float, block_tokens: int = 512
) -> list[int]:
    """Emulated payload bytes of every block from token `first_token` to the end of the input."""
    sizes = []
    t = first_token
    while t < input_tokens:
        n = min(block_tokens, input_tokens - t)
        sizes.append(max(1, round(n * kv_bytes_per_token * byte_scale)))
        t += n
    return sizes


PATTERN = random.Random(20261127).randbytes(1 << 16)  # the payload pattern of checksummed transfers


def block_payload(req_id: int, idx: int, n: int) -> bytes:
    """The n payload bytes of block idx of a request when checksums are on."""
    start = (req_id * 7919 + idx * 104729) % len(PATTERN)
    reps = (start + n) // len(PATTERN) + 1
    return (PATTERN * reps)[start : start + n]


async def write_kv(
    writer: asyncio.StreamWriter,
    req_id: int,
    src: str,
    sizes: list[int],
    pace: list[float] | None = None,
    zero: bytes = b"",
    checksum: bool = False,
) -> int:
    """Write one request's KV blocks; with `pace`, block i is not sent before loop time pace[i];
    with `checksum`, pattern payloads and their CRC-32s in the header."""
    head = {"id": req_id, "blocks": len(sizes), "bytes": sum(sizes), "src": src}
    payloads = [block_payload(req_id, i, n) for i, n in enumerate(sizes)] if checksum else None
    if payloads is not None:
        head["crc"] = [zlib.crc32(b) for b in payloads]
    hdr = json.dumps(head).encode()
    writer.write(LEN.pack(len(hdr)) + hdr)
    loop = asyncio.get_running_loop()
    sent = 0
    for i, n in enumerate(sizes):
        if pace is not None:
            delay = pace[i] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        writer.write(BLOCK_HDR.pack(req_id, i, n))
        left = 0 if payloads is not None else n
        if payloads is not None:
            writer.write(payloads[i])
        while left > 0:
            chunk = min(left, len(zero))
            writer.write(zero[:chunk])
            left -= chunk
            if writer.transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()
        sent += n
        await writer.drain()
    return sent


async def read_kv(reader: asyncio.StreamReader) -> tuple[dict, int, int, str | None]:
    """Read one transfer; returns (header, payload bytes, blocks, error or None)."""
    (n,) = LEN.unpack(await reader.readexactly(LEN.size))
    hdr = json.loads(await reader.readexactly(n))
    crcs = hdr.get("crc")
    got_bytes = 0
    got_blocks = 0
    for i in range(hdr["blocks"]):
        rid, idx, length = BLOCK_HDR.unpack(await reader.readexactly(BLOCK_HDR.size))
        if rid != hdr["id"] or idx != i:
            return (
                hdr,
                got_bytes,
                got_blocks,
                f"frame out of order: got request {rid} block {idx}, expected {hdr['id']} block {i}",
            )
        left = length
        crc = 0
        while left > 0:
            chunk = await reader.read(min(left, 1 << 16))
            if not chunk:
                return hdr, got_bytes, got_blocks, "connection closed inside a block"
            if crcs is not None:
                crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
            got_bytes += len(chunk)
        if crcs is not None and crc != crcs[i]:
            return hdr, got_bytes, got_blocks, f"block {i} fails its checksum (CRC-32 {crc:08x}, sent {crcs[i]:08x})"
        got_blocks += 1
    if got_bytes != hdr["bytes"]:
        return hdr, got_bytes, got_blocks, f"received {got_bytes} bytes, header announced {hdr['bytes']}"
    return hdr, got_bytes, got_blocks, None
