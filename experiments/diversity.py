"""Editing diversity and text alignment of conditional models, and how replacing the first inversion steps restores
them (paper Sec. 4.2 Fig. 6 / Tab. 7, Sec. 5 Fig. 7 / Tab. 13).

    python -m experiments.diversity --model=dit                          # class changes (ImageNet class names)
    python -m experiments.diversity --model=if --prompts=prompts         # prompt changes (IF prompt embeddings)

Needs a conditional model: class-conditional (DiT: taba's class-name sampling, ``RunSettings(class_seed=...)``;
other class-conditional models: class ids drawn the same way, Python ``random.choices``) or text-conditioned (IF:
prompt embeddings precomputed by ``python convert/if.py --prompts FILE.txt`` into CKPT/prompts/<stem>.npy, prompts
drawn as upstream ``pd.Series(prompts).sample(n_prompts, random_state=cond_seed)``). Each drawn condition is
repeated --noises-per-cond times (upstream noises_per_prompt 4).

Runs (``jtaba.runs``, reused when finished): the source sampling run (source conditions, cond_seed 10 upstream;
recorded when ground-truth swaps are asked for), its DDIM inversion (the latents), per K the inversion whose first K
steps take the ground-truth ε of the recorded sampling run (the paper's Tab. 13 / Fig. 7 rows, upstream
``run_*_invert_swap.py swap_type=eps``) and per K the inversion whose first K steps are replaced by forward diffusion
q(x_K | x_0) (the fix of the ICLR version, ``run_*_invert_forward.py``; level --forward-level, "upstream" = the
diffusers scripts' level one step further, identical for ADM). Then one target run per column: sampling, inversion
off, from the column's starting point with the target conditions (cond_seed 42): "noise" (the source's own noise:
the ground-truth regeneration the paper compares with), "latents" (plain DDIM latents, ø), "eps swap K",
"forward K". Pairs are (target[i], source[i]); images are the decoded samples of latent models.

Per column, mean and std over the pairs (std as upstream: torch's unbiased std for DreamSim / LPIPS, numpy's for
the others): DreamSim distance, LPIPS (AlexNet, on the uint8 images as upstream), SSIM and PSNR as upstream
computes them (skimage ``data_range=1`` and ``cv2.PSNR`` R = 255 on the raw [-1, 1] arrays, upstream quirk), SSIM
of the images clipped and mapped to [0, 1] (ssim_01; that PSNR would be upstream's minus 20·log10(127.5) = 42.1 dB,
up to clipping, and infinite for identical pairs, so it is not repeated), DINO cosine similarity (upstream reports
its mean), and
CLIP-T: the cosine between each target image and its source prompt p_s and its target prompt p_t (for class models
the prompt is the class name, the first name of the checkpoint's id2label). CLIP text embeddings come from the
CLIP checkpoint's prompt set --clip-prompts (``convert/clip.py --prompts FILE.txt``): prompts are looked up by text
(class names / the IF prompts), or by class id for class models without names. SSIM / PSNR always run; a metric
whose network or prompt set is absent is listed under "skipped" with the command that makes it (for a missing CLIP
prompt set, the prompts it needs are written to <runs-dir>/<model>/diversity/<name>.txt). Each K row also gives
the improvement over the latents row in % (Fig. 7: positive = more diverse / less like p_s / closer to p_t) and the
share of the latents-to-noise gap it closes (Sec. 5).

Defaults: N = 64, T = 50 (the paper's T), K in {1, 2, 3, 5} for both replacements (2-10 % of T, the paper's
rows), sized for DiT / IF on a GPU: 4 + 2 x (number of Ks) passes over N samples. The paper used 512 samples (128
prompts x 4).

Writes into --out: diversity.json (every number, runs, conditions, skips), diversity.csv (Tab. 7 / Tab. 13: one
row per column, each metric's mean and std), diversity.png (Fig. 7: each metric against K, the noise and latents
levels marked) and diversity_examples.png (Fig. 6: source | noise | latents | swap K | forward K for a few samples
with their source -> target conditions).
"""
from __future__ import annotations

