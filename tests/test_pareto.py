"""Pareto ranks and hypervolume contributions against their definitions."""

import numpy as np
import pytest

from ple_search.study.pareto import hypervolume_contributions, nondominated_ranks


def peel(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Ranks by the definition: a point's rank is the number of fronts peeled before it is undominated."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    points, ranks, remaining, rank = values * sign, np.full(len(values), -1), list(range(len(values))), 0
    while remaining:
        front = [i for i in remaining if not any(np.all(points[j] <= points[i]) and np.any(points[j] < points[i]) for j in remaining)]
        ranks[front] = rank
        remaining = [i for i in remaining if i not in front]
        rank += 1
    return ranks


@pytest.mark.parametrize("n, directions", [(0, ["maximize", "maximize"]), (1, ["minimize"]), (30, ["maximize"]), (40, ["maximize", "minimize"]),
                                           (60, ["maximize", "maximize", "minimize"])])  # fmt: skip
def test_ranks_match_the_definition_with_ties(n, directions):
    values = np.random.default_rng(n).integers(0, 5, size=(n, len(directions))).astype(float)  # many exact ties
    np.testing.assert_array_equal(nondominated_ranks(values, directions), peel(values, directions))


def test_contributions_are_the_volume_each_point_alone_adds():
    front = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]])
    # maximise both from reference (0, 0): each point's exclusive box is 1 x 1
    np.testing.assert_allclose(hypervolume_contributions(front, ["maximize", "maximize"], [0.0, 0.0]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(hypervolume_contributions(front, ["maximize", "maximize"], [0.0, -1.0]), [2.0, 1.0, 1.0])


def test_one_objective_hypervolume_and_contributions_are_distances_along_the_line():
    from ple_search.study.pareto import hypervolume

    values = np.array([[0.7], [0.9], [0.8], [0.9], [0.4]])
    assert hypervolume(values, ["maximize"], [0.5]) == pytest.approx(0.4)
    np.testing.assert_allclose(hypervolume_contributions(values, ["maximize"], [0.5]), [0, 0, 0, 0, 0])  # the best is tied
    np.testing.assert_allclose(hypervolume_contributions(values[[0, 1, 2, 4]], ["maximize"], [0.5]), [0, 0.1, 0, 0])
    np.testing.assert_allclose(hypervolume_contributions(np.array([[1.0], [3.0]]), ["minimize"], [4.0]), [2.0, 0])


def test_the_architecture_cell_names_a_numeric_encoding_other_than_standard():
    from ple_search.evaluate.report import architecture

    hp = {"experts_per_task": 3, "shared_experts": 2, "levels": 1, "expert_hidden": [16], "tower_hidden": [8], "loss_weighting": "pcgrad"}
    assert architecture({**hp, "numeric_encoding": "periodic"}, 2) == "CGC L1 3x2+2 [16] t[8] periodic pcgrad"
    assert architecture({**hp, "numeric_encoding": "standard"}, 2) == architecture(hp, 2) == "CGC L1 3x2+2 [16] t[8] pcgrad"
