"""Flax model families. Each module defines a frozen config dataclass and a flax.linen Module whose
``__call__`` takes NHWC inputs."""
