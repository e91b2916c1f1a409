"""Grouping of scan positions: ``gridsize g`` puts ``C = g^2`` neighbours in one sample.

Each scan position anchors one group: itself plus ``C - 1`` positions drawn
(seeded) from its ``K - 1`` nearest neighbours. The network sees the group's
``C`` patterns as channels and the members' offsets from the group centroid
place its ``C`` predicted patches on a shared canvas (the overlap constraint).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def group_indices(positions: np.ndarray, C: int, K: int, seed: int) -> np.ndarray:
    """Member indices ``[n, C]`` (column 0 = the anchor) for positions ``[n, 2]`` (px)."""
    n = len(positions)
    if C == 1:
        return np.arange(n)[:, None]
    if n < K:
        raise ValueError(f"grouping needs at least K = {K} positions, got {n}")
    _, nearest = cKDTree(positions).query(positions, k=K)
    nearest = nearest[:, 1:]  # [n, K-1], the anchor itself excluded
    rng = np.random.default_rng(seed)
    picks = np.argsort(rng.random((n, K - 1)), axis=1)[:, :C - 1]
    return np.concatenate([np.arange(n)[:, None], np.take_along_axis(nearest, picks, 1)], axis=1)


def relative_offsets(positions: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Offsets ``[n, C, 2]`` (px) of each member from its group's centroid."""
    members = positions[groups]
    return members - members.mean(axis=1, keepdims=True)
