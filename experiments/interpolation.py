"""SLERP interpolation between pairs of noises vs pairs of DDIM latents: FID / precision / recall of the decoded
interpolations (paper Sec. 4.1, Fig. 5, App. F.1 Tab. 12).

    python -m experiments.interpolation                          # the built-in default model, quick settings
    python -m experiments.interpolation --model=adm32 --n=10240 --steps=100 --reference=cifar10_train.npy
    python -m experiments.interpolation --forward-before=1,2,3,5 # Tab. 12: latents with the first K steps replaced
    python -m experiments.interpolation --model=dit --steps=50 --swap-steps=3 --forward-level=upstream \
        --fid-protocol=torch-fidelity --reference=train         # Tab. 12 as published (--paper sets these)

Two independent sets: A (seed --seed) and B (seed --seed-b, upstream 420), each sampled, inverted with DDIM and
reconstructed (``jtaba.runs``, reused when finished; class-conditional models: B and every interpolation use A's
class labels, as upstream's shared conds). Pairs (A[i], B[i]) are interpolated in three kinds of sources:
* "noise": the sets' initial noises;
* "latents": their DDIM latents ("latents_ddim");
* "latents_forward<K>": latents of an inversion of the same samples whose first K steps are replaced by forward
  diffusion q(x_K | x_0) (upstream "latents_ours", K = 2; forward seeds --forward-seed / --forward-seed-b for A / B,
  upstream 10 / 42), one source per K of --forward-before, at --forward-level "exact" (q(x_K | x_0) at the level
  the K-th inversion step reaches) or "upstream" (the diffusers forward level of the ICLR scripts; as exact for ADM);
* "latents_swap<K>": latents of an inversion whose first K noise predictions are replaced by the ground truth ε of
  a recorded sampling run of the same noise (the ε swap, ``RunSettings(swap_from=..., swap_type="eps")`` as
  ``experiments.swap``), one source per K of --swap-steps: Tab. 12 as published (the paper: K = 6 % of T for DiT).
For α in linspace(0, 1, --alphas) (upstream 0, 1/6, ..., 1: tags 0000, 0167, ..., 1000) the endpoints are the sets'
own images (the samples for "noise", the reconstructions samples2 for latent sources, as upstream), interior points
are SLERP(A[i], B[i], α) sampled with DDIM (decoded images for latent models). SLERP
(``jtaba.metrics.interpolation.slerp``): by default one SLERP per flattened sample (the intended version);
--upstream-slerp takes norms and angles along the last axis only, row by row (upstream's quirk, for parity with the
published numbers).

Per (source, α):
* FID, precision and recall of the N images against a reference set. --fid-protocol=pytorch-fid (default): FID
  Inception-v3 pool3 features for all three (``jtaba.metrics.inception``, pytorch-fid protocol: images clipped to
  [-1, 1], bilinear resize to 299, no uint8 rounding). --fid-protocol=torch-fidelity (the paper's, upstream
  ``eval_fids.py``): every generated image stretched to [0, 1] by its own min / max and truncated to uint8 as its PNG
  export (``jtaba.metrics.fid.upstream_export_uint8``), torch-fidelity's inception-v3-compat resize for FID and VGG16
  fc2_relu features for precision / recall (``jtaba.metrics.vgg16``; upstream called torch-fidelity with input1 =
  the reference, so its "precision" is the fraction of reference images inside the generated manifold and its
  "recall" the converse; the columns here are upstream's). FID: Fréchet distance of the Gaussian fits (for N < 2048
  computed exactly through an N x N SVD); precision / recall: improved P/R with k = 3
  (``jtaba.metrics.fid.precision_recall``). With the default protocol the numbers are comparable to the paper's in
  trend, not digit for digit. Reference: by default the model's own samples from independent noise
  (--reference-seed, --n-reference); the paper used the training data (CIFAR-10 train, the ImageNet and CelebA-HQ
  reference folders): --reference=train reads the model's training images through tensorflow-datasets (prepared
  beforehand; one line says how when they are not), --reference=FOLDER a folder of images, --reference=FILE.npy NCHW
  images in [-1, 1]. Without the converted Inception (and, for torch-fidelity, VGG16) checkpoint the metrics it
  serves are listed under "skipped" with the convert command, and the rest runs.
* statistics of the interpolated inputs (no weights): mean per-sample norm / sqrt(D) (1 on the Gaussian shell; SLERP
  between vectors of equal norm stays on their sphere, LERP would fall inside it), its sd, mean and sd of all
  elements and KL(N(0, 1) || N(mean, sd²)) (``jtaba.metrics.gaussian_kl``, one Gaussian over all elements as
  Tab. 9): whether the inputs the sampler gets look like its Gaussian noise; and the mean per-image pixel sd of the
  images (low for plain images, the paper's lower diversity).

Runs: A and B (3 passes over N samples each), per K two forward inversions + reconstructions (2 passes each), per
interior α and source one sampling run, and, when FID is scored without --reference, one reference sampling run. The
defaults (N = 64, T = 20, 7 α, K = 2: 25 passes of N x T, about 5 minutes on 2 CPU cores with the built-in model)
are sized for a quick look, not the paper's N = 10,240 (5,120), T = 100 (50 for DiT); with the Inception checkpoint,
its features of the 22 x N + N images (full-size Inception-v3 at 299 px) add several minutes on a CPU. FID of 64
samples is dominated by its small-sample bias: compare sources at equal N.

Writes into --out: interpolation.json (every number, run paths, skip notes), interpolation.csv (Tab. 12 / Fig. 5
numbers: one row per source and α with FID, precision, recall, input norm, KL, ...) and interpolation.png (Fig. 5: a
few pairs' images across α per source, and each metric against α per source).
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from matplotlib.figure import Figure

from jtaba import checks, cli, io, plotting
from jtaba.analyses.interpolation import (
    INCEPTION_METRICS,
    PR_K,
    as_images,
    image_pixel_std,
    input_statistics,
    interpolate,
    protocol_networks,
    scores,
    scoring_features,
)
from jtaba.runs import StandardOptions

FID_PROTOCOLS = ("pytorch-fid", "torch-fidelity")
NETWORK_NAMES = {"inception": "FID Inception", "vgg16": "VGG16"}
INPUT_METRICS = ("input_norm", "input_norm_std", "input_mean", "input_std", "input_kl")
METRIC_TITLES = {"fid": "FID (lower is better)", "precision": "precision (k = 3)", "recall": "recall (k = 3)",
                 "input_norm": r"input norm $\|x\| / \sqrt{D}$ (mean over pairs)",
                 "input_kl": r"KL$(\mathcal{N}(0,1)\,\|\,$inputs$)$", "image_pixel_std": "pixel sd of the images"}
PLOT_METRICS = ("fid", "precision", "recall", "input_norm", "input_kl", "image_pixel_std")


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    n: int = 64
    steps: int = 20
    seed_b: int = 420
    alphas: int = 7
    forward_before: tuple = (2,)
    forward_seed: int = 10
    forward_seed_b: int = 42
    upstream_slerp: bool = False
    reference: str | None = None
    reference_seed: int = 1
    n_reference: int | None = None
    pairs: int = 2
    swap_steps: tuple = ()
    forward_level: str = "exact"
    fid_protocol: str = "pytorch-fid"


def build_parser():
    p = cli.parser("python -m experiments.interpolation", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of pairs N (and images per α and source; 64 with T = 20: about 5 minutes "
                                  "on 2 CPU cores with the built-in model; the paper used 10,240 / 5,120 pairs and "
                                  "T = 100, FID-10k)")
    p.add_argument("--seed-b", type=int, default=Options.seed_b,
                   help="seed of the second set B (set A uses --seed; upstream sets: seeds 0 and 420)")
    p.add_argument("--alphas", type=int, default=Options.alphas,
                   help="number of α values, evenly spaced in [0, 1] (the paper: 7, α = 0, 1/6, ..., 1)")
    p.add_argument("--forward-before", default=",".join(map(str, Options.forward_before)),
                   help="K values (comma-separated): one source per K, latents whose first K inversion steps are "
                        "replaced by forward diffusion (upstream 'latents_ours': K = 2; Tab. 12: several K at "
                        "α = 0.5); 'none' for no such source")
    p.add_argument("--forward-level", choices=checks.FORWARD_LEVELS, default=Options.forward_level,
                   help="noise level of the forward replacement: exact (the level the K-th inversion step reaches) "
                        "or upstream (the diffusers level of the ICLR scripts, Tab. 12; as exact for ADM)")
    p.add_argument("--swap-steps", default="none",
                   help="K values (comma-separated): one source per K, latents whose first K inversion noise "
                        "predictions are replaced by the ground truth of a recorded sampling run (the ε swap of "
                        "Tab. 12 as published; the paper: K = 6 %% of T for DiT); 'none' for no such source")
    p.add_argument("--fid-protocol", choices=FID_PROTOCOLS, default=Options.fid_protocol,
                   help="pytorch-fid: images clipped to [-1, 1], Inception pool3 for FID and precision / recall; "
                        "torch-fidelity: the paper's (per-image min-max uint8 export, inception-v3-compat resize "
                        "for FID, VGG16 features for precision / recall)")
    p.add_argument("--forward-seed", type=int, default=Options.forward_seed,
                   help="seed of set A's forward-replacement noise (upstream 10)")
    p.add_argument("--forward-seed-b", type=int, default=Options.forward_seed_b,
                   help="seed of set B's forward-replacement noise (upstream 42)")
    p.add_argument("--upstream-slerp", action="store_true",
                   help="upstream's SLERP quirk: norms and angles along the last axis (image rows) instead of one "
                        "SLERP per flattened sample (parity with the published numbers)")
    add_reference_flags(p)
    p.add_argument("--pairs", type=int, default=Options.pairs, help="pairs shown per source in the figure")
    return p


def add_reference_flags(p) -> None:
    """--reference, --reference-seed, --n-reference: the reference set of the Tab. 12 scores (``reference_set``),
    shared by experiments.interpolation and experiments.inverters."""
    p.add_argument("--reference", metavar="train|FOLDER|FILE.npy", default=None,
                   help="reference images for FID / precision / recall: 'train' (the model's training images "
                        "through tensorflow-datasets, as the paper: CIFAR-10 train, ImageNet, CelebA-HQ), a folder "
                        "of images, or (M, 3, H, W) in [-1, 1] as .npy (default: the model's own samples from "
                        "--reference-seed)")
    p.add_argument("--reference-seed", type=int, default=Options.reference_seed,
                   help="seed of the model-sampled reference set (without --reference)")
    p.add_argument("--n-reference", type=int, default=None,
                   help="reference images (default: N model samples, or every image of --reference)")


def reference_option(args) -> str | None:
    """--reference as the options hold it ('train', an absolute path or None), after checking --n-reference and a
    .npy's images (``load_reference``): before any work."""
    if args.n_reference is not None and args.n_reference <= PR_K:
        raise ValueError(f"--n-reference must be above {PR_K}, got {args.n_reference}")
    if args.reference in (None, "train"):
        return args.reference
    path = os.path.abspath(args.reference)
    if not os.path.isdir(path):
        load_reference(path, args.n_reference)
    return path


