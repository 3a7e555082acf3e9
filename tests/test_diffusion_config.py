"""DiffusionConfig checks every value when built (a misspelt schedule is named at conversion time, not at load)."""
import pytest

from jtaba.diffusion import DiffusionConfig


@pytest.mark.parametrize("kw,needle", [
    (dict(kind="adm", beta_schedule="cosin"), "beta_schedule must be one of 'linear', 'cosine' for kind 'adm'"),
    (dict(kind="diffusers", beta_schedule="cosine"), "'squaredcos_cap_v2' for kind 'diffusers', got 'cosine'"),
    (dict(kind="ddim", beta_schedule="linear"), "kind must be one of 'adm', 'diffusers', got 'ddim'"),
    (dict(kind="diffusers", beta_schedule="linear", timestep_spacing="lead"), "timestep_spacing"),
    (dict(kind="diffusers", beta_schedule="linear", sample_clip="clamp"), "sample_clip"),
    (dict(kind="diffusers", beta_schedule="linear", schedule_dtype="bfloat16"), "schedule_dtype"),
    (dict(kind="adm", beta_schedule="linear", num_train_timesteps=0), "num_train_timesteps"),
    (dict(kind="adm", beta_schedule="linear", num_train_timesteps=10.5), "num_train_timesteps"),
    (dict(kind="diffusers", beta_schedule="linear", steps_offset=-1), "steps_offset"),
    (dict(kind="diffusers", beta_schedule="linear", beta_start=0.03), "beta_start <= beta_end"),
    (dict(kind="diffusers", beta_schedule="linear", beta_end=1.5), "beta_end < 1"),
    (dict(kind="diffusers", beta_schedule="linear", threshold_ratio=1.5), "threshold_ratio"),
    (dict(kind="diffusers", beta_schedule="linear", clip_range=0), "clip_range"),
    (dict(kind="adm", beta_schedule="linear", learned_sigma="yes"), "learned_sigma"),
])
def test_bad_values_are_named(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        DiffusionConfig(**kw)


def test_from_dict_checks_too():
    good = DiffusionConfig(kind="diffusers", beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    assert DiffusionConfig.from_dict(good.to_dict()) == good
    with pytest.raises(ValueError, match="beta_schedule"):
        DiffusionConfig.from_dict({**good.to_dict(), "beta_schedule": "squaredcos"})


def test_adm_flags():
    d = DiffusionConfig.from_adm_flags({"noise_schedule": "cosine", "diffusion_steps": 4000, "learn_sigma": True})
    assert (d.beta_schedule, d.num_train_timesteps, d.learned_sigma) == ("cosine", 4000, True)
    with pytest.raises(ValueError, match="'cosin'"):
        DiffusionConfig.from_adm_flags({"noise_schedule": "cosin"})
    with pytest.raises(ValueError, match="predict_xstart"):
        DiffusionConfig.from_adm_flags({"predict_xstart": True})
    with pytest.raises(ValueError, match="rescale_timesteps must be true or false"):
        DiffusionConfig.from_adm_flags({"rescale_timesteps": "False"})


@pytest.mark.parametrize("key,value", [("prediction_type", "v_prediction"), ("prediction_type", "sample"),
                                       ("trained_betas", [0.1, 0.2]), ("rescale_betas_zero_snr", True),
                                       ("beta_schedule", "sigmoid")])
def test_scheduler_options_that_change_the_step_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        DiffusionConfig.from_diffusers_scheduler({"beta_schedule": "linear", key: value}, learned_sigma=False)
    ok = DiffusionConfig.from_diffusers_scheduler({"prediction_type": "epsilon", "trained_betas": None},
                                                  learned_sigma=False)
    assert ok.kind == "diffusers"
