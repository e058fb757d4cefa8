"""The one reading of a composed config (nst/jobs/config.py): the configs compose as documented, bad values
are refused before any work, the launch settings are typed, and parse builds the RunSpec."""

import csv
import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from nst.cli.nst_app import CONFIG_DIR
from nst.engine.devices import resolve_device
from nst.engine.optimization import INIT_MODES
from nst.errors import ConfigError
from nst.jobs.config import (
    check_launch,
    layer_weights,
    optimizer_settings,
    parse,
    tracking_spec,
    validate,
)
from nst.tracking import tags
from tests.helpers.cli import left_nothing, refused, single_run
from tests.helpers.config import make, prepare
from tests.helpers.overrides import ENGINE_48, PAIR, QUICK, QUICK_UNTRACKED, SCALES_64, SWEEP_JOB
from tests.helpers.store import runs, store_client


def test_defaults_are_gatys(default_config):
    cfg = default_config
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
        cfg = compose("config", overrides=[*PAIR, "sweep=ratio"], return_hydra_config=True)
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


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_the_convergence_test_is_on_by_default_and_null_turns_it_off(optimizer):
    default = optimizer_settings(make(f"optimizer={optimizer}"))
    assert (default.convergence_tolerance, default.convergence_window) == (1e-2, 50)
    off = optimizer_settings(make(f"optimizer={optimizer}", "optimizer.convergence_tolerance=null"))
    assert off.convergence_tolerance is None
    tuned = optimizer_settings(make(f"optimizer={optimizer}", "optimizer.convergence_tolerance=0.05",
                                    "optimizer.convergence_window=20"))
    assert (tuned.convergence_tolerance, tuned.convergence_window) == (0.05, 20)


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


def test_resolved_config_round_trips_to_yaml(default_config):
    cfg = default_config
    text = OmegaConf.to_yaml(cfg, resolve=True)
    assert "conv4_2" in text and not math.isnan(OmegaConf.create(text).loss.style_weight)


def test_cluster_launchers_and_tracking_server_compose(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        ray = compose("config", overrides=[*PAIR, "hydra/launcher=ray", "tracking=server"], return_hydra_config=True)
        slurm = compose("config", overrides=[*PAIR, "hydra/launcher=slurm"], return_hydra_config=True)
    assert ray.hydra.launcher._target_ == "hydra_plugins.nst_launcher.RayLauncher"
    assert ray.hydra.launcher.ray.init.object_store_memory is None  # Ray refuses it for an existing cluster
    assert ray.hydra.launcher.ray.remote.num_cpus == 1 and ray.hydra.launcher.ray.remote.max_retries == 2
    assert ray.tracking.uri == "http://tracking.example:5000" and ray.tracking.enabled
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.cpus_per_task == 4 and slurm.hydra.launcher.timeout_min == 120


def test_the_config_switches_graphs_on_and_refuses_other_values(default_config):
    assert parse(default_config).shared.cuda_graphs is False  # off by default: see conf/config.yaml
    assert parse(make("model.cuda_graphs=true")).shared.cuda_graphs is True
    with pytest.raises(ConfigError) as info:
        parse(make("model.cuda_graphs=sometimes"))
    assert info.value.key == "model.cuda_graphs"


@pytest.mark.parametrize("override, key", [
    ("image.scales=[64,32]", "image.scales"),
    ("image.scales=[32,48]", "image.scales"),  # must end at image.size
    ("image.scales=[8,64]", "image.scales"),
    ("image.scale_epochs=[1,2,3]", "image.scale_epochs"),
])
def test_bad_schedules_name_the_key(override, key):
    extra = [] if override.startswith("image.scales") else ["image.scales=[32,64]"]
    with pytest.raises(ConfigError) as info:
        validate(make(*SCALES_64, override, *extra))
    assert info.value.key == key


def test_auto_scales_take_no_epochs_list():
    with pytest.raises(ConfigError) as info:
        validate(make(*SCALES_64, "image.scales=auto", "image.scale_epochs=[1,2]"))
    assert info.value.key == "image.scale_epochs" and "auto" in str(info.value)


def test_style_blend_is_checked_before_any_work():
    with pytest.raises(ConfigError, match="style_blend"):
        prepare(make(*ENGINE_48, "style=[starry_night,the_scream]", "style_blend=[1]"))
    with pytest.raises(ConfigError, match="style_blend"):
        prepare(make(*ENGINE_48, "style=[starry_night,the_scream]", "style_blend=[1,-1]"))
    with pytest.raises(ConfigError, match="color_preservation"):
        prepare(make(*ENGINE_48, "color_preservation=sepia"))
    with pytest.raises(ConfigError, match="color_histogram"):
        prepare(make(*ENGINE_48, "color_histogram=lab"))


CONTROLS = ["color_luminance", "color_histogram", "style_blend", "style_scale", "coarse_to_fine", "masks"]


@pytest.mark.parametrize("name", CONTROLS)
def test_each_control_experiment_composes_and_prepares(name):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):  # content and style from the experiment
        # 181 px: coarse_to_fine's automatic scales are 128 and 181 px
        inputs = prepare(compose("config", overrides=[f"experiment={name}", *ENGINE_48, "image.size=181"]))
    cfg = inputs.spec.shared
    assert (cfg.color_preservation != "none") == name.startswith("color_")
    assert (len(inputs.styles) == 2) == (name in ("style_blend", "masks"))
    assert (inputs.masks is not None) == (name == "masks")
    assert cfg.content == "tubingen"
    assert cfg.scales == ((128, 181) if name == "coarse_to_fine" else (181,))