def options_from_args(args) -> Options:
    ks = cli.parse_step_counts(args.forward_before, "--forward-before", allow_none=True)
    swap_ks = cli.parse_step_counts(args.swap_steps, "--swap-steps", allow_none=True)
    if swap_ks and swap_ks[-1] >= args.steps:
        raise ValueError(f"--swap-steps K={swap_ks[-1]} must be below --steps={args.steps}")
    if args.n <= PR_K:
        raise ValueError(f"--n must be above {PR_K} (precision / recall use the {PR_K}rd nearest neighbour)")
    if args.alphas < 2:
        raise ValueError(f"--alphas must be at least 2 (the endpoints), got {args.alphas}")
    if ks and ks[-1] > args.steps:
        raise ValueError(f"--forward-before K={ks[-1]} exceeds --steps={args.steps}")
    if args.pairs < 1:
        raise ValueError(f"--pairs must be positive, got {args.pairs}")
    return dataclasses.replace(cli.options_from_args(Options, args), forward_before=ks,
                               reference=reference_option(args), upstream_slerp=bool(args.upstream_slerp),
                               swap_steps=swap_ks)


def out_parts(opts: Options) -> tuple:
    """The analysis settings that differ from the defaults, for the default output folder name."""
    parts = cli.changed_parts(opts, [("seed_b", "seedb{}"), ("alphas", "a{}"), ("forward_seed", "fseed{}"),
                                     ("forward_seed_b", "fseedb{}"), ("upstream_slerp", "upslerp"),
                                     ("n_reference", "nref{}"), ("forward_level", "fwd-{}"),
                                     ("fid_protocol", "{}")])
    if opts.forward_before != Options.forward_before:
        parts.append("K" + ("-".join(map(str, opts.forward_before)) or "none"))
    if opts.swap_steps:
        parts.append("swap" + "-".join(map(str, opts.swap_steps)))
    if opts.reference:
        parts.append("ref-" + os.path.splitext(os.path.basename(opts.reference))[0])
    elif opts.reference_seed != Options.reference_seed:
        parts.append(f"refseed{opts.reference_seed}")
    return tuple(parts)


