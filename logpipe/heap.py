"""Garbage-collector settings for the long-running roles.

A role allocates many short-lived objects per event (decoded events, items, requests)
next to a large heap that lives as long as the process (botocore's service models,
clients, the app). CPython's collector rescans that long-lived heap on each of its
frequent full passes; frozen, it is left out, and a higher first threshold makes the
young passes less frequent. Reference counting still frees nearly everything at once.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Call once a role has started: what exists now is kept out of later collections."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