import dataclasses
import os
import random
import textwrap

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses.diversity import pair_scores, relative, summary
from jtaba.runs import StandardOptions

# Tab. 7 / Tab. 13 columns first, then the extra image-quality variants.
METRICS = ("dreamsim", "lpips", "ssim", "dino", "clip_t_source", "clip_t_target", "psnr", "ssim_01")
LABELS = {"dreamsim": "DreamSim", "lpips": "LPIPS", "ssim": "SSIM", "dino": "DINO", "clip_t_source": "CLIP-T (p_s)",
          "clip_t_target": "CLIP-T (p_t)", "psnr": "PSNR", "ssim_01": "SSIM [0,1]"}
TITLES = {"dreamsim": "DreamSim distance to the source (higher: more diverse)",
          "lpips": "LPIPS (AlexNet) to the source (higher: more diverse)",
          "ssim": "SSIM to the source, upstream (raw [-1,1], data range 1)",
          "dino": "DINO cosine to the source (lower: more diverse)",
          "clip_t_source": "CLIP-T with the source prompt $p_s$ (lower: better edit)",
          "clip_t_target": "CLIP-T with the target prompt $p_t$ (higher: better edit)",
          "psnr": "PSNR to the source, upstream (cv2, R = 255 on [-1,1])",
          "ssim_01": "SSIM to the source, images in [0,1] (data range 1)"}
ROLES = {"dreamsim": "dreamsim", "lpips": "lpips", "dino": "dino", "clip_t_source": "clip", "clip_t_target": "clip"}
METHODS = ("swap", "forward")
METHOD_LABELS = {"swap": "ε swap (ground truth)", "forward": "forward diffusion"}
SWAP_TYPE = "eps"
EXAMPLES = 6


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    n: int = 64
    steps: int = 50
    batch: int = 64
    source_cond_seed: int = 10
    target_cond_seed: int = 42
    noises_per_cond: int = 4
    swap_steps: tuple = (1, 2, 3, 5)
    forward_steps: tuple = (1, 2, 3, 5)
    forward_seed: int = 42
    forward_level: str = "upstream"
    prompts: str | None = None  # text models: the prompt-embedding file (M, L, D) .npy, its .json beside it
    clip_prompts: str | None = None  # the CLIP prompt set; None: "class_names" or the prompt file's stem


def build_parser():
    p = cli.parser("python -m experiments.diversity", __doc__)
    cli.add_analysis_flags(p, Options, n_help="number of samples N, a multiple of --noises-per-cond (the paper: 512 "
                                              "= 128 prompts x 4)")
    p.add_argument("--source-cond-seed", type=int, default=Options.source_cond_seed,
                   help="cond_seed of the source classes / prompts (upstream 10)")
    p.add_argument("--target-cond-seed", type=int, default=Options.target_cond_seed,
                   help="cond_seed of the target classes / prompts (upstream 42)")
    p.add_argument("--noises-per-cond", type=int, default=Options.noises_per_cond,
                   help="consecutive samples sharing a drawn class / prompt (upstream noises_per_prompt)")
    p.add_argument("--swap-steps", default=",".join(map(str, Options.swap_steps)),
                   help="Ks of the ground-truth ε swap columns (first K inversion steps take the recorded sampling "
                        "run's ε; the paper's Tab. 13: T = 50, K = 1,2,3,5); 'none' for no swap columns")
    p.add_argument("--forward-steps", default=",".join(map(str, Options.forward_steps)),
                   help="Ks of the forward-diffusion columns (first K inversion steps replaced by q(x_K | x_0)); "
                        "'none' for none")
    p.add_argument("--forward-seed", type=int, default=Options.forward_seed,
                   help="seed of the forward-diffusion noise (its own stream; upstream forward_seed 42)")
    p.add_argument("--forward-level", choices=("upstream", "exact"), default=Options.forward_level,
                   help="upstream: the DiT/IF scripts' level (timesteps[K], one step further); exact: the level K "
                        "inversion steps reach (the same for ADM)")
    p.add_argument("--prompts", default="prompts", metavar="NAME|FILE.npy",
                   help="text-conditioned models: the prompt-embedding set NAME in the model's prompts/ folder "
                        "(`python convert/if.py --prompts NAME.txt`), or a .npy file with its .json beside it")
    p.add_argument("--clip-prompts", default=None, metavar="NAME",
                   help="CLIP text embeddings: the prompt set NAME in the CLIP checkpoint's prompts/ folder "
                        "(`python convert/clip.py --prompts NAME.txt`) holding the class names / prompts (default: "
                        "'class_names' for class models, the --prompts set's name for text models)")
    return p


