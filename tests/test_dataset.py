"""The data type (ptycho_torch/dataset.py): valid pixels, the object frame of a scan, pattern
selection and the true positions of a scan simulated with position errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conftest import synthetic_scan
from ptycho_torch.dataset import (MASK_DEAD, MASK_SHADOWED, frame_for, select_patterns,
                                  true_positions)


def test_valid_pixels_are_the_mask_free_ones():
    d = synthetic_scan()
    assert d.N == 8 and d.valid_pixels().all()
    mask = np.zeros((8, 8), np.uint32)
    mask[0, 1], mask[2, 3] = MASK_DEAD, MASK_SHADOWED
    valid = replace(d, mask=mask).valid_pixels()
    assert valid.sum() == 62 and not valid[0, 1] and not valid[2, 3]


def test_frame_for_holds_every_patch():
    positions = np.array([[4.0, 4.0], [10.5, 20.25]])
    assert frame_for(positions, 8) == (16, 26)  # ceil(max + N/2 + 1) per axis


def test_select_patterns_subsets_per_pattern_arrays_only():
    d = replace(synthetic_scan(), extras={"true_position_row_px": np.arange(6.0),
                                          "true_position_col_px": np.arange(6.0) + 10})
    keep = np.array([True, False, True, False, False, True])
    part = select_patterns(d, keep)
    assert part.counts.tobytes() == d.counts[keep].tobytes()
    assert part.positions_px.tobytes() == d.positions_px[keep].tobytes()
    assert part.probe is d.probe and part.ground_truth is d.ground_truth
    np.testing.assert_array_equal(true_positions(part), [[0, 10], [2, 12], [5, 15]])
    assert true_positions(synthetic_scan()) is None
