"""The garbage collector set up for a long-running server.

Once started, a process holds a few hundred thousand objects that live as long as it does
(modules, ccxt's exchange tables, pydantic's validators). CPython's collector walks every one of
them in each full collection (about 200 ms here, every few hundred webhooks), and its young
collections run every 700 container allocations (a webhook of 100 alerts makes thousands).
``settle`` takes what start-up built out of the collector's sight (``gc.freeze``: reference
counting still frees it) and lets more allocations pass between young collections.
"""

from __future__ import annotations

import gc

# Container allocations between young collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Freeze the heap as built so far and space young collections further apart; called once
    start-up is done, right before serving."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