def prompt_file(args) -> str:
    """--prompts as a file: a NAME is the model's prompts/NAME.npy."""
    prompts = args.prompts
    if not prompts.endswith(".npy") and os.path.sep not in prompts:
        prompts = os.path.join(cli.model_ref(args).path, "prompts", f"{prompts}.npy")
    return os.path.abspath(prompts)


def options_from_args(args) -> Options:
    prompts = prompt_file(args)
    opts = Options(n=args.n, steps=args.steps, seed=args.seed, batch=args.batch, precision=args.precision,
                   source_cond_seed=args.source_cond_seed, target_cond_seed=args.target_cond_seed,
                   noises_per_cond=args.noises_per_cond,
                   swap_steps=cli.parse_step_counts(args.swap_steps, "--swap-steps", allow_none=True),
                   forward_steps=cli.parse_step_counts(args.forward_steps, "--forward-steps", allow_none=True),
                   forward_seed=args.forward_seed, forward_level=args.forward_level,
                   prompts=prompts, clip_prompts=args.clip_prompts)
    check_options(opts)
    return opts


def check_options(opts: Options) -> None:
    if opts.noises_per_cond < 1 or opts.n % opts.noises_per_cond:
        raise ValueError(f"--n ({opts.n}) must be a positive multiple of --noises-per-cond ({opts.noises_per_cond})")


def out_parts(opts: Options) -> list:
    """The analysis settings in the default output folder name (beyond T, N, seed, precision)."""
    parts = [f"{flag}{'-'.join(map(str, ks)) or 'none'}" for flag, ks in (("S", opts.swap_steps),
                                                                           ("F", opts.forward_steps))]
    parts += cli.changed_parts(opts, (("source_cond_seed", "src{}"), ("target_cond_seed", "tgt{}"),
                                      ("noises_per_cond", "x{}"), ("forward_seed", "fseed{}"),
                                      ("forward_level", "{}"), ("clip_prompts", "clip-{}")))
    if opts.prompts and os.path.basename(opts.prompts) != "prompts.npy":
        parts.append("p-" + os.path.splitext(os.path.basename(opts.prompts))[0])
    return parts


def network_passes(ws, opts: Options) -> int:
    """N x T passes: sampling and inversion of the source, per K one inversion, per column one target sampling."""
    return 4 + 2 * (len(opts.swap_steps) + len(opts.forward_steps))


# ---- conditions ----------------------------------------------------------------------------------------------
def condition_kind(model) -> str:
    """"class" or "text"; ValueError (before any work) for an unconditional model."""
    if model.conditional:
        return "class" if model.num_classes is not None else "text"
    from jtaba import home

    examples = "\n".join(f"  {name}: {home.CONVERT_COMMANDS[name]} --out {os.path.join(home.models_home(), name)}"
                         for name in ("dit", "if"))
    raise ValueError(f"the diversity analysis edits generations by changing their condition: it needs a conditional "
                     f"model (class-conditional, e.g. DiT, or text-conditioned, e.g. IF), and this {model.family} "
                     f"model is unconditional. Convert one first, e.g.\n{examples}\nand pass --model=dit or "
                     f"--model=if")


