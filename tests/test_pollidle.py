"""The PM QoS request that keeps CPUs in polling idle (emulation/pollidle.py), on a stand-in device file."""

import struct

from netkv.emulation.pollidle import PollIdle, current_limit_us, held_here


def test_the_request_writes_a_32_bit_zero_and_holds_the_file_until_released(tmp_path):
    dev = tmp_path / "cpu_dma_latency"
    dev.write_bytes(b"")
    p = PollIdle(dev)
    assert not p.held
    assert p.acquire() and p.held and p.error is None
    assert dev.read_bytes() == struct.pack("i", 0)
    assert p.acquire()  # a second call keeps the one request
    assert dev.read_bytes() == struct.pack("i", 0)
    p.release()
    assert not p.held
    p.release()  # twice is harmless (teardown after a failed start)


def test_no_device_is_a_reason_not_a_crash(tmp_path):
    p = PollIdle(tmp_path / "missing")
    assert p.acquire() is False and not p.held
    assert str(tmp_path / "missing") in p.error and "No such file" in p.error
    with PollIdle(tmp_path / "missing") as q:
        assert not q.held


def test_the_limit_reads_back_as_the_kernel_reports_it(tmp_path):
    dev = tmp_path / "cpu_dma_latency"
    dev.write_bytes(struct.pack("i", 2_000_000_000))
    assert current_limit_us(dev) == 2_000_000_000
    dev.write_bytes(b"\x00\x00")
    assert current_limit_us(dev) is None
    assert current_limit_us(tmp_path / "missing") is None


def test_the_process_knows_which_requests_it_holds(tmp_path):
    """What the tests' clean-machine check reads: a fabric never stopped leaves its request here."""
    dev = tmp_path / "cpu_dma_latency"
    dev.write_bytes(b"")
    p, q = PollIdle(dev), PollIdle(tmp_path / "missing")
    assert p.acquire() and not q.acquire()
    assert held_here() == [p]
    p.release()
    assert held_here() == []
