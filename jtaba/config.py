"""The JSON form shared by jtaba's config dataclasses (each model family's ``Config``, ``DiffusionConfig``): what
``config.json`` stores is ``to_dict()``, read back with ``from_dict``."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

C = TypeVar("C", bound="ConfigBase")


class ConfigBase:
    """Mixin for frozen dataclasses. JSON form: one key per field, tuples written as lists; ``from_dict`` reads
    every list back as a tuple (so configs stay hashable), gives missing keys their field defaults and rejects
    unknown keys. A config whose fields need another conversion overrides ``to_dict`` / ``from_dict`` around
    ``super()``."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            name = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"
            raise ValueError(f"unknown {name} keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (``dataclasses.replace``; ``__post_init__`` checks run again)."""
        return dataclasses.replace(self, **changes)
