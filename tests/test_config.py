"""The Hydra configs compose as documented, and bad values are refused before any work."""

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nst.cli.nst_app import CONFIG_DIR
from nst.engine.optimization import INIT_MODES
from nst.errors import ConfigError
from nst.jobs.config import layer_weights, optimizer_settings, parse, validate

BASE = ["content=tubingen", "style=starry_night"]


def make(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[*BASE, *overrides])


def test_defaults_are_gatys():
    cfg = make()
    validate(cfg)
    assert cfg.model.name == "auto" and cfg.optimizer.name == "lbfgs"
    assert list(cfg.loss.content_layers) == ["conv4_2"]
    assert list(cfg.loss.style_layers) == ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
    assert cfg.loss.content_weight == 1.0 and cfg.loss.normalization == "reference"
    assert cfg.loss.tv_weight == 10.0  # nst's default against pixel noise; the seed's experiments set 0
    weights = layer_weights(cfg, "loss.style_layers", "loss.style_layer_weights",
                            {"conv1_1": 64, "conv2_1": 128, "conv3_1": 256, "conv4_1": 512, "conv5_1": 512})
    assert list(weights.values()) == pytest.approx([1e3 / n**2 for n in (64, 128, 256, 512, 512)])
    assert layer_weights(cfg, "loss.content_layers", "loss.content_layer_weights") == {"conv4_2": 1.0}


def test_seed_presentation_experiment():
    cfg = make("experiment=seed_presentation")
    validate(cfg)
    assert cfg.optimizer.name == "lbfgs"
    assert cfg.optimizer.lr == 0.2
    assert cfg.epochs == 200
    assert cfg.loss.style_weight == 100.0 and cfg.loss.content_weight == 1.0
    assert cfg.loss.tv_weight == 0.0  # the seed's loss has no TV term


def test_the_ratio_sweep_has_no_tv_term():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*BASE, "sweep=ratio"], return_hydra_config=True)
    assert cfg.loss.tv_weight == 0.0 and cfg.loss.content_weight == 1.0
    assert str(cfg.hydra.sweeper.params["loss.style_weight"]) == "1e-2,1e-1,1,10,100,1e4"


def test_experiment_values_stay_overridable():
    cfg = make("experiment=seed_presentation", "epochs=3", "optimizer.lr=0.5")
    assert cfg.epochs == 3 and cfg.optimizer.lr == 0.5


def test_every_config_group_option_composes_and_validates():
    root = Path(CONFIG_DIR)
    for group in ("model", "optimizer", "loss", "image", "experiment"):
        for option in sorted((root / group).glob("*.yaml")):
            cfg = make(f"{group}={option.stem}")
            if group == "experiment" and "style:" in option.read_text():
                with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):  # its own images
                    cfg = compose("config", overrides=[f"{group}={option.stem}"])
            validate(cfg)
            if group == "model":
                assert cfg.model.name == option.stem


@pytest.mark.parametrize("init", INIT_MODES)
def test_every_init_mode_reaches_the_run_spec(init):
    assert parse(make(f"init={init}")).member.init == init


def test_adam_config_builds_adam():
    settings = optimizer_settings(make("optimizer=adam", "optimizer.lr=0.1"))
    assert settings.name == "adam" and settings.lr == 0.1 and settings.space == "pixel"


def test_shell_overrides_reach_every_section():
    cfg = make("model=random", "model.pooling=avg", "image.size=48", "image.style_scale=0.5",
               "loss.style_weight=1e4", "loss.style_layers=[conv1_1,conv2_1]",
               "loss.style_layer_weights=[1,2]", "init=noise", "seed=7", "device=cpu")
    validate(cfg)
    assert cfg.model.pooling == "avg" and cfg.image.size == 48 and cfg.loss.style_weight == 1e4
    assert layer_weights(cfg, "loss.style_layers", "loss.style_layer_weights") == {"conv1_1": 1.0,
                                                                                   "conv2_1": 2.0}


@pytest.mark.parametrize("override, key", [
    ("loss.style_weight=-1", "loss.style_weight"),
    ("loss.content_weight=nan", "loss.content_weight"),
    ("loss.tv_weight=inf", "loss.tv_weight"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("epochs=0", "epochs"),
    ("epochs=2.5", "epochs"),
    ("optimizer.name=sgd", "optimizer.name"),
    ("optimizer.space=latent", "optimizer.space"),
    ("model.name=resnet", "model.name"),
    ("model.pooling=min", "model.pooling"),
    ("device=tpu", "device"),
    ("init=zeros", "init"),
    ("loss.normalization=l1", "loss.normalization"),
    ("loss.style_layers=[]", "loss.style_layers"),
    ("loss.style_layer_weights=[1,2]", "loss.style_layer_weights"),
    ("loss.style_layer_weights=[1,1,1,1,-1]", "loss.style_layer_weights"),
    ("loss.content_layers=[conv4_2,conv4_2]", "loss.content_layers"),
    ("image.size=8", "image.size"),
    ("image.style_scale=0", "image.style_scale"),
    ("model.precision=fp16", "model.precision"),
    ("model.precision=bf16", "optimizer.line_search"),  # bf16 noise defeats the line search
    ("optimizer.max_eval=0", "optimizer.max_eval"),
    ("optimizer.max_eval=1", "optimizer.max_eval"),  # the line search would get no trial
    ("model.calibration=ratio", "model.calibration"),
])
def test_bad_values_name_key_and_what_is_allowed(override, key):
    cfg = make(override)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"{key}=") and "not allowed" in message


def test_bf16_runs_with_a_fixed_step_or_adam():
    validate(make("model.precision=bf16", "optimizer.line_search=null"))
    validate(make("model.precision=bf16", "optimizer=adam"))


def test_missing_content_is_reported():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["style=starry_night"])
    with pytest.raises(ConfigError, match="content=<path|name>"):
        validate(cfg)


def test_resolved_config_round_trips_to_yaml():
    cfg = make()
    text = OmegaConf.to_yaml(cfg, resolve=True)
    assert "conv4_2" in text and not math.isnan(OmegaConf.create(text).loss.style_weight)


def test_cluster_launchers_and_tracking_server_compose(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        ray = compose("config", overrides=[*BASE, "hydra/launcher=ray", "tracking=server"], return_hydra_config=True)
        slurm = compose("config", overrides=[*BASE, "hydra/launcher=slurm"], return_hydra_config=True)
    assert ray.hydra.launcher._target_ == "hydra_plugins.nst_launcher.RayLauncher"
    assert ray.hydra.launcher.ray.init.object_store_memory is None  # Ray refuses it for an existing cluster
    assert ray.hydra.launcher.ray.remote.num_cpus == 1 and ray.hydra.launcher.ray.remote.max_retries == 2
    assert ray.tracking.uri == "http://tracking.example:5000" and ray.tracking.enabled
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.cpus_per_task == 4 and slurm.hydra.launcher.timeout_min == 120


def test_ray_workers_get_nst_variables_and_an_absolute_output_folder(monkeypatch, tmp_path):
    from nst.jobs.launcher import ray_environment

    monkeypatch.setenv("NST_ASSETS_DIR", "/data/assets")
    monkeypatch.delenv("NST_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    environment = ray_environment(OmegaConf.create({"paths": {"output_dir": "outputs"}}))
    assert environment["NST_ASSETS_DIR"] == "/data/assets" and "NST_OFFLINE" not in environment
    assert environment["NST_OUTPUT_DIR"] == str(tmp_path / "outputs")
