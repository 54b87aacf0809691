"""The collector set-up a serving process makes once started (core/platform/heap.py)."""

from __future__ import annotations

import subprocess
import sys

from core.platform.heap import YOUNG_THRESHOLD

# Run apart: the test process's own collector stays as it is.
PROBE = """
import gc
from core.platform import heap
kept = [[i] for i in range(50_000)]  # what start-up built (lists: always tracked)
before = gc.get_freeze_count()
heap.settle()
print(before, gc.get_freeze_count(), gc.get_threshold()[0])
"""


def test_settle_freezes_what_start_up_built_and_spaces_young_collections() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    before, frozen, young = map(int, out.split())
    assert before == 0
    assert frozen >= 50_000  # every object built so far is out of the collector's walks
    assert young == YOUNG_THRESHOLD
