"""The interpreter tuned for serving, once the daemon has started.

Everything the daemon builds at start-up (modules, config, clients, the app) lives
as long as the process. Python's collector would still walk all of it on every
full collection, and with twenty streams making objects a full collection came
every few seconds and held the event loop for 100–170 ms (bench figure 8). Frozen,
those objects are skipped; what the streams make is collected as before.

The store's writer thread and the event loop share the GIL. A thread that wants it
waits for the holder's switch interval (5 ms by default) to run out: while the
writer redacted and stored a batch, the loop's ticks came up to 5 ms late, every
time. At 1 ms the loop waits at most that long; the cost, more hand-overs, is paid
only while both threads have work.
"""

from __future__ import annotations

import gc
import sys

# Full collections only after 100 (not 10) younger ones: with the start-up objects
# frozen, the collector's own "a quarter more long-lived objects" rule no longer
# holds full collections back, and the queue of events on their way to the store
# made one every few seconds.
FULL_COLLECTION_EVERY = 100
GIL_SWITCH_INTERVAL = 0.001  # seconds


def tune_for_serving() -> int:
    """Collect once, then keep every object alive now out of later collections;
    collect the oldest generation less often; hand the GIL over sooner. How many
    objects were frozen."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    return gc.get_freeze_count()
