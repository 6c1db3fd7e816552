"""The controller's REST API, fuzzed from its OpenAPI description (schemathesis): every request is
answered, never with a 5xx, and what it answers conforms to the description; it listens on 127.0.0.1
only. Runs the real Ryu app (no fabric needed: no switch connects)."""

import socket

import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from netkv.emulation.fabric import Fabric, FabricError, FabricSpec

from conftest import REPO

pytestmark = pytest.mark.spawns

SCHEMA = schemathesis.openapi.from_path(str(REPO / "controller" / "openapi.json"))
CALLS: dict[int, int] = {}  # responses by status class (2 = 2xx, ...), over the fuzzing below


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    spec = FabricSpec.for_fattree(2, 2, rest_port=_free_port(), of_port=_free_port(), poll_interval=0.5)
    fab = Fabric(spec, tmp_path_factory.mktemp("ctrl"))
    fab.start_controller()  # a failing start raises FabricError naming the log
    try:
        yield fab
    finally:
        fab.stop_controller()


def test_the_controller_listens_on_loopback_only(controller):
    conns = psutil.Process(controller.ctrl.pid).net_connections(kind="inet")
    listening = {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", controller.spec.rest_port), ("127.0.0.1", controller.spec.of_port)}


def test_a_controller_that_cannot_listen_for_openflow_exits_and_says_why(tmp_path):
    """Ryu opens its OpenFlow listener in a green thread and only logs a failure: with the port taken,
    the controller answered REST and never saw a switch (the fabric waited out its ready timeout).
    Now it exits at once, and the fabric's error carries its reason."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fab = Fabric(FabricSpec.for_fattree(2, 2, rest_port=_free_port(), of_port=port), tmp_path)
        try:
            with pytest.raises(FabricError) as e:
                fab.start_controller()
        finally:
            fab.stop_controller()
    assert f"cannot listen for OpenFlow on 127.0.0.1:{port}: Address already in use" in str(e.value)
    assert "exited at start (code 2" in str(e.value) and str(tmp_path / "controller.log") in str(e.value)


@SCHEMA.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_request_gets_a_documented_answer_and_never_a_5xx(case, controller):
    resp = case.call_and_validate(base_url=f"http://127.0.0.1:{controller.spec.rest_port}")
    CALLS[resp.status_code // 100] = CALLS.get(resp.status_code // 100, 0) + 1


def test_the_fuzzing_reached_every_kind_of_answer():
    """Runs after the fuzzing above (file order): valid and invalid requests were both generated."""
    print(f"REST fuzzing: {sum(CALLS.values())} requests, by status class {dict(sorted(CALLS.items()))}")
    assert CALLS.get(2, 0) > 20 and CALLS.get(4, 0) > 20 and 5 not in CALLS
