"""What a model declares about its diffusion process, as data: schedule, respacing family, step conventions.

``kind`` picks the step conventions (reference §2):
* ``"adm"`` (guided_diffusion): respacing ``ddimN``; the network is evaluated at the *source* index in inversion;
  eps is re-derived from the clipped x0; the last inversion step goes to alpha 0; timestep labels are the
  training timesteps (times 1000/num_train_timesteps when ``rescale_timesteps``).
* ``"diffusers"``: DDIMScheduler / DDIMInverseScheduler; the network sees the *target* label in inversion; raw eps;
  only x0 is clipped / thresholded; the forward replacement's upstream level is one step off (``forward_level``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jtaba.config import ConfigBase

CLIP_MODES = ("none", "clip", "threshold")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(ConfigBase):
    kind: str  # "adm" | "diffusers"
    beta_schedule: str  # "linear" | "cosine" | "scaled_linear" | "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4  # diffusers linear / scaled_linear
    beta_end: float = 0.02
    rescale_timesteps: bool = False  # adm: label = t * 1000 / num_train_timesteps (float)
    timestep_spacing: str = "leading"  # diffusers: "leading" | "trailing" | "linspace"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    learned_sigma: bool = False  # network outputs 2C channels, the first C are eps
    sample_clip: str = "none"  # x0 treatment while sampling: "none" | "clip" | "threshold"
    invert_clip: str = "none"  # x0 treatment while inverting: "none" | "clip"
    clip_range: float = 1.0
    threshold_ratio: float = 0.995  # dynamic thresholding quantile (IF: 0.95)
    threshold_max: float = 1.5
    schedule_dtype: str = "float32"  # diffusers only: scheduler arithmetic in "float32" or "float16" (upstream fp16)

    def __post_init__(self):
        if self.kind not in ("adm", "diffusers"):
            raise ValueError(f"DiffusionConfig.kind must be 'adm' or 'diffusers', got {self.kind!r}")
        for name in ("sample_clip", "invert_clip"):
            if getattr(self, name) not in CLIP_MODES:
                raise ValueError(f"DiffusionConfig.{name} must be one of {CLIP_MODES}, got {getattr(self, name)!r}")

    @classmethod
    def from_adm_flags(cls, flags: dict[str, Any]) -> "DiffusionConfig":
        """From guided-diffusion ``create_model_and_diffusion`` flags (ADM always clips x0 to [-1, 1])."""
        return cls(
            kind="adm",
            beta_schedule=flags.get("noise_schedule", "linear"),
            num_train_timesteps=int(flags.get("diffusion_steps", 1000)),
            rescale_timesteps=bool(flags.get("rescale_timesteps", False)),
            learned_sigma=bool(flags.get("learn_sigma", False)),
            sample_clip="clip",
            invert_clip="clip",
        )

    @classmethod
    def from_diffusers_scheduler(cls, cfg: dict[str, Any], learned_sigma: bool) -> "DiffusionConfig":
        """From a diffusers scheduler_config.json (DDIM/DDPM); thresholding applies to sampling only and inversion
        clamps when ``clip_sample`` or ``thresholding`` is set (IF, reference §1.6, §6.5)."""
        thresh = bool(cfg.get("thresholding", False))
        clip = bool(cfg.get("clip_sample", True))
        return cls(
            kind="diffusers",
            beta_schedule=cfg.get("beta_schedule", "linear"),
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            beta_start=float(cfg.get("beta_start", 1e-4)),
            beta_end=float(cfg.get("beta_end", 0.02)),
            timestep_spacing=cfg.get("timestep_spacing", "leading"),
            steps_offset=int(cfg.get("steps_offset", 0)),
            set_alpha_to_one=bool(cfg.get("set_alpha_to_one", True)),
            learned_sigma=learned_sigma,
            sample_clip="threshold" if thresh else ("clip" if clip else "none"),
            invert_clip="clip" if clip else "none",
            clip_range=float(cfg.get("clip_sample_range", 1.0)),
            threshold_ratio=float(cfg.get("dynamic_thresholding_ratio", 0.995)),
            threshold_max=float(cfg.get("sample_max_value", 1.0 if not thresh else 1.5)),
        )
