"""The authors' arrays as a jtaba run: upstream's output folder (luk-st/taba ``run_*_sampling.py``) -> a run folder
every analysis and ``--swap-from`` work on.

    python -m experiments.import_run --model=adm64 --from=experiments/imagenet_64/sampling_invert_reconstruction/RUN \\
        --steps=100 --seed=420
    python -m experiments.triangles --model=adm64 --noise=runs/adm64/sample_invert/imported_RUN/noise.npy \\
        --n=10240 --steps=100 --seed=420          # finds the imported run: the authors' samples and latents

Reads noise, samples, latents, samples2, conds (DiT), all_t_* and the decoded samples (LDM samples_decoded, DiT
decoded_samples) as ``.pt`` (through torch, when it is installed) or ``.npy`` files; noise and samples are required.
The run's identity is the one jtaba gives the same run computed from that noise (and conds / prompt embeddings), plus
``imported`` (the files, the digests of the computed arrays): an analysis given ``--noise RUN/noise.npy`` with the
same N, T and seed (DiT: and ``--labels RUN/conds.npy``; IF: the same ``--prompt-embeds``) uses it instead of
computing one. Wrong shapes, a missing file or arrays of another model are refused in one line.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from jtaba import cli


def build_parser():
    p = cli.parser("python -m experiments.import_run", __doc__)
    cli.add_model_flags(p)
    p.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="upstream's output folder (the .pt or .npy files of one sampling / inversion run)")
    p.add_argument("--out", default=None,
                   help="run folder to write (default: <runs-dir>/<model>/sample_invert/imported_<DIR name>)")
    p.add_argument("--runs-dir", default="runs", help="where the analyses look runs up (--runs-dir of the analyses)")
    p.add_argument("--steps", type=int, default=None,
                   help="DDIM steps T of the upstream run (default: the length of its all_t_* files)")
    p.add_argument("--seed", type=int, default=42,
                   help="the seed recorded in the run's identity: analyses asked with this --seed find it (upstream "
                        "paper runs: 420)")
    p.add_argument("--prompt-embeds", metavar="FILE.npy",
                     help="text-conditioned models (IF): the prompt embeddings (N, L, D) of the run's prompts "
                          "(prompts.pkl), made by `python convert/if.py --prompts FILE`")
    p.add_argument("--schedule-dtype", choices=("float32", "float16"), default=None,
                   help="diffusers models: recorded as the run's scheduler arithmetic (upstream DiT / IF: float16)")
    return p


def read_upstream(folder: str) -> dict[str, np.ndarray]:
    """The run arrays of ``folder`` by upstream name: ``.npy`` memory-mapped, ``.pt`` through torch (CPU)."""
    from jtaba.runs.importer import KNOWN, RENAMED

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--from {folder}: no such folder")
    wanted = {*KNOWN, *RENAMED}
    arrays = {}
    for f in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(f)
        if stem not in wanted or ext not in (".pt", ".npy"):
            continue
        path = os.path.join(folder, f)
        if ext == ".npy":
            arrays[stem] = np.load(path, mmap_mode="r")
            continue
        try:
            import torch
        except ImportError:
            raise ValueError(f"{path}: reading .pt files needs torch (pip install torch), or save them as .npy "
                             f"(np.save(name + '.npy', torch.load(path).numpy()))") from None
        t = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{path} holds a {type(t).__name__}, not a tensor")
        arrays[stem] = (t.float() if t.is_floating_point() else t).numpy()
    return {RENAMED.get(k, k): a for k, a in arrays.items()}


@cli.entry_point
def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from jtaba.runs import import_run
    from jtaba.runs.settings import input_array

    model, tag = cli.load_model(args)
    source = os.path.abspath(args.source)
    out = args.out or os.path.join(args.runs_dir, tag, "sample_invert",
                                   f"imported_{os.path.basename(source.rstrip(os.sep))}")
    run = import_run(model, read_upstream(source), out, steps=args.steps, seed=args.seed,
                     prompt_embeds=input_array(args.prompt_embeds, "--prompt-embeds"),
                     schedule_dtype=args.schedule_dtype,
                     command=["python -m experiments.import_run", *argv])
    print(f"wrote {run.path} ({run.n} samples, T = {run.steps}: {', '.join(run.names)}); analyses use it with "
          f"--noise {os.path.join(run.path, 'noise.npy')} --n {run.n} --steps {run.steps} --seed {args.seed}"
          + (f" --labels {os.path.join(run.path, 'conds.npy')}" if "conds" in run else ""))
    return run.path


if __name__ == "__main__":
    main()
