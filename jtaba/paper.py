"""The paper's settings per model family (Sec. 3.1; upstream README and slurm scripts of luk-st/taba), for
``--paper`` on ``experiments.reproduce`` and every analysis.

The standard run: N = 10,240 samples, T = 100 DDIM steps, seed 420, guidance 1 (classifier-free guidance off,
Sec. 3.1). DiT: 1,280 ImageNet class names drawn with cond seed 10, 8 noises each (upstream ``run_dit_sampling.py``);
IF: Recap-COCO-30K prompts, per sample (``--prompt-embeds``, made by ``convert/if.py --prompts``; they cannot be
drawn here). The forward-diffusion inversion of the ICLR scripts: level "upstream" on diffusers models (LDM, DiT,
IF; "exact" is the same level on ADM). Tabs. 10-11: T = 10, 50, 100, 500, 1000; Tab. 9 and Tab. 7: T = 50.
The analyses' measurement protocols as upstream: Tab. 2's correlations in float16, DiT / IF triangles (Tab. 3) in
float16, interpolation (Tab. 12, Fig. 5) by torch-fidelity against the training images with DiT's ε-swap row.
"""
from __future__ import annotations

import dataclasses

# checkpoint family -> the paper's model name (Tab. 1)
FAMILIES = {"adm": "ADM", "unet2d": "LDM", "dit": "DiT", "if_unet": "IF"}


@dataclasses.dataclass(frozen=True)
class PaperSettings:
    """What ``--paper`` sets for one family: the standard run's flags (``run``: flag field -> value) and the
    analyses' own (``analyses``: analysis name -> {options field: value}); ``needs``: what must still be given."""
    family: str
    run: dict
    analyses: dict
    needs: str | None = None


STANDARD = {"n": 10_240, "steps": 100, "seed": 420, "guidance": 1.0}
STEPS_LIST = (10, 50, 100, 500, 1000)  # Tabs. 10-11 (upstream sample_per_T.py / *_corrT.sh)
EDIT_STEPS = 50  # Tab. 9 (swap) and Tab. 7 (diversity): upstream's DiT / IF slurm scripts


def settings(family: str) -> PaperSettings:
    """The paper's settings for a checkpoint family ("adm", "unet2d", "dit", "if_unet"); ValueError for one the
    paper did not study."""
    if family not in FAMILIES:
        raise ValueError(f"--paper: the paper studied ADM, LDM, DiT and IF (Tab. 1); this checkpoint's family is "
                         f"{family!r}")
    run = dict(STANDARD)
    analyses = {"steps": {"steps_list": STEPS_LIST}, "swap": {"steps": EDIT_STEPS},
                "diversity": {"steps": EDIT_STEPS, "forward_level": "upstream"}}
    needs = None
    # Tab. 12 / Fig. 5 (upstream eval_fids.py): torch-fidelity against the training images, the ICLR forward level
    analyses["interpolation"] = {"fid_protocol": "torch-fidelity", "forward_level": "upstream", "reference": "train"}
    analyses["correlations"] = {"upstream_fp16": True}  # Tab. 2: upstream's script cast every model's tensors to fp16
    if family == "dit":
        run.update(class_seed=10, noises_per_class=8)
        analyses["interpolation"]["swap_steps"] = (3,)  # Tab. 12's eps swap: 6 % of DiT's T = 50
    if family in ("dit", "if_unet"):  # Tab. 3: their triangles were measured on float16 tensors
        analyses["triangles"] = {"upstream_fp16": True}
    if family == "if_unet":
        needs = ("--prompt-embeds: the per-sample prompt embeddings of the standard run (the paper: Recap-COCO-30K "
                 "prompts, made by `python convert/if.py --prompts FILE`)")
    return PaperSettings(FAMILIES[family], run, analyses, needs)


def differences(used: dict, paper: PaperSettings) -> list[str]:
    """"name used (paper: value)" for every standard-run setting in ``used`` that differs from the paper's."""
    return [f"{k} {used[k]} (paper: {v})" for k, v in paper.run.items() if k in used and used[k] != v]
