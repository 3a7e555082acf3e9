"""Settings rules shared by the two boundaries, the notebook API (``jtaba.api``) and runs (``jtaba.runs``): one
function per rule, raising the same one-line ValueError wherever it is called. What one boundary alone takes
(array shapes and dtypes in ``jtaba.api``; input files, run folders and class draws in ``jtaba.runs``) is checked
there."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jtaba import inverters

if TYPE_CHECKING:
    from jtaba.model import Model

# Where a forward replacement of K steps lands: the level K inversion steps reach, or taba's diffusers-path level.
FORWARD_LEVELS = ("exact", "upstream")
# Methods that take forward replacement and ground-truth swaps: npi inverts with DDIM's loop.
REPLACEABLE_METHODS = ("ddim", "npi")


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_forward(before, steps: int, level: str) -> None:
    """Forward replacement of the first ``before`` of ``steps`` inversion steps, at ``level`` (0: none)."""
    if isinstance(before, bool) or not isinstance(before, (int, np.integer)) or not 0 <= before <= steps:
        raise ValueError(f"forward_before must be an int in [0, steps={steps}], got {before!r}")
    if level not in FORWARD_LEVELS:
        raise ValueError(f"forward_level must be one of {', '.join(map(repr, FORWARD_LEVELS))}, got {level!r}")


def check_replacements(method: str, forward_before: int, swap_before: int) -> None:
    """Forward replacement (``forward_before`` steps) and a ground-truth swap (``swap_before`` steps) of an
    inversion with ``method`` (a name of ``jtaba.inverters.METHODS``)."""
    if method not in REPLACEABLE_METHODS and (forward_before or swap_before):
        raise ValueError(f"forward replacement and ground-truth swaps are DDIM's (and npi's); method {method} takes "
                         f"neither")
    if forward_before and swap_before:
        raise ValueError("forward replacement (forward_before) and a ground-truth swap cannot be combined")


def check_method(method: inverters.Method, model: Model) -> None:
    """Whether ``model`` can run the inversion ``method`` (``jtaba.inverters.check_model``)."""
    reason = inverters.check_model(method, model.conditional)
    if reason:
        raise ValueError(reason)


def check_conditioning(model: Model, labels: bool, prompts: bool, guided: bool, given_as: str = "cond") -> None:
    """The conditioning a run of ``model`` is given: class ``labels``, ``prompts`` (embeddings), classifier-free
    guidance (``guided``: a scale other than 1). ``given_as`` names the input at the caller's boundary."""
    class_cond = model.num_classes is not None and model.conditional
    text_cond = model.conditional and not class_cond
    if labels and not class_cond:
        raise ValueError(f"class labels given, but this {model.family} model is not class-conditional")
    if prompts and not text_cond:
        raise ValueError(f"prompt embeddings given, but this {model.family} model is not text-conditioned")
    if model.conditional and not (labels or prompts):
        what = ("prompt embeddings (N, L, D) (made by `python convert/if.py --prompts FILE`)" if text_cond
                else "class labels (N,) int")
        raise ValueError(f"this {model.family} model is conditional: pass {given_as}, {what}")
    if guided and not model.conditional:
        raise ValueError("guidance != 1 needs a conditional model (classifier-free guidance)")