def alpha_values(count: int) -> list[float]:
    return np.linspace(0.0, 1.0, count).tolist()


def alpha_tag(alpha: float) -> str:
    """Upstream's directory tag: 0.1667 -> "0167"."""
    return f"{round(alpha * 1000):04d}"


def source_label(name: str, short: bool = False) -> str:
    if name == "noise":
        return "noise" if short else "noise $x_T$"
    if name == "latents":
        return "DDIM latents" if short else r"DDIM latents $\hat{x}_T$"
    if name.startswith("latents_swap"):
        k = name[len("latents_swap"):]
        return f"latents, K={k}\nε swap" if short else f"latents, first {k} inversion ε swapped (ground truth)"
    k = name[len("latents_forward"):]
    return f"latents, K={k}\nforward" if short else f"latents, first {k} inversion steps forward"


# ---- inputs and images -------------------------------------------------------------------------------------------
def image_name(run, name: str) -> str:
    """The file of a run's images: ``decoded_<name>`` for latent models, else ``name``."""
    return f"decoded_{name}" if f"decoded_{name}" in run else name


def load_reference(path: str, n: int | None):
    """The first ``n`` (default all) images of an (M, 3, H, W) .npy in [-1, 1] (memory-mapped); ValueError if not."""
    if not os.path.exists(path):
        raise ValueError(f"--reference {path} does not exist")
    x = np.load(path, mmap_mode="r")
    if x.ndim != 4 or x.shape[1] != 3 or x.dtype.kind not in "fiu":
        raise ValueError(f"--reference must hold (M, 3, H, W) images, got {x.dtype} {x.shape}")
    if n is not None and len(x) < n:
        raise ValueError(f"--reference holds {len(x)} images, fewer than --n-reference={n}")
    x = x[:n] if n is not None else x
    if len(x) <= PR_K:
        raise ValueError(f"--reference needs more than {PR_K} images, got {len(x)}")
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo < -1.01 or hi > 1.01:
        raise ValueError(f"--reference values must lie in [-1, 1] (NCHW images as the models write them), got "
                         f"[{lo:.3g}, {hi:.3g}]")
    return x


