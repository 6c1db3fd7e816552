"""The study scripts run end to end at a tiny size and write what their docs pages show."""

import importlib.util
import json

from conftest import REPO


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_staleness_study_writes_its_numbers_figure_and_table(tmp_path, capsys):
    st = _script("staleness")
    assert st.main(["--seeds", "1", "2", "--polls", "0.1", "5", "--delays", "0", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "staleness.json").read_text())
    assert set(doc["sim"]) == {"0.1/0/1", "0.1/0/2", "5/0/1", "5/0/2"}
    pt = doc["sim"]["5/0/1"]
    assert set(pt) == {"round_robin", "cache_load_aware", "netkv", st.NOCOMMIT}
    # fresh telemetry every 0.1 s: netkv keeps its choices; every 5 s some change
    assert doc["sim"]["0.1/0/1"]["netkv"]["same_decode"] > pt["netkv"]["same_decode"]
    assert pt["netkv"]["age_p50_s"] > doc["sim"]["0.1/0/1"]["netkv"]["age_p50_s"]
    assert (tmp_path / "staleness.png").stat().st_size > 10_000
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["poll", "s", "delay"] and len(out) == 1 + 2 + 1
