"""Input checks: what a user hands in (files, values, keys, the command line itself) is refused
at once with one line naming it, what was given and what is allowed, and exit status 2."""

import os
import shlex
import shutil
import signal
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from nst.cli import nst_app
from nst.engine.devices import resolve_device
from nst.errors import ConfigError, ImageError, OverrideError, UnknownKeyError, UnknownOptionError
from nst.images.files import check_image_file, header_size, load_image
from nst.jobs import schema
from nst.jobs.config import check_launch, parse, tracking_spec, validate

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=random", "image.size=32", "epochs=1", "optimizer.max_iter=2", "progress=false"]
QUIET = [*TINY, "tracking=none"]
BASE = ["content=tubingen", "style=starry_night"]
UNKNOWN = "; nst --help lists the groups, conf/ holds every key"


def refused(done, line):
    """The command exited 2 with exactly ``line`` on stderr and no traceback."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert line in done.stderr.splitlines(), done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout


def compose_cfg(*overrides, hydra=False):
    with initialize_config_dir(config_dir=nst_app.CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[*BASE, *overrides], return_hydra_config=hydra)


# --- 1. only regular files are opened --------------------------------------------------------


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("role", ["content", "style", "style_masks"])
def test_a_fifo_is_refused_at_once_not_read(tmp_path, fifo, role, nst):
    # opening a FIFO blocks until a writer comes: before the check this never returned
    given = {"content": f"content={fifo}", "style": f"style={fifo}", "style_masks": f"style_masks=[{fifo}]"}
    args = [*BASE, *QUIET]
    args = [a for a in args if not a.startswith(f"{role}=")] + [given[role]]
    what = {"content": "content", "style": "style", "style_masks": "style_masks[0]"}[role]
    start = time.perf_counter()
    done = nst(tmp_path / "outputs", *args, timeout=60)
    refused(done, f"nst: error: {what} image {fifo}: is a FIFO (named pipe), not a regular file")
    assert time.perf_counter() - start < 60


def test_dev_zero_is_refused_as_a_character_device(tmp_path, nst):
    done = nst(tmp_path / "outputs", "content=/dev/zero", "style=starry_night", *QUIET, timeout=60)
    refused(done, "nst: error: content image /dev/zero: is a character device, not a regular file")


def test_a_socket_is_refused():
    folder = Path(tempfile.mkdtemp(prefix="nst-sock-"))  # a unix socket path must be short
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(folder / "s"))
            with pytest.raises(ImageError) as caught:
                load_image(folder / "s", "style")
        assert str(caught.value) == f"style image {folder / 's'}: is a socket, not a regular file"
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("mode, text", [
    (stat.S_IFIFO, "is a FIFO (named pipe), not a regular file"),
    (stat.S_IFCHR, "is a character device, not a regular file"),
    (stat.S_IFBLK, "is a block device, not a regular file"),
    (stat.S_IFSOCK, "is a socket, not a regular file"),
])
def test_every_kind_of_special_file_is_named(tmp_path, monkeypatch, mode, text):
    path = tmp_path / "x.png"
    path.write_bytes(b"x")
    real = os.stat(path)
    fake = os.stat_result((mode | 0o644, *tuple(real)[1:]))
    monkeypatch.setattr(Path, "stat", lambda self, **kwargs: fake)
    with pytest.raises(ImageError) as caught:
        check_image_file(path, "content")
    assert str(caught.value) == f"content image {path}: {text}"


def test_header_peek_skips_a_fifo(fifo):
    def hung(signum, frame):
        raise TimeoutError("header_size opened the FIFO and blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        assert header_size(fifo) is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- 2. permission and empty files say so ----------------------------------------------------


def test_an_empty_file_says_0_bytes(tmp_path, nst):
    (tmp_path / "empty.png").write_bytes(b"")
    done = nst(tmp_path / "outputs", f"content={tmp_path / 'empty.png'}", "style=starry_night", *QUIET)
    refused(done, f"nst: error: content image {tmp_path / 'empty.png'}: the file is empty (0 bytes)")


def _image(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), "red").save(path)
    return path


def test_an_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    path = _image(tmp_path)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(ImageError) as caught:
        load_image(path, "content")
    assert str(caught.value) == (f"content image {path}: permission denied "
                                 "(cannot read the file; check its permissions)")


def test_a_permission_error_on_open_is_not_called_truncated(tmp_path, monkeypatch):
    # root passes os.access, and an ACL or a network filesystem can still refuse the open
    path = _image(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageError) as caught:
        load_image(path, "style")
    assert str(caught.value) == (f"style image {path}: permission denied "
                                 "(cannot read the file; check its permissions)")


def test_chmod_000_through_the_cli(tmp_path, nst):
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file (the two tests above cover the message)")
    path = _image(tmp_path)
    path.chmod(0)
    done = nst(tmp_path / "outputs", f"content={path}", "style=starry_night", *QUIET)
    refused(done, f"nst: error: content image {path}: permission denied "
                  "(cannot read the file; check its permissions)")


# --- 3. tracking values are typed --------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), ("0", "0"), ("-1", "-1")])
def test_frame_every_must_be_an_integer_from_1(tmp_path, value, shown, nst):
    done = nst(tmp_path / "outputs", *BASE, *TINY, f"frame_every={value}")
    refused(done, f"nst: error: frame_every={shown} is not allowed: an integer >= 1")


@pytest.mark.parametrize("override, line", [
    ("frame_every=2.5", "frame_every=2.5 is not allowed: an integer >= 1"),
    ("video=maybe", "video='maybe' is not allowed: true or false"),
    ("tracking.resume=1", "tracking.resume=1 is not allowed: true or false"),
    ("tracking.enabled=yes please", "tracking.enabled='yes please' is not allowed: true or false"),
])
def test_launch_checks_refuse_untyped_values(override, line):
    # the composed config, as a job or the sweep callback reads it (no CLI pre-flight)
    with pytest.raises(ConfigError) as caught:
        check_launch(compose_cfg(override))
    assert str(caught.value) == line


def test_good_tracking_values_pass():
    assert tracking_spec(compose_cfg("tracking.resume=false")).resume is False
    member = parse(compose_cfg(*TINY, "frame_every=1", "video=false")).member
    assert member.frame_every == 1 and member.video is False
    # the video and its frames do not depend on MLflow
    member = parse(compose_cfg(*TINY, "tracking=none")).member
    assert member.frame_every == 10 and member.video is True


@pytest.mark.parametrize("old, new", [("tracking.log_every", "frame_every"), ("tracking.video", "video")])
def test_a_moved_key_is_refused_with_its_new_name(old, new):
    with pytest.raises(UnknownKeyError) as caught:
        schema.check_override_keys(schema.parse_overrides([f"{old}=1"]))
    assert f"(did you mean {new}?)" in str(caught.value)


def test_a_bad_tracking_value_stops_a_multirun_before_any_job(tmp_path, nst):
    out = tmp_path / "outputs"
    done = nst(out, "-m", *BASE, *TINY, "loss.style_weight=1,10", "frame_every=0")
    refused(done, "nst: error: frame_every=0 is not allowed: an integer >= 1")
    assert not (out / "multiruns").exists()


# --- 4. the joblib launcher's worker count -----------------------------------------------------


def test_n_jobs_0_is_refused_before_the_sweep(tmp_path, nst):
    out = tmp_path / "outputs"
    done = nst(out, "-m", *BASE, *QUIET, "loss.style_weight=1,10", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=0")
    refused(done, "nst: error: hydra.launcher.n_jobs=0 is not allowed: an integer >= 1, or -1 (one worker per CPU)")
    assert not (out / "multiruns").exists()


@pytest.mark.parametrize("launcher, key, value, ok", [
    ("joblib", "n_jobs", 0, False), ("joblib", "n_jobs", -2, False), ("joblib", "n_jobs", -1, True),
    ("joblib", "n_jobs", 2, True), ("batched", "max_batch", 0, False), ("batched", "max_batch", 3, True),
])
def test_check_launch_reads_the_composed_launcher(launcher, key, value, ok):
    cfg = compose_cfg(f"hydra/launcher={launcher}", f"hydra.launcher.{key}={value}", hydra=True)
    if ok:
        check_launch(cfg)
    else:
        with pytest.raises(ConfigError, match=rf"^hydra\.launcher\.{key}={value} is not allowed: an integer >= 1"):
            check_launch(cfg)


# --- 5. device=cuda:N against the GPUs there are -----------------------------------------------


@pytest.fixture
def gpus(monkeypatch):
    def have(count):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    return have


@pytest.mark.parametrize("count, allowed", [
    (1, "cuda:0 (this machine has 1 CUDA GPU), cuda, cpu or auto"),
    (4, "cuda:0 to cuda:3 (this machine has 4 CUDA GPUs), cuda, cpu or auto"),
])
def test_a_gpu_index_beyond_the_count_is_refused(gpus, count, allowed):
    gpus(count)
    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda:99")
    assert str(caught.value) == f"device='cuda:99' is not allowed: {allowed}"
    assert resolve_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
    assert resolve_device("cuda") == torch.device("cuda")


MALFORMED = "is not allowed: one of auto, cpu, cuda, mps (cuda:N for GPU N, N = 0, 1, ...)"


@pytest.mark.parametrize("name", ["cuda:x", "cuda:", "cuda:-1", "cpu:0", "auto:1", "cuda:0:1"])
def test_a_malformed_device_is_refused_by_the_config_check(gpus, name):
    gpus(2)
    with pytest.raises(ConfigError) as caught:
        validate(compose_cfg(f"device={name}"))
    assert str(caught.value) == f"device={name!r} {MALFORMED}"
    with pytest.raises(ConfigError):
        resolve_device(name)


def test_a_malformed_device_through_the_cli(tmp_path, nst):
    done = nst(tmp_path / "outputs", *BASE, *QUIET, "device=cuda:x")
    refused(done, f"nst: error: device='cuda:x' {MALFORMED}")


# --- 6. unknown keys, with a did-you-mean ------------------------------------------------------


@pytest.mark.parametrize("override, key, suggestion", [
    ("loss.styleweight=1", "loss.styleweight", "loss.style_weight"),
    ("+loss.styleweight=1", "loss.styleweight", "loss.style_weight"),  # ran with exit 0, value ignored
    ("++loss.styleweight=1", "loss.styleweight", "loss.style_weight"),
    ("modle=random", "modle", "model"),
])
def test_unknown_key_is_refused_with_a_suggestion(tmp_path, override, key, suggestion, nst):
    done = nst(tmp_path / "outputs", *BASE, *QUIET, override)
    refused(done, f"nst: error: unknown config key {key!r} (did you mean {suggestion}?){UNKNOWN}")


@pytest.mark.parametrize("key, suggestion", [
    ("tracking.experimnt", "tracking.experiment"), ("style_weight", "loss.style_weight"),
    ("optimizer.beta", "optimizer.betas"), ("image.szie", "image.size"), ("zzzzzz", None),
])
def test_suggestions_come_from_the_schema(key, suggestion):
    with pytest.raises(UnknownKeyError) as caught:
        schema.check_override_keys(schema.parse_overrides([f"{key}=1"]))
    hint = f" (did you mean {suggestion}?)" if suggestion else ""
    assert str(caught.value) == f"unknown config key {key!r}{hint}{UNKNOWN}"


def test_the_schema_holds_every_key_of_every_option_and_is_fast():
    schema.schema.cache_clear()
    start = time.perf_counter()
    known = schema.schema()
    assert time.perf_counter() - start < 0.5
    # keys that only some option files define are known, whichever option is picked
    assert {"optimizer.betas", "optimizer.line_search", "model.precision", "frame_every",
            "image.scale_epochs", "style_masks", "paths.output_dir"} <= known.keys
    assert {"model", "optimizer", "experiment", "sweep", "pair", "local"} <= known.groups
    assert not any(k.startswith("hydra") or k.endswith("defaults") for k in known.keys)


@pytest.mark.parametrize("args", [
    ["-m", *BASE, "loss.style_weight=1,10"],
    [*BASE, "sweep=ratio", "hydra/launcher=batched", "hydra.launcher.max_batch=2"],
    ["-m", *BASE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "loss.style_weight=range(1,3)"],
    ["experiment=masks", "+pair=tubingen_starry_night", "~progress", "hydra.run.dir=/tmp/x", "hydra.job.chdir=true"],
    ["--cfg", "job", *BASE, "model=random", "loss.style_layers=[conv1_1]", "loss.style_layers.0=conv2_1"],
    ["+experiment=quick", "optimizer=adam", "optimizer.betas=[0.8,0.9]", "style=[wave,the_scream]"],
    ["--help"], ["--info", "defaults"], ["--version"], ["-cn", "other", "anything.at_all=1"],
    [*BASE, 'content="/tmp/été (1).jpg"', "frame_every=5", "video=false", "device=cuda:1"],
    [*BASE, "sweep=ratio", "loss.style_weight=1,10"], [*BASE, "experiment=null", "sweep=null", "model=random"],
    ["-m", *BASE, "model=random,vgg19", "optimizer=choice(adam,lbfgs)"], ["-m", *BASE, "hydra/launcher=joblib"],
    [*BASE, "hydra.mode=MULTIRUN", "loss.style_weight=1,10"], [*BASE, 'content="/tmp/a,b.jpg"', "~experiment"],
])
def test_preflight_lets_good_command_lines_through(args):
    nst_app.preflight(args)


def test_an_added_key_is_refused_in_a_composed_config_too():
    # compose-API users and a sweep file's mistyped param never pass the CLI's pre-flight
    with pytest.raises(UnknownKeyError) as caught:
        validate(compose_cfg("+loss.styleweight=1"))
    assert str(caught.value) == f"unknown config key 'loss.styleweight' (did you mean loss.style_weight?){UNKNOWN}"
    with pytest.raises(UnknownKeyError, match="'colour'"):
        validate(compose_cfg("+colour={a: 1}"))


# --- 7. overrides Hydra cannot parse -----------------------------------------------------------


@pytest.mark.parametrize("arg, multirun, hint", [
    ("content=/tmp/été (1).jpg", False, "'content=\"/tmp/été (1).jpg\"'"),
    ("content=/tmp/a#b.jpg", False, "'content=\"/tmp/a#b.jpg\"'"),
    ("style=[a (1).jpg,b.jpg]", False, "'style=[\"a (1).jpg\",\"b.jpg\"]'"),
    ("content=x(1).jpg,y(2).jpg", True, "'content=\"x(1).jpg\",\"y(2).jpg\"'"),
    ('content=say "hi" (1).jpg', False, shlex.quote("""content='say "hi" (1).jpg'""")),
])
def test_an_unparsable_override_gets_the_quoting_that_parses(arg, multirun, hint):
    with pytest.raises(OverrideError) as caught:
        schema.parse_overrides([arg], multirun=multirun)
    assert str(caught.value) == f"cannot parse the override {arg}: quote the value for Hydra, e.g. {hint}"
    (suggested,) = shlex.split(hint)
    schema.parse_overrides([suggested], multirun=multirun)  # the advice parses


@pytest.mark.parametrize(("name", "problem"), [
    ("my photos/été (1).jpg", "cannot parse the override content={photo}: quote the value for Hydra, e.g. "),
    ("a,b.jpg", "content={photo} has a comma, which Hydra reads as a sweep (nst -m); to pass one value quote it: "),
], ids=["accents and parentheses", "comma"])
def test_the_suggested_quoting_runs(tmp_path, assets_dir, nst, name, problem):
    photo = tmp_path / name
    photo.parent.mkdir(exist_ok=True)
    shutil.copy(assets_dir / "tubingen.jpg", photo)
    done = nst(tmp_path / "outputs", f"content={photo}", "style=starry_night", *QUIET)
    prefix = "nst: error: " + problem.format(photo=photo)
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("nst: error:")]
    assert done.returncode == 2 and line.startswith(prefix), done.stderr[-2000:]
    (suggested,) = shlex.split(line.removeprefix(prefix))
    done = nst(tmp_path / "outputs", suggested, "style=starry_night", *QUIET, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "result.png").is_file()
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").content == str(photo)


# --- 8. group options, and a comma in a single run ---------------------------------------------

MODELS = "one of auto, random, vgg16_hed, vgg19, vgg19_caffe (conf/model/)"
SWEEPS = "one of content_layer, controls, epochs, examples, learning_rate, ratio, style_layers, null (conf/sweep/)"


@pytest.mark.parametrize("args, message", [
    (["model=nosuch"], f"model=nosuch is not an option of model: {MODELS}"),
    (["model=null"], f"model=null is not an option of model: {MODELS}"),  # only experiment, sweep default to null
    (["optimizer=sgd"], "optimizer=sgd is not an option of optimizer: one of adam, lbfgs (conf/optimizer/)"),
    (["optimizer=adamw"], "optimizer=adamw is not an option of optimizer (did you mean adam?): "
                          "one of adam, lbfgs (conf/optimizer/)"),
    (["sweep=nosuch"], f"sweep=nosuch is not an option of sweep: {SWEEPS}"),
    (["experiment=nosuch"], "experiment=nosuch is not an option of experiment: one of coarse_to_fine, "
     "color_histogram, color_luminance, gatys_paper, masks, quick, seed_presentation, style_blend, style_scale, "
     "null (conf/experiment/)"),
    (["+pair=nosuch"], "pair=nosuch is not an option of pair: one of golden_gate_the_scream, hoovertowernight_wave, "
                       "mona_lisa_composition_vii, tubingen_starry_night (conf/pair/)"),
    (["-m", "model=random,vgg19,nosuch"], f"model=nosuch is not an option of model: {MODELS}"),
    (["-m", "model=choice(random,vgg91)"], f"model=vgg91 is not an option of model (did you mean vgg19?): {MODELS}"),
    (["content=/tmp/a,b.jpg"], "content=/tmp/a,b.jpg has a comma, which Hydra reads as a sweep (nst -m); "
                               """to pass one value quote it: 'content="/tmp/a,b.jpg"'"""),
    (["model=random,vgg19"], "model=random,vgg19 has a comma, which Hydra reads as a sweep: "
                             "to run each option, use nst -m"),
])
def test_preflight_refuses_unknown_options_and_a_single_runs_comma(args, message):
    multirun = args[0] == "-m"
    with pytest.raises((UnknownOptionError, OverrideError)) as caught:
        nst_app.preflight([*args[:multirun], *BASE, *args[multirun:]])
    assert str(caught.value) == message


def test_an_unknown_option_in_a_sweep_stops_it_before_any_run(tmp_path, nst):
    # Hydra's own error came after the sweep's parent MLflow run was created, and left it FAILED
    out = tmp_path / "outputs"
    done = nst(out, "-m", *BASE, *QUIET, "model=random,nosuch")
    refused(done, f"nst: error: model=nosuch is not an option of model: {MODELS}")
    assert not (out / "multiruns").exists() and not (out / "mlflow.db").exists()
