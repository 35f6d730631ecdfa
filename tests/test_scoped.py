"""dens.scoped.entries_set: entries of a mapping set inside a block, the mapping as before after."""

from __future__ import annotations

import pytest

from dens.scoped import entries_set


def test_entries_are_set_inside_and_restored_or_removed_after() -> None:
    mapping = {"kept": 1, "changed": 2}
    with entries_set(mapping, {"changed": 20, "added": 30}):
        assert mapping == {"kept": 1, "changed": 20, "added": 30}
    assert mapping == {"kept": 1, "changed": 2}


def test_a_key_that_held_none_gets_none_back() -> None:
    mapping = {"none": None}
    with entries_set(mapping, {"none": 1}):
        assert mapping["none"] == 1
    assert mapping == {"none": None}


def test_the_mapping_is_restored_when_the_block_raises() -> None:
    mapping = {"a": "1"}
    with pytest.raises(RuntimeError), entries_set(mapping, {"a": "2", "b": "3"}):
        raise RuntimeError("inside")
    assert mapping == {"a": "1"}
