"""Does a change alter what the pipeline computes? Train and reconstruct the tiny experiment
with an earlier revision and with this checkout, on the same data, and compare.

    python benchmarks/same_model.py --base befd219

Both trees run simulate (base only: the data are shared), validate, train and infer with
``tests/configs/tiny.yaml`` on the CPU with one thread, seed 7. It compares every trained
weight (in state-dict order, so renamed keys still pair up: the values, dtypes and shapes
must be equal bit for bit) and ``metrics.json`` without its timings, and prints one JSON
object; the exit status is 0 when both are identical. A refactor that must not change the
science (a moved module, a new seam) should print ``"identical": true``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RUN = "reports/2026-01-01T000000Z/tiny"


def export(rev: str, dest: Path) -> Path:
    """The tree of git revision ``rev`` as files under ``dest``."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_tiny(code: Path, work: Path, data_from: Path | None) -> None:
    """The tiny experiment's steps with the package in ``code``, products in ``work``."""
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(code)}
    cfg = ["--config", str(code / "tests/configs/tiny.yaml"), "--set", "training.max_minutes=0.0"]
    cpu = ["--device", "cpu", "--threads", "1"]
    steps = [["validate", *cfg, "--train-data", "train.cxi", "--test-data", "test.cxi",
              "--out", "validate/payload.json"],
             ["train", "--payload", "validate/payload.json", "--data", "train.cxi",
              "--out-dir", "train", *cpu],
             ["infer", "--model", "train/model.pt", "--data", "test.cxi", "--out-dir", "infer",
              *cpu]]
    if data_from is None:
        steps.insert(0, ["simulate", *cfg, "--train-out", "train.cxi", "--test-out", "test.cxi"])
    else:
        for name in ("train.cxi", "test.cxi"):
            (work / name).write_bytes((data_from / name).read_bytes())
    for step in steps:
        subprocess.run([sys.executable, "-m", f"ptycho_torch.{step[0]}", *step[1:],
                        "--report-dir", f"{RUN}/{step[0]}"], cwd=work, env=env, check=True,
                       capture_output=True)


def without_timings(value: Any) -> Any:
    """A metrics.json value with every ``*seconds*`` key left out, recursively."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def compare(base: Path, new: Path) -> dict[str, Any]:
    """Weights (in order) and metrics of two tiny runs, side by side."""
    a = torch.load(base / "train/model.pt", weights_only=True)["state_dict"]
    b = torch.load(new / "train/model.pt", weights_only=True)["state_dict"]
    differing = [kb for (ka, va), (kb, vb) in zip(a.items(), b.items())
                 if va.dtype != vb.dtype or va.shape != vb.shape or not torch.equal(va, vb)]
    metrics = [without_timings(json.loads((d / "infer/metrics.json").read_text()))
               for d in (base, new)]
    same = len(a) == len(b) and not differing and metrics[0] == metrics[1]
    return {"tensors": [len(a), len(b)], "values": sum(v.numel() for v in b.values()),
            "differing_tensors": differing, "metrics_equal": metrics[0] == metrics[1],
            "identical": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="same_model_") as tmp:
        root = Path(tmp)
        base_code = export(args.base, root / "base_code")
        run_tiny(base_code, root / "base", None)
        run_tiny(REPO, root / "new", root / "base")
        result = {"base": args.base, **compare(root / "base", root / "new")}
    print(json.dumps(result))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