def scoring_networks(protocol: str, names: dict | None = None) -> tuple[dict | None, dict, dict]:
    """The perception networks of --fid-protocol ``protocol`` (``names``: {role: checkpoint} given instead of the
    converted default): ({role: loaded network} of those there, None when none is; {metric: why it is not scored};
    {role: convert command} of those not there). Shared by experiments.interpolation and experiments.inverters."""
    from jtaba.metrics import networks

    served, names = protocol_networks(protocol), names or {}
    absent = networks.missing(served, names)
    nets = {role: networks.load(role, names.get(role)) for role in served if role not in absent} or None
    skipped = {m: f"no {NETWORK_NAMES[role]} checkpoint; make it with: {command}"
               for role, command in absent.items() for m in served[role]}
    return nets, skipped, absent


def reference_set(ws, opts, size: int | None, nets: dict | None) -> tuple[dict | None, dict]:
    """The reference set of the Tab. 12 scores (experiments.interpolation and experiments.inverters): (its
    ``scoring_features`` under ``opts.fid_protocol``, None without ``nets``; its JSON description). ``opts``: the
    --reference flags (``add_reference_flags``), n, fid_protocol and run_settings. --reference=train or a folder:
    read at ``size`` (the side of the model's images) only when scored; a .npy (checked by ``reference_option``):
    memory-mapped; default: --n-reference (default N) model samples of --reference-seed, sampled only when scored."""
    from jtaba.data.reference import reference_images

    kw = {"ldm": ws.tag == "ldm"}  # upstream exported the CelebA-HQ LDM's images without the min-max stretch
    if opts.reference is None:
        description = {"kind": "model samples", "seed": opts.reference_seed, "n": opts.n_reference or opts.n}
        if nets is None:
            return None, description
        run = ws.run(opts.run_settings(n=description["n"], seed=opts.reference_seed, noise=None, samples=None,
                                       inversion=False, reconstruction=False), "reference")
        description.update(run=run.path, images=image_name(run, "samples"))
        return scoring_features(run[description["images"]], nets, opts.fid_protocol, **kw), description
    if opts.reference == "train" or os.path.isdir(opts.reference):  # the training images (tfds) or a folder
        description = {"kind": "images", "spec": opts.reference}
        if nets is None:
            return None, description
        images, name = reference_images(opts.reference, tag=ws.tag, size=size, n=opts.n_reference,
                                        train_extras=ws.model.extras.get("train"))
        description.update(name=name, n=len(images))
        return scoring_features(images, nets, opts.fid_protocol, uint8=True), description
    images = np.load(opts.reference, mmap_mode="r")[:opts.n_reference]  # checked by reference_option
    description = {"kind": "file", "path": opts.reference, "n": len(images)}
    return (None if nets is None else scoring_features(images, nets, opts.fid_protocol, **kw)), description


