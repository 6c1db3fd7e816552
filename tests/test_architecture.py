"""How the pieces meet: one serialisation of the experiment, registries behind every name, layer
contracts that catch a lower layer importing a higher one."""

import json
import shutil
import subprocess
import sys

import pytest

from netkv.config import from_dict, load, load_json, to_dict
from netkv.registry import Registry
from netkv.scheduler.cluster import Cluster
from netkv.scheduler.oracle import ORACLES
from netkv.scheduler.policies.registry import POLICIES
from netkv.topology import STRATEGIES
from netkv.topology.placement import LAYOUTS

from conftest import REPO, SMALL, make_exp

SECTIONS = ("topology", "placement", "model", "compute", "trace", "slo", "telemetry", "emulation")


@pytest.mark.parametrize("f", sorted((REPO / "experiments").rglob("*.toml")), ids=lambda p: p.name)
def test_the_experiment_json_every_process_reads_is_the_experiment(tmp_path, f):
    exp = Cluster.build(load(f, ["trace.requests=7"])).exp
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(to_dict(exp)))
    back = Cluster.build(load_json(path)).exp
    for sec in SECTIONS:
        assert getattr(back, sec) == getattr(exp, sec), sec
    assert (back.name, back.seed, back.policies, back.background, back.policy_params) == (
        exp.name,
        exp.seed,
        exp.policies,
        exp.background,
        exp.policy_params,
    )
    assert back.trace.requests == 7
    # paths point at the same files from anywhere (relative ones were made absolute)
    assert back.resolve(back.trace.path) == exp.resolve(exp.trace.path)
    assert back.resolve(back.compute.profile) == exp.resolve(exp.compute.profile)


def test_a_custom_model_and_finite_background_survive_the_round_trip(tmp_path):
    exp = make_exp(
        model={"layers": 4, "kv_heads": 2, "head_dim": 64, "dtype_bytes": 2, "params_b": 1.0},
        background=[{"src": "h0_0_0_0", "dst": "h1_0_0_0", "on_s": 2, "off_s": 1, "rate_gbps": 50}],
    )
    path = tmp_path / "e.json"
    path.write_text(json.dumps(to_dict(exp)))
    back = load_json(path)
    assert back.model == exp.model and back.model.preset is None and back.background == exp.background


@pytest.mark.parametrize(
    "key,registry", [("topology.routing", STRATEGIES), ("placement.layout", LAYOUTS), ("telemetry.oracle", ORACLES)]
)
def test_every_registered_name_is_accepted_and_nothing_else(key, registry):
    section, name = key.split(".")
    extra = {"prefill": ["h0_0_0_0"], "decode": ["h0_0_0_1"]}
    for entry in registry.names():
        table = {name: entry, **(extra if entry == "explicit" else {})}
        assert getattr(getattr(make_exp(**{section: table}), section), name) == entry
    with pytest.raises(
        ValueError, match=rf"{key}: unknown {registry.kind} 'nope' \(known: {', '.join(registry.names())}\)"
    ):
        make_exp(**{section: {name: "nope"}})


def test_the_default_policy_list_is_the_registry_in_its_order():
    raw = {k: v for k, v in SMALL.items() if k != "policies"}
    exp = from_dict(raw, None)
    assert exp.policies == []
    Cluster.build(exp)
    assert exp.policies == POLICIES.names()
    assert exp.policies == [
        "round_robin",
        "random",
        "least_loaded",
        "cache_load_aware",
        "netkv",
        "netkv_tbt",
        "netkv_joint",
    ]


def test_a_registry_lists_what_it_knows_in_order_and_refuses_twins():
    reg: Registry[int] = Registry("widget")
    reg.add("b", 1, order=0)
    reg.add("a", 2, order=1)
    reg.add("c", 3, order=1)
    assert reg.names() == ["b", "a", "c"] and reg["a"] == 2 and "c" in reg and len(reg) == 3
    with pytest.raises(ValueError, match=r"^unknown widget 'z' \(known: b, a, c\)$"):
        reg.get("z")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", 9)
    loaded = []
    lazy: Registry[int] = Registry("thing", loader=lambda: (loaded.append(1), lazy.add("x", 1)))
    assert loaded == [] and lazy.names() == ["x"] and lazy.names() == ["x"] and loaded == [1]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """The installed layout, staged once by scripts/lint.py."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import lint
    finally:
        sys.path.pop(0)
    lint.stage()
    return lint.STAGE


def _lint_imports(stage):
    exe = shutil.which("lint-imports", path=str(REPO / ".venv/bin")) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed (scripts/setup.sh installs the [lint] extra)"
    return subprocess.run(
        [exe, str(REPO / "pyproject.toml")],
        cwd=stage,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(stage), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_the_layer_contracts_hold_and_catch_an_upward_import(staged, tmp_path):
    ok = _lint_imports(staged)
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert "0 broken" in ok.stdout
    bad = tmp_path / "stage"
    shutil.copytree(staged, bad)
    cfg = bad / "netkv" / "config.py"
    cfg.write_text(cfg.read_text() + "\nfrom netkv.topology import FatTree  # an upward import\n")
    broken = _lint_imports(bad)
    assert broken.returncode != 0
    assert "The bottom layer imports nothing above it BROKEN" in broken.stdout
