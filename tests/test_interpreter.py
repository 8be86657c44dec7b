"""The daemon tunes the interpreter once it has started (daemon/interpreter.py)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from claude_hooks.daemon.interpreter import (
    FULL_COLLECTION_EVERY,
    GIL_SWITCH_INTERVAL,
    tune_for_serving,
)


@pytest.fixture
def untuned() -> Iterator[None]:
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("untuned")
def test_startup_objects_are_left_out_of_later_collections() -> None:
    class Held:  # a start-up object: alive for the whole run
        pass

    held = Held()
    frozen = tune_for_serving()
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is held for o in gc.get_objects())  # frozen: no collection walks it
    made_later = Held()
    assert any(o is made_later for o in gc.get_objects())


@pytest.mark.usefixtures("untuned")
def test_full_collections_are_rarer_and_the_gil_changes_hands_sooner() -> None:
    young, middle, _ = gc.get_threshold()
    tune_for_serving()
    assert gc.get_threshold() == (young, middle, FULL_COLLECTION_EVERY)
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL)
    assert GIL_SWITCH_INTERVAL < 0.005  # below CPython's default, or it changes nothing