# ---- compute -----------------------------------------------------------------------------------------------------
def check_model(model, opts: Options) -> bool:
    """Whether the model takes class labels (the analysis draws them); a text-conditioned model needs
    --prompt-embeds (every run of sets A and B and every interpolant then shares those prompts)."""
    class_cond = model.num_classes is not None and model.conditional
    checks.check_conditioning(model, labels=class_cond, prompts=opts.prompt_embeds is not None, guided=False,
                              given_as="--prompt-embeds")
    return class_cond


def unavailable(ws, opts: Options) -> str | None:
    """Why the analysis cannot run on this model (a text-conditioned one), else None: ``experiments.reproduce``
    lists it as skipped."""
    try:
        check_model(ws.model, opts)
    except ValueError as e:
        return str(e)
    return None


def compute(ws, opts: Options) -> dict:
    """Sets A and B (sample, invert, reconstruct), forward-replaced inversions, the interior SLERP runs, then the
    metrics of every (source, α) against the reference."""
    class_cond = check_model(ws.model, opts)
    nets, skipped, _ = scoring_networks(opts.fid_protocol)

    run_a = ws.run(opts.run_settings())  # the standard run of these settings, shared with other analyses
    ref_features, reference = reference_set(ws, opts, run_a[image_name(run_a, "samples")].shape[-1], nets)
    labels = {"labels": run_a["conds"], "class_seed": None} if class_cond else {}  # B, interpolants: A's classes
    run_b = ws.run(opts.run_settings(seed=opts.seed_b, noise=None, samples=None, **labels), "set B")  # seed_b
    sets = {"a": (run_a, opts.seed, opts.forward_seed), "b": (run_b, opts.seed_b, opts.forward_seed_b)}
    forward = {k: {key: ws.run(opts.run_settings(seed=seed, samples=r["samples"], forward_before=k, forward_seed=fs,
                                                 forward_level=opts.forward_level, **labels),
                               f"set {key} forward K={k}")
                   for key, (r, seed, fs) in sets.items()} for k in opts.forward_before}
    swap, records = {}, {}
    if opts.swap_steps:  # the ground truth: every sampling step of each set's noise, then the ε-swapped inversions
        set_kw = {"a": {}, "b": {"seed": opts.seed_b, "noise": None, "samples": None, **labels}}
        records = {key: ws.run(opts.run_settings(record=True, inversion=False, reconstruction=False, **kw))
                   for key, kw in set_kw.items()}
        swap = {k: {key: ws.run(opts.run_settings(swap_from=records[key], swap_before=k, swap_type="eps", **kw))
                    for key, kw in set_kw.items()} for k in opts.swap_steps}
    # (inputs field, endpoint image file, runs of A and B) per source
    sources = {"noise": ("noise", "samples", run_a, run_b),
               "latents": ("latents", "samples2", run_a, run_b),
               **{f"latents_forward{k}": ("latents", "samples2", f["a"], f["b"]) for k, f in forward.items()},
               **{f"latents_swap{k}": ("latents", "samples2", r["a"], r["b"]) for k, r in swap.items()}}
    alphas = alpha_values(opts.alphas)
    rows = []
    for source, (field, endpoint, ra, rb) in sources.items():
        for i, alpha in enumerate(alphas):
            if i in (0, len(alphas) - 1):
                run = ra if i == 0 else rb
                inputs, name = run[field], image_name(run, endpoint)
            else:
                inputs = interpolate(ra[field], rb[field], alpha, opts.upstream_slerp)
                run = ws.run(opts.run_settings(noise=inputs, inversion=False, reconstruction=False, **labels),
                             f"{source} α={alpha:.2f}")
                name = image_name(run, "samples")
            rows.append({"source": source, "k": forward_k(source), "alpha": alpha,
                         "tag": alpha_tag(alpha), "run": run.path, "images": name, **input_statistics(inputs).to_json(),
                         "image_pixel_std": image_pixel_std(run[name])})

    runs = {"a": run_a.path, "b": run_b.path, "forward": {str(k): {s: r.path for s, r in f.items()}
                                                          for k, f in forward.items()},
            **({"records": {s: r.path for s, r in records.items()},
                "swap": {str(k): {s: r.path for s, r in f.items()} for k, f in swap.items()}} if swap else {})}
    if "run" in reference:
        runs["reference"] = reference["run"]
    if nets is not None:
        from jtaba.runs import open_run

        kw = {"ldm": ws.tag == "ldm"}  # upstream exported the CelebA-HQ LDM's images without the min-max stretch
        for row in rows:
            images = open_run(row["run"])[row["images"]]
            row.update(scores(ref_features, scoring_features(images, nets, opts.fid_protocol, **kw),
                              opts.fid_protocol).to_json())
    for row in rows:
        for m in (*INCEPTION_METRICS, "f_score"):
            row.setdefault(m, None)
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "seed_b": opts.seed_b, "alphas": alphas, "forward_before": list(opts.forward_before),
            "forward_level": opts.forward_level, "swap_steps": list(opts.swap_steps), "fid_protocol": opts.fid_protocol,
            "forward_seeds": {"a": opts.forward_seed, "b": opts.forward_seed_b},
            "slerp": "upstream_last_axis" if opts.upstream_slerp else "per_sample", "sources": list(sources),
            "class_conditional": class_cond, "reference": reference, "runs": runs, "rows": rows, "skipped": skipped,
            "pairs": opts.pairs}