def unavailable(ws, opts: Options) -> str | None:
    """Why the analysis cannot run on this model (an unconditional one, a text-conditioned one without its prompt
    set), else None: ``experiments.reproduce`` lists it as skipped."""
    try:
        if condition_kind(ws.model) == "text":
            read_prompt_set(opts.prompts)
    except ValueError as e:
        return str(e)
    return None


def class_names(model) -> list | None:
    """Class names in id order (the first name of each id2label entry, upstream DIT_IMAGENET_MAP), or None."""
    id2label = model.extras.get("id2label")
    if not id2label:
        return None
    from jtaba.class_labels import class_names as names

    return names(id2label)


def draw_prompt_ids(cond_seed: int, count: int, population: int, per: int) -> np.ndarray:
    """Upstream IF prompts: ``pd.Series(prompts).sample(count, random_state=cond_seed)`` (numpy RandomState
    sampling without replacement = permutation prefix), each index repeated ``per`` times: (count * per,) int64."""
    if count > population:
        raise ValueError(f"{count} prompts drawn without replacement, but the prompt set holds {population}")
    return np.repeat(np.random.RandomState(cond_seed).permutation(population)[:count], per).astype(np.int64)


def draw_class_ids(cond_seed: int, count: int, num_classes: int, per: int) -> np.ndarray:
    """taba's class draw (``random.seed(cond_seed); random.choices(classes, k=count)``) over class ids, for class
    models without class names; each repeated ``per`` times: (count * per,) int64."""
    ids = random.Random(cond_seed).choices(range(num_classes), k=count)
    return np.repeat(np.asarray(ids, np.int64), per)


def read_prompt_set(path: str | None) -> tuple:
    """(embeddings (M, L, D) memory map, prompts) of a prompt-embedding file written by ``convert/if.py``."""
    from jtaba import home

    meta = None if path is None else os.path.splitext(path)[0] + ".json"
    if path is None or not (os.path.isfile(path) and os.path.isfile(meta)):
        raise ValueError(f"this text-conditioned model needs prompt embeddings: {path} (and its .json) not found; "
                         f"make them with `{home.CONVERT_COMMANDS['if']} --out <the model's folder>` (a prompts "
                         f"file, one prompt per line) and pass --prompts <its name>")
    return np.load(path, mmap_mode="r"), list(io.read_json(meta)["prompts"])


def run_conditions(model, kind: str, cond_seed: int, opts: Options, prompt_embeds) -> tuple[dict, np.ndarray]:
    """(``RunSettings`` keyword arguments, the condition id of every sample (N,): prompt index or class id)."""
    count = opts.n // opts.noises_per_cond
    if kind == "text":
        ids = draw_prompt_ids(cond_seed, count, len(prompt_embeds), opts.noises_per_cond)
        return {"prompt_embeds": np.asarray(prompt_embeds[ids], np.float32)}, ids
    id2label = model.extras.get("id2label")
    if id2label:  # the run draws them (taba's DiT class-name sampling); the same ids, for the analysis
        from jtaba.class_labels import upstream_class_labels

        ids = upstream_class_labels(id2label, cond_seed, count, opts.noises_per_cond)
        return {"class_seed": cond_seed, "noises_per_class": opts.noises_per_cond}, ids
    ids = draw_class_ids(cond_seed, count, model.num_classes, opts.noises_per_cond)
    return {"labels": ids}, ids


# ---- CLIP prompt rows -----------------------------------------------------------------------------------------
def clip_rows(clip_prompts: list, ids: np.ndarray, texts: list | None, num_classes: int | None):
    """(rows into the CLIP prompt set for condition ids, or None, reason): by text when the conditions have texts
    (class names, IF prompts; first occurrence), else by class id (a set of one prompt per class)."""
    if texts is None:
        if len(clip_prompts) != num_classes:
            return None, (f"the CLIP prompt set holds {len(clip_prompts)} prompts; without class names it must hold "
                          f"one per class id ({num_classes}, in id order)")
        return np.asarray(ids, np.int64), None
    first = {}
    for i, p in enumerate(clip_prompts):
        first.setdefault(p, i)
    wanted = [texts[i] for i in ids]
    absent = sorted({t for t in wanted if t not in first})
    if absent:
        return None, f"the CLIP prompt set lacks {len(absent)} of the prompts, e.g. {absent[:3]}"
    return np.asarray([first[t] for t in wanted], np.int64), None


