"""``actors/heap.py``: the shard process's frozen start-up heap.

Settling runs in a child process (it would change this test process's
collector); what the freeze relies on (state the shard replaces is freed by
reference counting, not left to the collector) is checked here.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

from models.decisioning.catalog import load_catalog
from models.learning.registry import ModelRegistry
from models.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_settle_freezes_the_start_up_heap_and_still_collects_new_cycles() -> None:
    script = """
import gc, json, weakref
from actors import heap
class Node:
    pass
old = Node()
frozen = heap.settle()
new = Node(); new.me = new  # a cycle made after settling
gone = []
ref = weakref.ref(new, lambda _r: gone.append(True))
del new
gc.collect()
print(json.dumps({"frozen": frozen, "old_visited": any(o is old for o in gc.get_objects()),
                  "young": gc.get_threshold()[0], "cycle_collected": gone == [True]}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    got = json.loads(out.stdout)
    assert got["frozen"] > 1000  # the interpreter's modules and what the imports built
    assert got["old_visited"] is False  # frozen: the collector no longer walks it
    assert got["young"] == 10_000 and got["cycle_collected"] is True


def test_a_replaced_catalogue_and_model_are_freed_without_the_collector() -> None:
    """Frozen objects are never collected: what a shard drops must not need the collector."""
    settings = Settings()
    catalog = load_catalog(settings.catalog)
    scorer = ModelRegistry(settings.model_registry, catalog.group_of).latest()
    refs = [weakref.ref(catalog), weakref.ref(scorer)]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del catalog, scorer
        assert [r() for r in refs] == [None, None]  # freed at once, by reference counting
    finally:
        if was_enabled:
            gc.enable()
