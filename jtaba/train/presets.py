"""Training configurations as code. A ``TrainConfig`` is hashable and JSON-serialisable (``run.json``).

``flags`` are guided-diffusion ``create_model_and_diffusion`` flags (missing ones take upstream defaults):
they define the network (``jtaba.models.adm.Config.from_flags``), the diffusion (``DiffusionConfig.from_adm_flags``)
and the loss options ``rescale_learned_sigmas`` / ``rescale_timesteps``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from jtaba.config import ConfigBase
from jtaba.models import adm

# Fields that may differ between the run.json of a run and a resumed session (everything else must match).
RESUMABLE_CHANGES = ("steps", "save", "keep", "log_every")


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """``ConfigBase``'s JSON form (unknown keys rejected by ``from_dict``), except ``flags``: stored as a tuple of
    sorted pairs (hashable), written to JSON as an object."""
    name: str
    flags: tuple[tuple[str, Any], ...]  # sorted (flag, value) pairs; see ``flags_dict``
    dataset: str  # "procedural" | "cifar10" | "imagenet64" | a prepared tfds name
    batch_size: int
    steps: int  # total optimizer updates
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_rate: float = 0.9999
    random_flip: bool = True
    compute_dtype: str = "float32"  # a jtaba.precision name: "float32" | "tf32" | "bfloat16" (params stay float32)
    seed: int = 0
    save: str = "every:2500"  # jtaba.train.save_schedule spec
    keep: int | None = None  # checkpoints kept (None = all)
    log_every: int = 100

    @property
    def flags_dict(self) -> dict[str, Any]:
        return dict(self.flags)

    def check(self) -> None:
        """ValueError naming the first setting that cannot train: learning rate, weight decay, EMA rate, sizes,
        seed, or a flag guided-diffusion does not know."""
        def bad(name, value, need):
            raise ValueError(f"{name} must be {need}, got {value!r}")

        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr (--lr)", self.lr, "a finite number > 0")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            bad("weight_decay (--weight-decay)", self.weight_decay, "a finite number >= 0")
        if not (isinstance(self.ema_rate, (int, float)) and 0 <= self.ema_rate < 1):
            bad("ema_rate (--ema)", self.ema_rate, "in [0, 1)")
        for name, flag in (("batch_size", "--batch"), ("steps", "--steps"), ("log_every", "--log-every")):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"{name} ({flag})", v, "a positive integer")
        if self.keep is not None and (not isinstance(self.keep, int) or self.keep < 1):
            bad("keep (--keep)", self.keep, "a positive integer or unset")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            bad("seed (--seed)", self.seed, "an integer in [0, 2^63)")
        known = set(adm.FLAG_DEFAULTS) | set(adm.SAMPLING_FLAGS)
        unknown = sorted(set(self.flags_dict) - known)
        if unknown:
            raise ValueError(f"unknown guided-diffusion flag(s) {', '.join(unknown)} (--flag); known: "
                             f"{', '.join(sorted(known))}")

    def replace(self, **kw) -> "TrainConfig":
        if "flags" in kw and isinstance(kw["flags"], Mapping):
            kw["flags"] = freeze_flags(kw["flags"])
        return super().replace(**kw)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["flags"] = self.flags_dict
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        d = dict(d)
        if isinstance(d.get("flags"), Mapping):
            d["flags"] = freeze_flags(d["flags"])
        return super().from_dict(d)


def freeze_flags(flags: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(flags.items()))


# upstream ``guided_diffusion/script_util.py``: ADM-32 and ADM-64 as trained in the paper's App. G runs.
ADM32_FLAGS = dict(adm.PRESETS["adm32"], dropout=0.3)  # the released ADM-32 architecture, trained with dropout
ADM64_FLAGS = dict(adm.PRESETS["adm64"])

# The built-in default model (jtaba/assets/default): ADM-32's diffusion (learned sigma, cosine 4000, rescaled
# timesteps) on a small 16x16 U-Net, 1.75M params, trained on the procedural dataset: about 0.43 s/step at batch 64
# on a 2-core CPU (2 XLA devices), 5000 steps in about 36 minutes. 64 channels at every level, so GroupNorm's 32
# groups hold 2 channels each: with 1 channel per group the output head cannot reproduce the per-channel mean of
# the noise, and high-noise DDIM steps turn that error into saturated global colours.
BUILTIN_FLAGS = dict(image_size=16, num_channels=64, num_res_blocks=1, channel_mult="1,1,1",
                     attention_resolutions="4", num_heads=2, learn_sigma=True, dropout=0.0, diffusion_steps=4000,
                     noise_schedule="cosine", rescale_learned_sigmas=True, rescale_timesteps=True)

PRESETS = {
    "cifar10_adm32": TrainConfig("cifar10_adm32", freeze_flags(ADM32_FLAGS), "cifar10", batch_size=128,
                                 steps=700_000, save="every:2500+paper_cifar10", log_every=1000),
    "imagenet64_adm64": TrainConfig("imagenet64_adm64", freeze_flags(ADM64_FLAGS), "imagenet64", batch_size=128,
                                    steps=1_500_000, save="every:2500+paper_imagenet64", log_every=1000),
    "builtin": TrainConfig("builtin", freeze_flags(BUILTIN_FLAGS), "procedural", batch_size=64, steps=5000,
                           lr=1e-3, ema_rate=0.998, save="every:250", keep=3, log_every=50),
}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
