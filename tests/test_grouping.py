"""Grouping of scan positions: K-nearest candidates, seeded n_groups sampling, oversampling,
and the validation split (held-out positions never appear in a training group)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptycho_torch.config_factory import resolve_config
from ptycho_torch.grouping import (group_indices, grouping_problems, relative_offsets,
                                   split_positions)

C, K = 4, 6


@pytest.fixture(scope="module")
def positions() -> np.ndarray:
    """A jittered 7 x 6 raster, 4 px step: 42 positions ``[n, 2]`` (row, col px)."""
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.arange(7) * 4.0, np.arange(6) * 4.0, indexing="ij"), -1)
    return grid.reshape(-1, 2) + 20 + rng.uniform(-0.5, 0.5, (42, 2))


def _k_nearest(positions: np.ndarray, anchor: int) -> set[int]:
    """The anchor's K - 1 nearest other positions, by brute force."""
    d = np.linalg.norm(positions - positions[anchor], axis=1)
    d[anchor] = np.inf
    return set(np.argsort(d)[:K - 1].tolist())


def _check_members(positions: np.ndarray, groups: np.ndarray) -> None:
    for g in groups:
        assert len(set(g.tolist())) == C  # no position twice in one group
        assert set(g[1:].tolist()) <= _k_nearest(positions, g[0])


def test_every_position_anchors_one_group_by_default(positions):
    groups = group_indices(positions, C, K, seed=1)
    assert groups.shape == (len(positions), C)
    np.testing.assert_array_equal(groups[:, 0], np.arange(len(positions)))
    _check_members(positions, groups)
    offsets = relative_offsets(positions, groups)
    np.testing.assert_allclose(offsets.mean(axis=1), 0, atol=1e-12)  # about the centroid
    np.testing.assert_allclose(offsets[:, 0] - offsets[:, 1],
                               positions[groups[:, 0]] - positions[groups[:, 1]])


def test_n_groups_draws_distinct_anchors_seeded(positions):
    a = group_indices(positions, C, K, seed=1, n_groups=20)
    assert a.shape == (20, C) and len(set(a[:, 0].tolist())) == 20
    _check_members(positions, a)
    np.testing.assert_array_equal(a, group_indices(positions, C, K, seed=1, n_groups=20))
    assert not np.array_equal(a, group_indices(positions, C, K, seed=2, n_groups=20))


def test_oversampling_reuses_every_anchor_with_fresh_neighbours(positions):
    n = len(positions)
    groups = group_indices(positions, C, K, seed=1, n_groups=3 * n, oversampling=True)
    assert groups.shape == (3 * n, C)
    np.testing.assert_array_equal(np.bincount(groups[:, 0], minlength=n), np.full(n, 3))
    _check_members(positions, groups)
    member_sets = {(g[0], frozenset(g[1:])) for g in groups.tolist()}
    assert len(member_sets) > 2 * n  # mostly different draws, not 3 copies of one group
    with pytest.raises(ValueError, match="oversampling"):
        group_indices(positions, C, K, seed=1, n_groups=n + 1)


def test_validation_split_is_seeded_and_disjoint():
    train, val = split_positions(50, 0.2, seed=4)
    assert len(val) == 10 and len(train) == 40
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(50))
    again = split_positions(50, 0.2, seed=4)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, split_positions(50, 0.2, seed=5)[1])
    assert len(split_positions(50, 0.0, seed=4)[1]) == 0


def test_training_groups_never_hold_a_validation_pattern(positions):
    from ptycho_torch.dataset import PtychoData
    from ptycho_torch.train import make_samples
    n, N = len(positions), 16
    data = PtychoData(counts=np.ones((n, N, N), np.float32),
                      probe=np.ones((N, N), np.complex64), positions_px=positions,
                      object_shape=(64, 64), energy_eV=8000.0, detector_distance_m=2.0,
                      detector_pixel_size_m=75e-6, object_pixel_size_m=1e-8)
    cfg = resolve_config({"data": {"N": N}, "training": {"validation_fraction": 0.25,
                                                         "n_groups": 60, "oversampling": True}})
    train, val = make_samples(cfg, data, torch.device("cpu"))
    _, held_out = split_positions(n, 0.25, cfg.seed)
    assert len(val) == len(held_out) and len(train) == 60
    assert set(val.groups.flatten().tolist()) == set(held_out.tolist())
    assert not set(train.groups.flatten().tolist()) & set(held_out.tolist())


def test_grouping_problems_name_the_keys():
    cfg = resolve_config({"training": {"n_groups": 50, "batch_size": 8}})
    (problem,) = grouping_problems(42, cfg)
    assert problem.startswith("training.n_groups:") and "oversampling" in problem
    cfg = resolve_config({"training": {"validation_fraction": 0.1}})
    (problem,) = grouping_problems(42, cfg)  # 4 held out: too few to group with K = 6
    assert problem.startswith("training.validation_fraction:") and "4 of 42" in problem
    assert grouping_problems(42, resolve_config({"training": {"validation_fraction": 0.2}})) == []


def test_the_training_data_check_refuses_impossible_grouping(tmp_path, monkeypatch):
    """Validate and train refuse before any work, naming the key (create_training_payload)."""
    from ptycho_torch.config_factory import ConfigError, create_training_payload
    from ptycho_torch.cxi import write_cxi
    from ptycho_torch.simulate import simulate_dataset
    monkeypatch.chdir(tmp_path)
    exp = {"data": {"N": 16, "object": {"train_size_px": 40, "test_size_px": 40},
                    "probe": {"pupil_radius_px": 3.0}}, "training": {"batch_size": 8}}
    cfg = resolve_config(exp)
    data = simulate_dataset(cfg.data, 40, (cfg.seed, 0))
    write_cxi(tmp_path / "train.cxi", data)
    create_training_payload("train.cxi", "out", {"training.n_groups": len(data.counts)},
                            experiment=exp)
    with pytest.raises(ConfigError) as err:
        create_training_payload("train.cxi", "out", {"training.n_groups": len(data.counts) + 1},
                                experiment=exp)
    assert [p.split(":")[0] for p in err.value.problems] == ["training.n_groups"]