def clip_prompt_command(ws, name: str, texts: list | None) -> str:
    """The command that makes the CLIP prompt set ``name``; writes the prompts it needs (when known) to
    <runs-dir>/<model>/diversity/<name>.txt."""
    from jtaba.metrics import networks

    if texts is None:
        return (f"{networks.convert_command('clip')} --prompts {name}.txt (one prompt per class id, in id order: "
                f"this model has no class names)")
    path = os.path.abspath(os.path.join(ws.root, ws.tag, "diversity", f"{name}.txt"))
    io.write_text(path, "\n".join(texts) + "\n")
    return f"{networks.convert_command('clip')} --prompts {path}"


def clip_prompt_embeddings(ws, opts: Options, kind: str, texts: list | None, ids: dict) -> tuple:
    """(CLIP prompt-set name, {"source", "target"}: the CLIP text embedding (N, P) of each sample's prompt, or
    None, why not)."""
    from jtaba.metrics import clip, networks

    name = opts.clip_prompts or ("class_names" if kind == "class" else
                                 os.path.splitext(os.path.basename(opts.prompts))[0])
    try:
        emb, prompts = clip.read_prompt_embeds(networks.default_name("clip"), name)
    except FileNotFoundError:
        return name, None, f"no CLIP prompt set {name!r}; make it with: {clip_prompt_command(ws, name, texts)}"
    out = {}
    for side, cond in ids.items():
        rows, why = clip_rows(prompts, cond, texts, ws.model.num_classes)
        if why:
            command = clip_prompt_command(ws, name, texts)
            return name, None, f"CLIP prompt set {name!r}: {why}; remake it with: {command}"
        out[side] = np.asarray(emb, np.float32)[rows]
    return name, out, None


# ---- metrics -------------------------------------------------------------------------------------------------
def run_images(run):
    """The images of a run: decoded samples for latent models, else the samples (N, 3, H, W)."""
    return run["decoded_samples"] if "decoded_samples" in run else run["samples"]


# ---- the analysis --------------------------------------------------------------------------------------------
def load_networks(roles) -> tuple[dict, dict]:
    """({role: (config, params)} of the present networks, {role: convert command} of the absent ones)."""
    from jtaba.metrics import networks

    absent = networks.missing(roles)
    return {r: networks.load(r) for r in roles if r not in absent}, absent


def replacement_note(model, steps: int, method: str, k: int) -> str | None:
    """None when the first ``k`` inversion steps can be replaced by ``method``, else why not."""
    if method == "forward":
        return None if k <= steps else f"forward replacement of K={k} steps exceeds steps={steps}"
    from jtaba import engine

    try:
        engine.mirror_indices(model.diffusion, steps, SWAP_TYPE, k)
    except ValueError as e:
        return str(e)
    return None


def perception(ws, opts: Options, kind: str, texts: list | None, ids: dict) -> tuple:
    """(loaded networks {role: (config, params)}, skipped {metric: reason}, CLIP prompt-set name, CLIP text
    embeddings {"source", "target"} or None)."""
    nets, absent = load_networks(sorted(set(ROLES.values())))
    skipped = {m: absent[ROLES[m]] for m in ("dreamsim", "lpips", "dino") if ROLES[m] in absent}
    name, text_emb = None, None
    if "clip" in absent:
        skipped["clip_t"] = absent["clip"]
    else:
        name, text_emb, why = clip_prompt_embeddings(ws, opts, kind, texts, ids)
        if why:
            skipped["clip_t"] = why
    return nets, skipped, name, text_emb


