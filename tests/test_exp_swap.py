"""``python -m experiments.swap`` end to end on the tiny random ADM of test_exp_triangles: every number of swap.json /
swap.csv is recomputed from the runs' files with plain numpy (KL of upstream ``kl_div``, MAE, the patch correlation of
upstream ``correlation.py`` re-typed), and the replaced runs are checked against an independent re-derivation of
what they should compute: the ground truth taken at the mirror index of upstream ``ddim.py`` (ADM: ε of inversion
step i is sampling record T-2-i, the state after inversion step i is sampling record T-3-i), the ε swap re-typed in
numpy, forward replacement as q(x_K | x_0) with the run's forward noise, then the remaining model steps one by
one (``jtaba.engine.run_step``)."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from experiments import swap
from tests.test_exp_triangles import BATCH, SHAPE, STEPS, save_tiny_checkpoint

N, SEED, FSEED = 32, 7, 5
T = STEPS


# ---- independent numpy recomputation ----
def oracle_kl(noise, latents):
    """Upstream kl_div: 1-D Gaussians over all elements (unbiased std), P = noise, Q = latents."""
    a, b = np.asarray(noise, np.float64).ravel(), np.asarray(latents, np.float64).ravel()
    m1, s1, m2, s2 = a.mean(), a.std(ddof=1), b.mean(), b.std(ddof=1)
    return np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


def oracle_patch_corr(x, patch=8, top_k=20):
    """Upstream get_top_k_corr_in_patches: standardise, corrcoef over samples, strict upper triangle, |.|, top-k."""
    x = np.asarray(x, np.float64)
    n, _, h, w = x.shape
    vals = []
    for i in range(0, h, patch):
        for j in range(0, w, patch):
            p = x[:, :, i:i + patch, j:j + patch].reshape(n, -1)
            if p.shape[1] < 2:
                continue
            p = (p - p.mean(0)) / (p.std(0, ddof=1) + 1e-5)
            c = np.abs(np.corrcoef(p.T)[np.triu_indices(p.shape[1], k=1)])
            vals.append(np.sort(c)[-min(top_k, c.size):])
    v = np.concatenate(vals)
    return v.mean(), v.std(ddof=1)


def load(run_dir, name):
    return np.load(os.path.join(run_dir, f"{name}.npy"))


def check_row(row, run_dir):
    noise, latents, samples, samples2 = (load(run_dir, k) for k in ("noise", "latents", "samples", "samples2"))
    mean, std = oracle_patch_corr(latents)
    assert row["correlation"] == pytest.approx(mean, abs=1e-9)
    assert row["correlation_std"] == pytest.approx(std, abs=1e-9)
    assert row["kl"] == pytest.approx(oracle_kl(noise, latents), rel=1e-9, abs=1e-12)
    assert row["noise_error"] == pytest.approx(np.abs(noise.astype(np.float64) - latents).mean(), rel=1e-12)
    assert row["image_error"] == pytest.approx(np.abs(samples2.astype(np.float64) - samples).mean(), rel=1e-12)


# ---- independent re-derivation of the replaced inversions ----
class Stepper:
    """The remaining model steps of an inversion, one at a time, from any state (NCHW numpy in and out)."""

    def __init__(self, ckpt):
        import jtaba
        from jtaba import engine
        from jtaba.schedules import adm_spaced

        self.model = jtaba.load(ckpt)
        self.spec = engine.LoopSpec(network=self.model.network, diffusion=self.model.diffusion, steps=T, invert=True)
        self.run_step = engine.run_step
        a = adm_spaced(self.model.diffusion, T)[1]  # spaced ᾱ (float64), the levels of upstream ADM ddim
        self.a, self.a_next = a, np.concatenate([a[1:], [0.0]])

    def finish(self, x, start):
        """Inversion steps start..T-1 with the model from state x (at level a[start])."""
        import jax.numpy as jnp

        x = jnp.moveaxis(jnp.asarray(x, jnp.float32), 1, -1)
        for i in range(start, T):
            x = self.run_step(self.spec, self.model.params, x, i)[0]
        return np.asarray(jnp.moveaxis(x, -1, 1))

    def eps_step(self, x, i, eps):
        """Inversion step i with a given ε (swapped: no clipping), float64: a[i] -> a_next[i]."""
        x, eps = np.asarray(x, np.float64), np.asarray(eps, np.float64)
        x0 = np.sqrt(1 / self.a[i]) * x - np.sqrt(1 / self.a[i] - 1) * eps
        return np.sqrt(self.a_next[i]) * x0 + np.sqrt(1 - self.a_next[i]) * eps


@pytest.mark.slow
def test_swap_end_to_end(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    runs = str(tmp_path / "runs")
    argv = ["--ckpt", ckpt, "--n", str(N), "--steps", str(T), "--batch", str(BATCH), "--seed", str(SEED),
            "--k-list", "3,1,2", "--forward-seed", str(FSEED), "--runs-dir", runs]
    out = swap.main(argv + ["--out", str(tmp_path / "swap")])
    with open(os.path.join(out, "swap.json")) as f:
        res = json.load(f)
    assert res["k_list"] == [1, 2, 3] and res["steps"] == T and res["n"] == N and res["diffusion"] == "adm"

    # every number from the files
    std_dir, rec_dir = res["runs"]["standard"], res["runs"]["record"]
    check_row(res["plain"], std_dir)
    noise = load(std_dir, "noise")
    mean, std = oracle_patch_corr(noise)
    assert res["noise"]["correlation"] == pytest.approx(mean, abs=1e-9)
    assert res["noise"]["correlation_std"] == pytest.approx(std, abs=1e-9)
    assert res["noise"]["kl"] == 0 and res["noise"]["noise_error"] == 0 and res["noise"]["image_error"] is None
    done = {}
    for m in ("eps_swap", "xt_swap", "forward_exact"):
        rows = {r["k"]: r for r in res["methods"][m]["rows"]}
        assert sorted(rows) == [1, 2, 3]
        for k, r in rows.items():
            if "skipped" in r:
                continue
            check_row(r, r["run"])
            np.testing.assert_array_equal(load(r["run"], "noise"), noise)  # KL / noise error against the source noise
            done[m, k] = r["run"]
    # ADM: an ε or x_t swap mirrors at most T-1 steps; forward replacement of all T steps is allowed
    assert set(done) == {("eps_swap", 1), ("eps_swap", 2), ("xt_swap", 1), ("xt_swap", 2), ("forward_exact", 1),
                         ("forward_exact", 2), ("forward_exact", 3)}
    for m in ("eps_swap", "xt_swap"):
        (skipped,) = [r for r in res["methods"][m]["rows"] if "skipped" in r]
        assert skipped["k"] == 3 and "out of range" in skipped["skipped"]
        assert any(note.startswith(f"{m[:-5]} swap K=3 skipped") for note in res["notes"])
    # the forward levels coincide for ADM: one set of runs, reported twice
    assert res["forward_levels_coincide"] and res["methods"]["forward_upstream"]["same_as"] == "forward_exact"
    assert res["methods"]["forward_upstream"]["rows"] == res["methods"]["forward_exact"]["rows"]
    run_names = os.listdir(os.path.dirname(std_dir))
    assert not any("upstream" in d for d in run_names)
    assert len(run_names) == 2 + 4 + 3  # standard, record, 4 swaps, 3 forward

    # the replaced inversions took the ground truth of the recorded sampling run at the mirror index
    xs, eps = load(rec_dir, "all_t_samples"), load(rec_dir, "all_t_eps_samples")
    assert xs.shape == (T, N, *SHAPE)
    samples = load(rec_dir, "samples")
    np.testing.assert_array_equal(load(rec_dir, "noise"), noise)
    step = Stepper(ckpt)
    for k in (1, 2):
        for m in ("eps_swap", "xt_swap"):
            np.testing.assert_array_equal(load(done[m, k], "samples"), samples)
        # x_t swap: after K steps the state is sampling record T-2-K (record -1 = the sampling run's noise)
        gt = noise if T - 2 - k < 0 else xs[T - 2 - k]
        np.testing.assert_allclose(load(done["xt_swap", k], "latents"), step.finish(gt, k), atol=2e-5)
        # ε swap: steps i < K use sampling ε record T-2-i, re-typed in numpy
        x = samples
        for i in range(k):
            x = step.eps_step(x, i, eps[T - 2 - i])
        np.testing.assert_allclose(load(done["eps_swap", k], "latents"), step.finish(x, k), atol=2e-5)
        assert not np.allclose(load(done["eps_swap", k], "latents"), load(std_dir, "latents"), atol=1e-3)
    # forward replacement: q(x_K | x_0) at spaced level K with the forward noise of (forward seed, sample index)
    from jtaba.noise import noise_for_run

    fnoise = noise_for_run(FSEED, N, SHAPE, "forward").astype(np.float64)
    x0 = load(std_dir, "samples").astype(np.float64)
    for k in (1, 2, 3):
        level = step.a[k] if k < T else 0.0
        xk = np.sqrt(level) * x0 + np.sqrt(1 - level) * fnoise
        np.testing.assert_allclose(load(done["forward_exact", k], "latents"), step.finish(xk, k), atol=2e-5)

    # the CSV is the JSON in Tab. 9 layout
    with open(os.path.join(out, "swap.csv")) as f:
        table = list(csv.DictReader(f))
    assert [r["replaced"] for r in table] == ["none (plain DDIM)", "first 1", "first 2", "first 3", "noise"]
    for r in table[:4]:
        k = int(r["k"])
        assert float(r["percent"]) == pytest.approx(100 * k / T)
        for m in swap.METHODS:
            want = res["plain"] if k == 0 else next(x for x in res["methods"][m]["rows"] if x["k"] == k)
            for col in swap.COLUMNS:
                if "skipped" in want:
                    assert r[f"{m}_{col}"] == ""
                else:
                    assert float(r[f"{m}_{col}"]) == pytest.approx(want[col], rel=1e-12)
    assert float(table[-1]["eps_swap_correlation"]) == pytest.approx(res["noise"]["correlation"], rel=1e-12)
    assert table[-1]["eps_swap_image_error"] == ""

    md = swap.markdown(res)
    assert "forward (exact = upstream)" in md and md.count("\n|") == 6  # header rule + ø, K = 1, 2, 3, noise
    png = matplotlib.image.imread(os.path.join(out, "swap.png"))
    assert png.shape[0] > 300 and png.shape[1] > 1200 and png[..., :3].std() > 0.05  # drawn, not blank

    # the same command again reuses every run (no recomputation) and rewrites identical numbers
    mtimes = {d: os.path.getmtime(os.path.join(os.path.dirname(std_dir), d, "samples.npy")) for d in run_names}
    swap.main(argv + ["--batch", "8", "--out", out])
    assert {d: os.path.getmtime(os.path.join(os.path.dirname(std_dir), d, "samples.npy")) for d in run_names} == mtimes
    with open(os.path.join(out, "swap.json")) as f:
        assert json.load(f) == res


def test_parse_k_list():
    from jtaba.cli import parse_step_counts

    assert parse_step_counts("10, 2,2,1", "--k-list") == (1, 2, 10)
    assert parse_step_counts("none", "--x", allow_none=True) == () == parse_step_counts("", "--x", allow_none=True)
    for bad in ("0,1", "a", "", "none"):
        with pytest.raises(ValueError, match="--k-list"):
            parse_step_counts(bad, "--k-list")
    opts = swap.options_from_args(swap.build_parser().parse_args(["--k-list", "5,3"]))
    assert opts.k_list == (3, 5) and opts.n == swap.Options.n and opts.forward_seed == 42


def test_default_out_folder_names_k_list(tmp_path):
    from jtaba import cli

    args = swap.build_parser().parse_args(["--runs-dir", str(tmp_path), "--k-list", "2,1", "--forward-seed", "3"])
    out = cli.out_dir(args, "default", "swap", *swap.out_parts(swap.options_from_args(args)))
    assert out.endswith(os.path.join("default", "swap", f"T{swap.Options.steps}_n{swap.Options.n}_seed42_K1-2_fseed3"))
