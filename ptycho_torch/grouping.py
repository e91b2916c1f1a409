"""Grouping of scan positions: ``gridsize g`` puts ``C = g^2`` neighbours in one sample.

Each group has an anchor position plus ``C - 1`` positions drawn (seeded) from the
anchor's ``K - 1`` nearest neighbours. By default every position anchors one group;
``n_groups`` draws that many anchors instead (seeded), and with ``oversampling``
anchors are reused, each time with a fresh draw of neighbours, so there can be more
groups than positions. The network sees the group's ``C`` patterns as channels, and
the members' offsets from the group centroid place its ``C`` predicted patches on a
shared canvas (the overlap constraint).

A validation split (:func:`split_positions`) holds out scan positions, not groups:
the training groups are formed among the training positions only and the validation
groups among the held-out ones, so no pattern is in both.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from ptycho_torch.config import ExperimentConfig


def _anchors(n: int, n_groups: int, oversampling: bool, seed: int) -> np.ndarray:
    """Anchor indices ``[n_groups]`` into ``n`` positions (``arange(n)`` for n_groups 0)."""
    if not n_groups:
        return np.arange(n)
    if n_groups > n and not oversampling:
        raise ValueError(f"{n_groups} groups need oversampling with {n} positions")
    rng = np.random.default_rng([seed, 1])
    rounds = math.ceil(n_groups / n)  # every anchor is used rounds - 1 or rounds times
    return np.concatenate([rng.permutation(n) for _ in range(rounds)])[:n_groups]


def group_indices(positions: np.ndarray, C: int, K: int, seed: int, n_groups: int = 0,
                  oversampling: bool = False) -> np.ndarray:
    """Member indices ``[G, C]`` (column 0 = the anchor) for positions ``[n, 2]`` (px).

    ``G = n`` (every position anchors one group, in order) unless ``n_groups`` > 0;
    ``n_groups`` > n needs ``oversampling``. Deterministic for a given ``seed``.
    """
    n = len(positions)
    anchors = _anchors(n, n_groups, oversampling, seed)
    if C == 1:
        return anchors[:, None]
    if n < K:
        raise ValueError(f"grouping needs at least K = {K} positions, got {n}")
    _, nearest = cKDTree(positions).query(positions[anchors], k=K)
    nearest = nearest[:, 1:]  # [G, K-1], the anchor itself excluded
    rng = np.random.default_rng(seed)
    picks = np.argsort(rng.random((len(anchors), K - 1)), axis=1)[:, :C - 1]
    return np.concatenate([anchors[:, None], np.take_along_axis(nearest, picks, 1)], axis=1)


def relative_offsets(positions: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Offsets ``[G, C, 2]`` (px) of each member from its group's centroid."""
    members = positions[groups]
    return members - members.mean(axis=1, keepdims=True)


def validation_count(n: int, fraction: float) -> int:
    """Positions held out for validation: ``round(fraction * n)``, at least 1 if fraction > 0."""
    return max(1, round(fraction * n)) if fraction > 0 else 0


def split_positions(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted training and validation position indices (a seeded random split of ``n``)."""
    held_out = validation_count(n, fraction)
    order = np.random.default_rng([seed, 2]).permutation(n)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def grouping_problems(n: int, cfg: ExperimentConfig) -> list[str]:
    """What keeps ``n`` training-data positions from being split and grouped as ``cfg``
    says (one line per problem, starting with its key path)."""
    C, K, t = cfg.model.gridsize ** 2, cfg.model.n_neighbours, cfg.training
    batch_size, n_groups = t.batch_size, t.n_groups
    held_out = validation_count(n, t.validation_fraction)
    train, problems = n - held_out, []
    if held_out and C > 1 and held_out < K:
        problems.append(f"training.validation_fraction: holds out {held_out} of {n} positions, "
                        f"fewer than the model.n_neighbours = {K} needed to group them")
    if held_out and train < max(batch_size, K if C > 1 else 1):
        problems.append(f"training.validation_fraction: leaves {train} of {n} positions for "
                        f"training, fewer than training.batch_size = {batch_size} or "
                        f"model.n_neighbours = {K}")
    if n_groups > train and not t.oversampling:
        problems.append(f"training.n_groups: {n_groups} groups but only {train} training "
                        "positions to anchor them (set training.oversampling: true to reuse "
                        "anchors)")
    return problems


def interleaved_halves(positions: np.ndarray) -> np.ndarray:
    """Bool ``[n]``: True for the first of two interleaved halves of ``positions [n, 2]`` (px).

    Positions are binned into square cells one scan step wide (the median distance to
    the four nearest neighbours: on a jittered raster the row and column neighbours),
    anchored at the scan's corner, and the cells coloured like a checkerboard: on a raster
    every position's row and column neighbours fall in the other half, and both halves
    span the whole scan at half its density.
    """
    if len(positions) < 2:
        return np.ones(len(positions), bool)
    k = min(5, len(positions))
    step = float(np.median(cKDTree(positions).query(positions, k=k)[0][:, 1:]))
    cells = np.floor((positions - positions.min(axis=0)) / max(step, 1e-9) + 0.5).astype(np.int64)
    return (cells.sum(axis=1) % 2) == 0