def add_relative(columns: list[dict], metrics: list) -> None:
    """Add Fig. 7's ``improvement_percent`` / ``gap_closed_percent`` to each K column (not to noise, latents)."""
    means = {c["column"]: {m: c["metrics"][m]["mean"] for m in metrics} for c in columns}
    for c in columns:
        if c["k"] is not None and c["method"] != "latents":
            c.update(relative(means[c["column"]], means["latents"], means["noise"]).to_json())


def compute(ws, opts: Options) -> dict:
    """Source, inversions and target runs; then every metric per column (see the module docstring)."""
    from jtaba.runs import RunSettings

    check_options(opts)
    kind = condition_kind(ws.model)
    prompt_embeds, prompt_texts = read_prompt_set(opts.prompts) if kind == "text" else (None, None)
    texts = prompt_texts if kind == "text" else class_names(ws.model)
    src_cond, src_ids = run_conditions(ws.model, kind, opts.source_cond_seed, opts, prompt_embeds)
    tgt_cond, tgt_ids = run_conditions(ws.model, kind, opts.target_cond_seed, opts, prompt_embeds)
    nets, skipped, clip_name, text_emb = perception(ws, opts, kind, texts, {"source": src_ids, "target": tgt_ids})
    metrics = [m for m in METRICS if m not in skipped and not (m.startswith("clip_t") and text_emb is None)]

    base = {"n": opts.n, "steps": opts.steps, "seed": opts.seed, "batch": opts.batch, "precision": opts.precision,
            "guidance": opts.guidance, "schedule_dtype": opts.schedule_dtype}  # its own conditions, the run's others
    source = ws.run(RunSettings(**base, **src_cond, record=bool(opts.swap_steps), inversion=False,
                                reconstruction=False))
    plain = ws.run(RunSettings(**base, **src_cond, samples=source["samples"], noise=source["noise"],
                               reconstruction=False))
    starts = [("noise", "noise", None, source, "noise"), ("latents", "latents", 0, plain, "latents")]
    notes = []
    for method, ks in (("swap", opts.swap_steps), ("forward", opts.forward_steps)):
        for k in ks:
            why = replacement_note(ws.model, opts.steps, method, k)
            if why:
                notes.append(f"{method} K={k} skipped: {why}")
                continue
            extra = ({"swap_from": source, "swap_before": k, "swap_type": SWAP_TYPE} if method == "swap" else
                     {"samples": source["samples"], "noise": source["noise"], "forward_before": k,
                      "forward_level": opts.forward_level, "forward_seed": opts.forward_seed})
            run = ws.run(RunSettings(**base, **src_cond, **extra, reconstruction=False), f"{method} K={k}")
            starts.append((f"{method}_{k}", method, k, run, "latents"))

    source_images = run_images(source)
    columns = []
    for name, method, k, start, array in starts:
        target = ws.run(RunSettings(**base, **tgt_cond, noise=start[array], inversion=False, reconstruction=False),
                        f"target from {name}")
        images = run_images(target)
        scores = pair_scores(nets, images, source_images, opts.batch, text_emb)
        columns.append({"column": name, "method": method, "k": k, "start_run": start.path, "start": array,
                        "target_run": target.path, "metrics": {m: summary(m, scores.of(m)).to_json() for m in metrics}})
    add_relative(columns, metrics)

    def cond_text(i):
        return texts[i] if texts is not None else f"class {i}"

    examples = [{"index": i, "source": cond_text(src_ids[i]), "target": cond_text(tgt_ids[i])}
                for i in range(0, opts.n, opts.noises_per_cond)[:EXAMPLES]]
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "conditioning": kind, "source_cond_seed": opts.source_cond_seed,
            "target_cond_seed": opts.target_cond_seed, "noises_per_cond": opts.noises_per_cond,
            "swap_type": SWAP_TYPE, "swap_steps": list(opts.swap_steps), "forward_steps": list(opts.forward_steps),
            "forward_seed": opts.forward_seed, "forward_level": opts.forward_level,
            "prompts": opts.prompts if kind == "text" else None, "clip_prompts": clip_name,
            "runs": {"source": source.path, "latents": plain.path},
            "metrics": metrics, "columns": columns, "skipped": skipped, "notes": notes,
            "conditions": {"source": src_ids.tolist(), "target": tgt_ids.tolist()}, "examples": examples}


