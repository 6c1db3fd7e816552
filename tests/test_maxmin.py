"""Max-min fair shares on hand-computed cases."""

import numpy as np
import pytest

from netkv.simulator.maxmin import maxmin_rates


def rates(flows, cap, demand=None):
    return maxmin_rates(
        [np.array(f) for f in flows],
        np.array(cap, dtype=float),
        None if demand is None else np.array(demand, dtype=float),
    )


def test_single_flow_gets_its_bottleneck():
    assert rates([[0, 1]], [10, 4]) == pytest.approx([4])


def test_equal_split_on_one_link():
    assert rates([[0], [0], [0], [0]], [12]) == pytest.approx([3, 3, 3, 3])


def test_bottleneck_frees_capacity_for_others():
    # A on L0; B on L0+L1; C on L1. L0 = 10, L1 = 4.
    # All rise to 2 (L1 full: B = C = 2); A then takes what B leaves on L0: 10 - 2 = 8.
    assert rates([[0], [0, 1], [1]], [10, 4]) == pytest.approx([8, 2, 2])


def test_parking_lot():
    # long flow over L0, L1, L2 and one short flow per link, all links 1: every flow gets 1/2.
    assert rates([[0, 1, 2], [0], [1], [2]], [1, 1, 1]) == pytest.approx([0.5] * 4)


def test_two_levels_of_bottleneck():
    # L0 = 3 shared by F0, F1, F2; L1 = 1 carries F2 and F3. F2, F3 -> 0.5; F0, F1 -> (3 - 0.5) / 2.
    assert rates([[0], [0], [0, 1], [1]], [3, 1]) == pytest.approx([1.25, 1.25, 0.5, 0.5])


def test_demand_cap_releases_capacity():
    # F0 wants only 1 of a 10 link shared with F1: F1 gets 9.
    assert rates([[0], [0]], [10], demand=[1, np.inf]) == pytest.approx([1, 9])


def test_link_capacity_is_never_exceeded_random():
    rng = np.random.default_rng(0)
    for _ in range(50):
        L = 12
        cap = rng.uniform(1, 10, L)
        flows = [rng.choice(L, size=rng.integers(1, 5), replace=False) for _ in range(rng.integers(1, 20))]
        r = maxmin_rates(flows, cap)
        load = np.zeros(L)
        for f, x in zip(flows, r):
            load[f] += x
        assert (load <= cap * (1 + 1e-9)).all()
        # max-min: every flow crosses at least one saturated link on which it has a maximal rate
        for f, x in zip(flows, r):
            ok = False
            for lk in f:
                if load[lk] >= cap[lk] * (1 - 1e-9):
                    others = [y for g, y in zip(flows, r) if lk in g]
                    ok |= x >= max(others) * (1 - 1e-9)
            assert ok
