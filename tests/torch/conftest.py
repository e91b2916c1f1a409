"""Make the repository importable when pytest runs without PYTHONPATH or an install
(``CUDA_VISIBLE_DEVICES="" pytest tests/torch/test_config_factory.py -vv``)."""

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