# ---- outputs -------------------------------------------------------------------------------------------------
def column_label(c: dict, steps: int) -> str:
    if c["method"] in ("noise", "latents"):
        return {"noise": "noise (ground truth)", "latents": "latents (ø)"}[c["method"]]
    return f"{'ε swap' if c['method'] == 'swap' else 'forward'} K={c['k']} ({100 * c['k'] / steps:.0f} %)"


def csv_rows(result: dict) -> list[dict]:
    """Tab. 7 / Tab. 13: one row per column (noise, latents, swap K, forward K); each metric's mean and std."""
    rows = []
    for c in result["columns"]:
        row = {"model": result["model"], "n": result["n"], "steps": result["steps"], "column": c["column"],
               "method": c["method"], "k": c["k"],
               "percent": None if c["k"] is None else 100.0 * c["k"] / result["steps"]}
        for m in result["metrics"]:
            row[f"{m}_mean"], row[f"{m}_std"] = c["metrics"][m]["mean"], c["metrics"][m]["std"]
        for m in result["metrics"]:
            row[f"{m}_improvement_percent"] = c.get("improvement_percent", {}).get(m)
        rows.append(row)
    return rows


def _fmt(s: dict | None) -> str:
    if s is None:
        return "–"
    return f"{s['mean']:.4g}" + ("" if s["std"] is None else f" ± {s['std']:.2g}")


def markdown(result: dict) -> str:
    """Tab. 7 (noise vs latents) and Tab. 13 (rows K) in one table: mean ± std of every computed metric."""
    ms = result["metrics"]
    lines = ["| column | " + " | ".join(LABELS[m] for m in ms) + " |", "|---" * (len(ms) + 1) + "|"]
    for c in result["columns"]:
        lines.append(f"| {column_label(c, result['steps'])} | " + " | ".join(_fmt(c["metrics"][m]) for m in ms) + " |")
    foot = [(f"{result['model']}, N = {result['n']}, T = {result['steps']}, {result['conditioning']} conditions "
             f"(source cond_seed {result['source_cond_seed']}, target {result['target_cond_seed']}); metrics of "
             f"each target generation against its source image; CLIP-T: cosine with the source (p_s) / target "
             f"(p_t) prompt; forward level {result['forward_level']}.")]
    foot.append("Rows: the starting point of the target generations: the ground-truth noise, the DDIM latents (ø), "
                "or latents whose first K inversion steps used the ground-truth ε (ε swap) or forward diffusion. "
                "Columns (mean ± std over pairs): DreamSim and LPIPS distances (higher: more diverse), SSIM and PSNR "
                "(upstream conventions; lower: more diverse), DINO cosine (lower: more diverse), CLIP-T cosine with "
                "the source prompt p_s (lower: better edit) and the target prompt p_t (higher: better edit).")
    foot += [f"skipped {m}: {why}" for m, why in result["skipped"].items()]
    foot += result["notes"]
    return "\n".join(lines + [""] + ["\n\n".join(foot)])


