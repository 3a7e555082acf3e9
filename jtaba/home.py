"""Where models live and how a name becomes a checkpoint folder: the one resolver of the API and every CLI.

A model is named by
* ``"default"``: the small ADM shipped with the package (``jtaba/assets/default``, found with importlib.resources);
* a name in the model home, ``$JTABA_HOME/models/NAME`` (default ``~/.cache/jtaba/models/NAME``), e.g. ``"adm32"``
  after ``python convert/adm.py --model=adm32 ... --out ~/.cache/jtaba/models/adm32``;
* or a path to any jtaba checkpoint folder (``config.json`` + ``params``).
"""
from __future__ import annotations

import dataclasses
import os

import importlib_resources

from jtaba.checkpoint import CONFIG_NAME

DEFAULT = "default"

# How to produce the converted checkpoints of the paper's models (the --src files are the upstream releases).
CONVERT_COMMANDS = {
    "adm32": "python convert/adm.py --model=adm32 --src cifar10_uncond_50M_500K.pt",
    "adm64": "python convert/adm.py --model=adm64 --src imagenet64_uncond_100M_1500K.pt",
    "adm256": "python convert/adm.py --model=adm256 --src 256x256_diffusion_uncond.pt",
    "dit": "python convert/dit.py --src facebook/DiT-XL-2-256",
    "ldm": "python convert/ldm.py --src CompVis/ldm-celebahq-256",
    "if": "python convert/if.py --src DeepFloyd/IF-I-XL-v1.0 --prompts prompts.txt",
    "lpips_alex": "python convert/lpips.py --net alex",
    "lpips_vgg": "python convert/lpips.py --net vgg",
    "inception_fid": "python convert/inception.py",
    "vgg16": "python convert/vgg16.py",
    "dino_vits16": "python convert/dino.py --src facebook/dino-vits16",
    "clip_vitb32": "python convert/clip.py --src openai/clip-vit-base-patch32",
    "dreamsim": "python convert/dreamsim.py --src res/dreamsim",
}


class UnknownModel(FileNotFoundError):
    """No checkpoint answers to a model name."""


def jtaba_home() -> str:
    """``$JTABA_HOME`` or ``~/.cache/jtaba``: converted models, the compilation cache."""
    return os.environ.get("JTABA_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "jtaba")


def models_home() -> str:
    return os.path.join(jtaba_home(), "models")


def default_model_dir() -> str:
    return str(importlib_resources.files("jtaba") / "assets" / DEFAULT)


def available() -> list[str]:
    """Names that resolve now: ``default`` and the checkpoints in the model home."""
    home = models_home()
    names = sorted(d for d in os.listdir(home) if os.path.exists(os.path.join(home, d, CONFIG_NAME))) \
        if os.path.isdir(home) else []
    return [DEFAULT, *names]


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A resolved model: its checkpoint folder and a short tag for output folder names."""
    path: str
    tag: str


def resolve(name_or_path: str) -> ModelRef:
    """The checkpoint folder of a model name or path (see the module docstring); raises ``UnknownModel`` listing
    the models present and the convert command of a known paper model."""
    spec = os.path.expanduser(str(name_or_path))
    if spec == DEFAULT:
        return ModelRef(default_model_dir(), DEFAULT)
    if os.path.sep in spec or os.path.exists(spec):
        if not os.path.exists(os.path.join(spec, CONFIG_NAME)):
            raise UnknownModel(f"{spec}: not a jtaba checkpoint (no {CONFIG_NAME})")
        return ModelRef(os.path.abspath(spec), os.path.basename(os.path.normpath(spec)))
    path = os.path.join(models_home(), spec)
    if os.path.exists(os.path.join(path, CONFIG_NAME)):
        return ModelRef(path, spec)
    lines = [f"no model named {spec!r}: {path} holds no converted checkpoint "
             f"(models present: {', '.join(available())})."]
    if spec in CONVERT_COMMANDS:
        lines.append(f"Convert it first:\n  {CONVERT_COMMANDS[spec]} --out {path}")
    else:
        lines.append("Known paper models and their convert commands:")
        lines += [f"  {k}: {v} --out {os.path.join(models_home(), k)}" for k, v in CONVERT_COMMANDS.items()]
    lines.append("(set JTABA_HOME to use another model home, or give a checkpoint path)")
    raise UnknownModel("\n".join(lines))
