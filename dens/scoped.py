"""Entries of a mapping set for the length of a ``with`` block (environment variables, modules)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any


@contextmanager
def entries_set(mapping: MutableMapping[str, Any], values: Mapping[str, Any]) -> Iterator[None]:
    """``mapping.update(values)`` inside the block; after it, each key has its value from before
    again, and a key that was absent before is removed."""
    previous = {key: mapping[key] for key in values if key in mapping}
    mapping.update(values)
    try:
        yield
    finally:
        for key in values:
            if key in previous:
                mapping[key] = previous[key]
            else:
                mapping.pop(key, None)