def forward_k(source: str):
    """Inversion steps replaced: None for "noise", 0 for "latents", K for "latents_forward<K>" / "latents_swap<K>"."""
    if source == "noise":
        return None
    for prefix in ("latents_forward", "latents_swap"):
        if source.startswith(prefix):
            return int(source[len(prefix):])
    return 0


def network_passes(ws, opts: Options) -> int:
    """N x T network passes: A and B (3 each), 2 per set and K (forward or swap), with swap sources one recorded
    sampling per set, one per interior α and source, the reference (when sampled: scored and no --reference)."""
    from jtaba.metrics import networks

    k = len(opts.forward_before) + len(opts.swap_steps)
    records = 2 if opts.swap_steps else 0
    served = protocol_networks(opts.fid_protocol)
    sampled = not opts.reference and len(networks.missing(served)) < len(served)
    reference = math.ceil((opts.n_reference or opts.n) / opts.n) if sampled else 0
    return 6 + 4 * k + records + max(opts.alphas - 2, 0) * (2 + k) + reference


# ---- outputs -----------------------------------------------------------------------------------------------------
CSV_METRICS = ("fid", "precision", "recall", "f_score", *INPUT_METRICS, "image_pixel_std")


def csv_rows(result: dict) -> list[dict]:
    """Fig. 5 / Tab. 12 numbers: one row per source and α."""
    head = {"model": result["model"], "n": result["n"], "steps": result["steps"], "seed": result["seed"],
            "seed_b": result["seed_b"], "slerp": result["slerp"]}
    return [{**head, "source": r["source"], "replaced_k": r["k"], "alpha": r["alpha"], "alpha_tag": r["tag"],
             **{m: r[m] for m in CSV_METRICS}, "images": os.path.join(r["run"], r["images"] + ".npy")}
            for r in result["rows"]]


