"""The base of the analyses' typed results."""
from __future__ import annotations

import dataclasses


class Result:
    """Mixin of a frozen result dataclass: ``to_json()`` is its fields as plain nested dicts / lists (what the
    analysis's JSON file holds)."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
