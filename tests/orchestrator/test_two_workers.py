"""A trial with 2 Ray Train workers (DDP on gloo): both ranks end with the same masks,
the same structure, the same weights and the same accuracy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
# Data-driven scores (Taylor: all-reduced gradients x weights) on gradual schedules, so the
# ranks must agree on statistics gathered from different shards at several pruning steps.
METHODS = ("taylor+unstructured+gradual", "taylor+structured+gradual")


def test_two_ranks_end_identical(ray_address: str, tmp_path: Path) -> None:
    # The Train runs have a driver of their own (tests/orchestrator/_two_workers_driver.py)
    # attached to the shared Ray, as a search's is: whatever they do, they end with it.
    log = tmp_path / "driver.log"
    with open(log, "w") as f:
        try:
            code = subprocess.run([sys.executable, str(HERE / "_two_workers_driver.py"), ray_address,
                                   str(tmp_path / "dump"), *METHODS],
                                  cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, timeout=480).returncode
        except subprocess.TimeoutExpired:
            code = "timeout (480 s)"
    assert code == 0, f"driver: {code}\n" + log.read_text()[-6000:]

    r0, r1 = {}, {}
    for method in METHODS:
        dump = tmp_path / "dump" / method
        r0[method], r1[method] = (json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1))
    for method in METHODS:
        a, b = r0[method], r1[method]
        assert a == b, method
        assert len(a["accuracy"]) == 2 and a["sparsity"][-1] > 0.3
    # Unstructured pruning left masks (the same on both ranks); structured pruning
    # physically shrank the convolutions (to the same shapes on both ranks).
    assert r0[METHODS[0]]["n_masks"] > 0

    def n_weights(shapes: dict) -> int:
        return sum(math.prod(s) for k, s in shapes.items() if not k.endswith("_mask"))

    assert r0[METHODS[1]]["n_masks"] == 0
    assert n_weights(r0[METHODS[1]]["shapes"]) < 0.8 * n_weights(r0[METHODS[0]]["shapes"])