def _series(result: dict, source: str, metric: str):
    rows = [r for r in result["rows"] if r["source"] == source]
    return [r["alpha"] for r in rows], [r[metric] for r in rows]


def _display(images) -> np.ndarray:
    """(k, C, H, W) in [-1, 1] -> (k, H, W, 3) in [0, 1] (no per-image stretch)."""
    x = as_images(images).astype(np.float64)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return (np.moveaxis(x[:, :3], 1, -1) + 1.0) / 2.0


def plot(result: dict, path: str) -> str:
    """interpolation.png: left, ``pairs`` pairs per source (rows) across α (columns), read from the run files;
    right, each metric against α, one line per source (skipped metrics left out)."""
    from jtaba.runs import open_run

    sources, alphas = result["sources"], result["alphas"]
    pairs = min(result["pairs"], result["n"])
    metrics = [m for m in PLOT_METRICS if m not in result["skipped"]]
    grid_rows = len(sources) * pairs
    panel_rows = math.ceil(len(metrics) / 2)
    cell = 0.95
    height = max(grid_rows * cell, panel_rows * 3.2) + 1.2
    fig = Figure(figsize=(len(alphas) * cell + 10.5, height))
    outer = fig.add_gridspec(1, 2, width_ratios=[len(alphas) * cell, 10.0], wspace=0.12)
    grid = outer[0].subgridspec(grid_rows, len(alphas), wspace=0.05, hspace=0.08)
    for s, source in enumerate(sources):
        rows = [r for r in result["rows"] if r["source"] == source]
        for c, row in enumerate(rows):
            images = _display(open_run(row["run"])[row["images"]][:pairs])
            for p in range(pairs):
                ax = fig.add_subplot(grid[s * pairs + p, c])
                ax.imshow(images[p], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if s == 0 and p == 0:
                    ax.set_title(f"α = {row['alpha']:.3g}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(f"{source_label(source, short=True)}\npair {p}", fontsize=7)
    panels = outer[1].subgridspec(panel_rows, 2, wspace=0.3, hspace=0.45)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(panels[i // 2, i % 2])
        if metric == "input_norm":
            legend_ax = ax
        for j, source in enumerate(sources):
            xs, ys = _series(result, source, metric)
            ax.plot(xs, ys, marker=plotting.MARKERS[j % len(plotting.MARKERS)],
                    ls=plotting.LINESTYLES[j % len(plotting.LINESTYLES)], ms=7 - 1.2 * (j % 4), lw=1.3, alpha=0.85,
                    mfc="none" if j % 2 else None, label=source_label(source))
        if metric == "input_norm":
            ax.axhline(1.0, color="0.4", ls=":", lw=1, label="Gaussian shell (1)")
        ax.set_xlabel("α (0: set A, 1: set B)")
        ax.set_title(METRIC_TITLES[metric], fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = legend_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", ncol=len(labels), fontsize=8, frameon=False)
    what = "SLERP interpolation, noise vs latents (Fig. 5, Tab. 12)"
    if result["skipped"]:
        what += f"; {' / '.join(result['skipped'])} skipped: no checkpoint"
    else:
        what += f"; reference: {reference_text(result['reference'])}"
    fig.suptitle(plotting.run_title(what, result["model"], result["n"], result["steps"]), fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.9 / height, bottom=0.9 / height)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def reference_text(ref: dict) -> str:
    if ref["kind"] == "file":
        return f"{os.path.basename(ref['path'])} ({ref['n']} images)"
    if ref["kind"] == "images":
        return f"{ref['name']} ({ref['n']} images)" if "name" in ref else f"{ref['spec']} (not read)"
    return f"{ref['n']} model samples (seed {ref['seed']})"


def _fmt(v, spec=".4g"):
    return "–" if v is None else format(v, spec)


def middle_alpha(result: dict) -> float:
    return min(result["alphas"], key=lambda a: abs(a - 0.5))


def markdown(result: dict) -> str:
    """Fig. 5 numbers (every source and α) and Tab. 12 (rows: replaced K, at the α nearest 0.5) as markdown."""
    cols = ("fid", "precision", "recall", "input_norm", "input_kl", "image_pixel_std")
    names = {"fid": "FID", "precision": "Precision", "recall": "Recall", "input_norm": "input norm",
             "input_kl": "input KL", "image_pixel_std": "pixel sd"}
    lines = ["| source | α | " + " | ".join(names[c] for c in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in result["rows"]:
        lines.append(f"| {r['source']} | {r['alpha']:.3f} | " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    mid = middle_alpha(result)
    by = {r["source"]: r for r in result["rows"] if r["alpha"] == mid}
    T = result["steps"]
    tab = [f"Tab. 12 (SLERP at α = {mid:.3g}):", "",
           "| inversion predictions replaced (K) | FID | Precision | Recall | input norm | input KL |",
           "|---|---|---|---|---|---|"]
    order = ["latents", *(f"latents_swap{k}" for k in result.get("swap_steps", ())),
             *(f"latents_forward{k}" for k in result["forward_before"]), "noise"]
    for s in order:
        r = by[s]
        how = "ε swap" if s.startswith("latents_swap") else f"forward ({result.get('forward_level', 'exact')})"
        label = ("ø (0)" if s == "latents" else "Noise" if s == "noise"
                 else f"{r['k']} ({100 * r['k'] / T:.0f} %), {how}")
        tab.append(f"| {label} | " + " | ".join(_fmt(r[c]) for c in ("fid", "precision", "recall", "input_norm",
                                                                       "input_kl")) + " |")
    foot = [(f"{result['model']}, N = {result['n']} pairs, T = {T}, SLERP {result['slerp']}, "
             f"{result.get('fid_protocol', 'pytorch-fid')} protocol, reference: {reference_text(result['reference'])}"
             + ("; – : skipped (below)." if result["skipped"] else "."))]
    reasons = {}
    for m, why in result["skipped"].items():
        reasons.setdefault(why, []).append(m)
    foot += [f"skipped {', '.join(ms)}: {why}" for why, ms in reasons.items()]
    foot.append("Columns: source = what was interpolated (the noise, the DDIM latents, or latents whose first K "
                "inversion steps were replaced); α = the SLERP weight of the pair's second end; FID, Precision and "
                "Recall (k = 3) of the generated images against the reference; input norm = mean over pairs of "
                "||x|| / sqrt(D) of the interpolated inputs; input KL = KL(N(0, 1) || the Gaussian fitted to all "
                "input elements); pixel sd = mean per-image pixel standard deviation of the generated images.")
    return "\n".join(lines + [""] + tab + [""] + ["\n\n".join(foot)])


def write_outputs(result: dict, out: str) -> dict:
    """interpolation.json, interpolation.csv and interpolation.png in ``out``."""
    io.write_json(os.path.join(out, "interpolation.json"), result)
    io.write_csv(os.path.join(out, "interpolation.csv"), csv_rows(result))
    plot(result, os.path.join(out, "interpolation.png"))
    return result


ANALYSIS = cli.Analysis(
    name="interpolation", paper_ref="Sec. 4.1, App. F.1, Tab. 12, Fig. 5", options_class=Options,
    build_parser=build_parser, compute=compute, write_outputs=write_outputs, markdown=markdown,
    options_from_args=options_from_args, out_parts=out_parts, network_passes=network_passes, unavailable=unavailable,
    own_sizes=("n", "steps"), sizes_note="every interpolant at every alpha is sampled; sized for a CPU",
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