@pytest.mark.timeout(900)
@pytest.mark.slow  # 20-60 s: make test stays under 10 minutes on 2 cores
def test_controls_sweep_makes_a_gallery(tmp_path, nst):
    out = tmp_path / "outputs"
    done = nst(out, "sweep=controls", "model=random", "image.size=160", "epochs=1", "optimizer.max_iter=2",
               "image.scale_epochs=null", "progress=false", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    grids = list((out / "multiruns").rglob("grid.png"))  # (MLflow holds a copy too)
    assert len(grids) == 1
    summary = list(csv.DictReader(open(grids[0].parent / "summary.csv")))
    assert len(summary) == len(CONTROLS) and all(row["status"] == "FINISHED" for row in summary)
    assert Image.open(grids[0]).size[1] > 2 * 128  # content, style and six tiles: two rows or more


def test_sweep_files_compose_and_stay_overridable():
    expected = {"ratio": ("loss.style_weight", "1e-2,1e-1,1,10,100,1e4"),
                "learning_rate": ("optimizer.lr", "0.05,0.1,0.2,0.3,0.5,1.0"),
                "epochs": ("epochs", "5,10,20,40"),
                "style_layers": ("loss.style_layers", None), "content_layer": ("loss.content_layers", None),
                "examples": ("+pair", None)}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for name, (key, values) in expected.items():
            cfg = compose("config", overrides=[f"sweep={name}", "content=a", "style=b"],
                          return_hydra_config=True)
            params = cfg.hydra.sweeper.params
            assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
            assert key in params, name
            if values:
                assert params[key] == values
        layers = compose("config", overrides=["sweep=style_layers", "content=a", "style=b"],
                         return_hydra_config=True).hydra.sweeper.params["loss.style_layers"]
        assert layers.count("],[") == 4 and layers.startswith("[conv1_1]")


@pytest.mark.slow  # 14-21 s: make test stays under 10 minutes
def test_sweep_file_values_overridable_from_shell(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst(out, "sweep=ratio", *SWEEP_JOB, "loss.style_weight=1,2")
    assert done.returncode == 0, done.stderr[-3000:]
    children = runs(store_client(out), "run")
    assert sorted(float(c.data.params["loss.style_weight"]) for c in children) == [1.0, 2.0]
    assert json.loads(children[0].data.tags[tags.TAG_OVERRIDES])


# --- bad values exit 2 before any work ------------------------------------------------------------


@pytest.mark.parametrize("override, phrase", [
    ("loss.style_layers=[conv9_1]", "loss.style_layers='conv9_1'"),
    ("loss.style_layers=[conv5_4]", "vgg19 only"),
    ("loss.style_layers=[]", "a non-empty list of layer names"),
    ("loss.style_layer_weights=[1,2]", "exactly one weight per layer"),
    ("loss.style_weight=-1", "loss.style_weight=-1"),
    ("loss.content_weight=nan", "loss.content_weight=nan"),
    ("loss.tv_weight=inf", "loss.tv_weight=inf"),
    ("optimizer.lr=0", "optimizer.lr=0"),
    ("optimizer.convergence_tolerance=-1", "or null (run every epoch)"),
    ("epochs=0", "epochs=0"),
    ("optimizer.name=sgd", "one of lbfgs, adam"),
    ("model.name=resnet", "one of vgg19, vgg19_caffe, vgg16_hed, random, auto"),
    ("device=tpu", "one of auto, cpu, cuda, mps"),
])
def test_bad_values_exit_2_before_any_work(tmp_path, override, phrase, nst):
    done = nst(tmp_path / "outputs", "content=tubingen", "style=starry_night", "model=vgg16_hed",
               "progress=false", override)
    assert done.returncode == 2, done.stderr[-2000:]
    assert phrase in done.stderr and "Traceback" not in done.stderr
    left_nothing(tmp_path / "outputs")


def test_bad_value_is_refused_before_loading_anything(tmp_path, nst):
    done = single_run(nst, tmp_path, "progress=false", "content=tubingen", "style=starry_night",
                      "loss.style_layers=[conv9_1]",
                      "model=vgg16_hed")  # vgg16_hed is not cached here: the layer check must come first
    assert done.returncode == 2
    assert "loss.style_layers='conv9_1'" in done.stderr and "conv5_3" in done.stderr


# --- launch values are typed ---------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), ("0", "0"), ("-1", "-1")])
def test_frame_every_must_be_an_integer_from_1(tmp_path, value, shown, nst):
    done = nst(tmp_path / "outputs", *PAIR, *QUICK, f"frame_every={value}")
    refused(done, f"nst: error: frame_every={shown} is not allowed: an integer >= 1")


@pytest.mark.parametrize("override, line", [
    ("frame_every=2.5", "frame_every=2.5 is not allowed: an integer >= 1"),
    ("video=maybe", "video='maybe' is not allowed: true or false"),
    ("tracking.resume=1", "tracking.resume=1 is not allowed: true or false"),
    ("tracking.enabled=yes please", "tracking.enabled='yes please' is not allowed: true or false"),
    # an empty name silently became the default experiment
    ("tracking.experiment=''", "tracking.experiment='' is not allowed: an experiment's name (default nst)"),
    ("tracking.experiment=' '", "tracking.experiment=' ' is not allowed: an experiment's name (default nst)"),
])
def test_launch_checks_refuse_untyped_values(override, line):
    # the composed config, as a job or the sweep callback reads it (no CLI pre-flight)
    with pytest.raises(ConfigError) as caught:
        check_launch(make(override))
    assert str(caught.value) == line


def test_good_tracking_values_pass():
    assert tracking_spec(make("tracking.resume=false")).resume is False
    member = parse(make(*QUICK, "frame_every=1", "video=false")).member
    assert member.frame_every == 1 and member.video is False
    # the video and its frames do not depend on MLflow
    member = parse(make(*QUICK, "tracking=none")).member
    assert member.frame_every == 10 and member.video is True


def test_a_bad_tracking_value_stops_a_multirun_before_any_job(tmp_path, nst):
    out = tmp_path / "outputs"
    done = nst(out, "-m", *PAIR, *QUICK, "loss.style_weight=1,10", "frame_every=0")
    refused(done, "nst: error: frame_every=0 is not allowed: an integer >= 1")
    assert not (out / "multiruns").exists()


def test_n_jobs_0_is_refused_before_the_sweep(tmp_path, nst):
    out = tmp_path / "outputs"
    done = nst(out, "-m", *PAIR, *QUICK_UNTRACKED, "loss.style_weight=1,10", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=0")
    refused(done, "nst: error: hydra.launcher.n_jobs=0 is not allowed: an integer >= 1, or -1 (one worker per CPU)")
    assert not (out / "multiruns").exists()


@pytest.mark.parametrize("launcher, key, value, ok", [
    ("joblib", "n_jobs", 0, False), ("joblib", "n_jobs", -2, False), ("joblib", "n_jobs", -1, True),
    ("joblib", "n_jobs", 2, True), ("batched", "max_batch", 0, False), ("batched", "max_batch", 3, True),
])
def test_check_launch_reads_the_composed_launcher(launcher, key, value, ok):
    cfg = make(f"hydra/launcher={launcher}", f"hydra.launcher.{key}={value}", hydra=True)
    if ok:
        check_launch(cfg)
    else:
        with pytest.raises(ConfigError, match=rf"^hydra\.launcher\.{key}={value} is not allowed: an integer >= 1"):
            check_launch(cfg)


# --- device=cuda:N against the GPUs there are ------------------------------------------------------


MALFORMED = "is not allowed: one of auto, cpu, cuda, mps (cuda:N for GPU N, N = 0, 1, ...)"


@pytest.mark.parametrize("name", ["cuda:x", "cuda:", "cuda:-1", "cpu:0", "auto:1", "cuda:0:1"])
def test_a_malformed_device_is_refused_by_the_config_check(gpus, name):
    gpus(2)
    with pytest.raises(ConfigError) as caught:
        validate(make(f"device={name}"))
    assert str(caught.value) == f"device={name!r} {MALFORMED}"
    with pytest.raises(ConfigError):
        resolve_device(name)


def test_a_malformed_device_through_the_cli(tmp_path, nst):
    done = nst(tmp_path / "outputs", *PAIR, *QUICK_UNTRACKED, "device=cuda:x")
    refused(done, f"nst: error: device='cuda:x' {MALFORMED}")
