"""What a model declares about its diffusion process, as data: schedule, respacing family, step conventions.

``kind`` picks the step conventions (upstream ``guided_diffusion/gaussian_diffusion.py`` and
``taba/ddim/schedulers.py``):
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
KINDS = ("adm", "diffusers")
# The beta schedules each kind computes (guided_diffusion get_named_beta_schedule / diffusers DDIMScheduler).
BETA_SCHEDULES = {"adm": ("linear", "cosine"), "diffusers": ("linear", "scaled_linear", "squaredcos_cap_v2")}
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")  # linspace: sampling only (no DDIMInverseScheduler form)
SCHEDULE_DTYPES = ("float32", "float16")


# diffusers scheduler options whose other values change the step (each with the one value supported).
_SCHEDULER_FIXED = {"prediction_type": "epsilon", "trained_betas": None, "rescale_betas_zero_snr": False}


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
    # Classifier-free guidance on the first ``guidance_channels`` eps channels only, the rest taken from the
    # conditional prediction unguided (facebookresearch/DiT ``forward_with_cfg``: 3 of a DiT's 4); None = every
    # eps channel (diffusers' pipelines, IF, the usual CFG).
    guidance_channels: int | None = None

    def __post_init__(self):
        """Every value checked here, so a bad one (a misspelt schedule in a converter's flags) is refused when the
        config is built, before any weights are read, rather than when a run first needs it."""
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"DiffusionConfig.{name} must be {want}, got {getattr(self, name)!r}")

        def one_of(name: str, allowed) -> None:
            if getattr(self, name) not in allowed:
                raise bad(name, "one of " + ", ".join(map(repr, allowed)))

        one_of("kind", KINDS)
        if self.beta_schedule not in BETA_SCHEDULES[self.kind]:
            raise ValueError(f"DiffusionConfig.beta_schedule must be one of "
                             f"{', '.join(map(repr, BETA_SCHEDULES[self.kind]))} for kind {self.kind!r}, got "
                             f"{self.beta_schedule!r}" + (" (guided-diffusion noise_schedule)" if self.kind == "adm"
                                                          else ""))
        one_of("timestep_spacing", TIMESTEP_SPACINGS)
        one_of("sample_clip", CLIP_MODES)
        one_of("invert_clip", CLIP_MODES)
        one_of("schedule_dtype", SCHEDULE_DTYPES)
        for name in ("rescale_timesteps", "set_alpha_to_one", "learned_sigma"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "a bool")
        for name, low in (("num_train_timesteps", 1), ("steps_offset", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise bad(name, f"an int >= {low}")
        for name in ("beta_start", "beta_end", "clip_range", "threshold_ratio", "threshold_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise bad(name, "a positive number")
        if not (self.beta_start <= self.beta_end < 1):
            raise ValueError(f"DiffusionConfig: need 0 < beta_start <= beta_end < 1, got beta_start "
                             f"{self.beta_start!r}, beta_end {self.beta_end!r}")
        if self.threshold_ratio > 1:
            raise bad("threshold_ratio", "a quantile in (0, 1]")
        g = self.guidance_channels
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise bad("guidance_channels", "None (every eps channel) or an int >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``guidance_channels`` is left out while None (every channel), so config.json files and
        run fingerprints of models from before the field existed stay what they were."""
        d = super().to_dict()
        if d["guidance_channels"] is None:
            del d["guidance_channels"]
        return d

    @classmethod
    def from_adm_flags(cls, flags: dict[str, Any]) -> "DiffusionConfig":
        """From guided-diffusion ``create_model_and_diffusion`` flags (ADM always clips x0 to [-1, 1]). Only
        eps-predicting models: ``predict_xstart`` true is refused."""
        if flags.get("predict_xstart", False):
            raise ValueError("guided-diffusion flag predict_xstart=True (the network predicts x0) is not supported: "
                             "jtaba's DDIM steps read the network output as eps")
        for name in ("rescale_timesteps", "learn_sigma"):
            if not isinstance(flags.get(name, False), bool):
                raise ValueError(f"guided-diffusion flag {name} must be true or false, got {flags[name]!r}")
        steps = flags.get("diffusion_steps", 1000)
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"guided-diffusion flag diffusion_steps must be an int, got {steps!r}")
        return cls(
            kind="adm",
            beta_schedule=flags.get("noise_schedule", "linear"),
            num_train_timesteps=steps,
            rescale_timesteps=flags.get("rescale_timesteps", False),
            learned_sigma=flags.get("learn_sigma", False),
            sample_clip="clip",
            invert_clip="clip",
        )

    @classmethod
    def from_diffusers_scheduler(cls, cfg: dict[str, Any], learned_sigma: bool) -> "DiffusionConfig":
        """From a diffusers scheduler_config.json (DDIM/DDPM); thresholding applies to sampling only and inversion
        clamps when ``clip_sample`` or ``thresholding`` is set (IF, upstream
        ``taba/models/deepfloyd_if/pipeline.py``)."""
        unsupported = {k: cfg[k] for k, ok in _SCHEDULER_FIXED.items() if cfg.get(k, ok) != ok}
        if unsupported:
            raise ValueError("scheduler options not supported (jtaba's DDIM reads the network output as eps on the "
                             "config's beta schedule): " + ", ".join(f"{k}={v!r}" for k, v in unsupported.items())
                             + "; supported: " + ", ".join(f"{k}={v!r}" for k, v in _SCHEDULER_FIXED.items()))
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
