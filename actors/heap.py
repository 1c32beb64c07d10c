"""The garbage collector of a shard process: keep its full collections small.

CPython's cyclic collector runs a full (generation 2) collection whenever the
objects promoted since the last one reach a quarter of those already in
generation 2, and a full collection visits every tracked object of the
process. A shard's process holds a large, never-changing heap (Ray, numpy,
onnxruntime, the catalogue, its modules) and promotes a steady stream of
objects (the decision log's records, each call's in-flight batch), so it
paid for visiting that static heap again and again: measured with
``loadtest.microbench`` (``shard_batch`` / ``shard_events``), full
collections took about a third of a shard's CPU per decision and per event
(README, Performance).

:func:`settle` does two things once start-up work is over (the actor calls
it after recovery, not per call):

- it collects once and freezes what survived (Python's ``gc.freeze()``, as
  Instagram does before forking): frozen objects are never visited again and
  are still freed by reference counting when dropped, so only a reference
  cycle among them would outlive its use. What a shard replaces at run time
  forms none: the catalogue and the model (``tests/actors/test_heap.py``),
  the recovered decision log's records (plain data); a leak would be
  bounded to the one start-up copy anyway;
- it raises the youngest generation's threshold from 700 to
  :data:`YOUNG_THRESHOLD` net allocations. A shard in steady state allocates
  and frees about as much as it keeps (a batch's objects die with the call;
  the decision log evicts one record per record it adds), so collections
  become rare and stop promoting each in-flight batch to the old
  generations; cyclic garbage still triggers a collection once that many
  objects of it pile up, so what it can hold back stays bounded (a few MB).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # net allocations between young collections (CPython's default: 700)


def settle() -> int:
    """Collect, freeze every surviving object, raise the young threshold; the frozen count."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return gc.get_freeze_count()
