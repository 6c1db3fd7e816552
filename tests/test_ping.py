"""The one-process pinger's packets (no root): checksum, echo request, reply parsing."""

import struct

from netkv.emulation.ping import ECHO_REPLY, checksum, echo_request, parse_reply


def test_checksum_rfc1071_example():
    # RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (folded), the checksum its complement
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd length: padded with a zero byte


def test_echo_request_checks_out():
    pkt = echo_request(513, 40000)
    assert pkt[0] == 8 and struct.unpack("!HH", pkt[4:8]) == (513, 40000)
    assert checksum(pkt) == 0  # a packet with its checksum in place sums to 0xffff


def test_parse_reply_skips_the_ip_header_and_other_icmp():
    icmp = struct.pack("!BBHHH", ECHO_REPLY, 0, 0, 7, 300) + b"x"
    ip = bytes([0x45]) + bytes(19)
    assert parse_reply(ip + icmp) == (7, 300)
    ip_opts = bytes([0x46]) + bytes(23)  # a 24-byte header (one option word)
    assert parse_reply(ip_opts + icmp) == (7, 300)
    assert parse_reply(ip + echo_request(7, 300)) is None  # a request seen on the way in
    assert parse_reply(ip[:10]) is None