def plot(result: dict, path: str) -> str:
    """diversity.png (Fig. 7 / Tab. 13): each metric against K, one line per replacement (K = 0: the latents),
    the noise column dotted."""
    ms = result["metrics"]
    ncols = 3
    nrows = -(-len(ms) // ncols)
    fig, axes = plotting.new_figure(nrows, ncols, size=(4.4, 3.4))
    by = {c["column"]: c for c in result["columns"]}
    lat, noise = by["latents"]["metrics"], by["noise"]["metrics"]
    ks_all = sorted({0, *(c["k"] for c in result["columns"] if c["k"] is not None)})
    for ax, m in zip(axes.flat, ms):
        for i, method in enumerate(METHODS):
            pts = [(c["k"], c["metrics"][m]["mean"]) for c in result["columns"] if c["method"] == method]
            if pts:
                ks, vs = zip(*[(0, lat[m]["mean"]), *pts])
                ax.plot(ks, vs, marker=plotting.MARKERS[i], ls=plotting.LINESTYLES[i], ms=7 - 1.5 * i, lw=1.3,
                        alpha=0.85, mfc="none" if i else None, label=METHOD_LABELS[method])
        ax.plot([0], [lat[m]["mean"]], "s", color="tab:red", ms=9, mfc="none", label="latents (ø, K = 0)")
        ax.axhline(noise[m]["mean"], color="0.3", ls=":", lw=1.4, label="noise (ground-truth regeneration)")
        ax.set_xticks(ks_all)
        ax.set_xlabel(f"first K of T = {result['steps']} inversion steps replaced")
        ax.set_title(TITLES[m], fontsize=8.5)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(ms):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7.5, loc="best")
    sub = "; ".join(f"skipped {m}" for m in result["skipped"])
    fig.suptitle(plotting.run_title(f"edit diversity and text alignment vs replaced inversion steps (Fig. 7, Tab. 13)"
                                    f"{'; ' + sub if sub else ''}", result["model"], result["n"], result["steps"]),
                 fontsize=10)
    return plotting.save(fig, path)


def _display(images) -> np.ndarray:
    """(k, C, H, W) in [-1, 1] -> (k, H, W, 3) in [0, 1] (clipped, not stretched)."""
    x = np.asarray(images, np.float64)[:, :3]
    return np.clip((np.moveaxis(x, 1, -1) + 1.0) / 2.0, 0.0, 1.0)


def plot_examples(result: dict, path: str) -> str:
    """diversity_examples.png (Fig. 6): per example the source image and each column's edit (images read from the
    run folders)."""
    from jtaba.runs import open_run

    idx = [e["index"] for e in result["examples"]]
    panels = [("source", result["runs"]["source"])] + [(column_label(c, result["steps"]), c["target_run"])
                                                        for c in result["columns"]]
    fig, axes = plotting.new_figure(len(idx), len(panels), size=(1.55, 1.75))
    for j, (title, run_path) in enumerate(panels):
        images = _display(run_images(open_run(run_path))[np.asarray(idx)])
        for r in range(len(idx)):
            ax = axes[r, j]
            ax.imshow(images[r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title.replace(" (", "\n("), fontsize=7.5)
    for r, e in enumerate(result["examples"]):
        text = f"#{e['index']}: {e['source']} → {e['target']}"
        axes[r, 0].set_ylabel("\n".join(textwrap.wrap(text, 22)[:4]), fontsize=6.5)
    fig.suptitle(plotting.run_title("edits: source image, then each column regenerated with the target condition "
                                    "(Fig. 6)", result["model"], result["n"], result["steps"]), fontsize=9)
    return plotting.save(fig, path)


def write_outputs(result: dict, out: str) -> dict:
    """diversity.json, diversity.csv, diversity.png and diversity_examples.png in ``out``."""
    io.write_json(os.path.join(out, "diversity.json"), result)
    io.write_csv(os.path.join(out, "diversity.csv"), csv_rows(result))
    plot(result, os.path.join(out, "diversity.png"))
    plot_examples(result, os.path.join(out, "diversity_examples.png"))
    return result


ANALYSIS = cli.Analysis(
    name="diversity", paper_ref="Sec. 4.2, App. F.2, Tab. 7, Tab. 13, Fig. 6-7", options_class=Options,
    build_parser=build_parser, compute=compute, write_outputs=write_outputs, markdown=markdown,
    options_from_args=options_from_args, out_parts=out_parts, network_passes=network_passes, unavailable=unavailable,
    own_sizes=("n",), sizes_note="per K an inversion and per condition a sampling run of the edited generations",
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
