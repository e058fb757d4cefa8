"""The `nst` command (nst/cli/nst_app.py): exit status and one-line errors, --help's sections, shell
completion, the pre-flight checks before Hydra composes anything, and signals. In this process, except
where the process is the subject (the console script, signals)."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nst.cli import nst_app
from nst.errors import OverrideError, UnknownOptionError
from tests.helpers.cli import NST, nst_environment, one_line_error, refused, single_run
from tests.helpers.disks import fill_disk
from tests.helpers.overrides import LONG_SWEEP, PAIR, QUICK_UNTRACKED, TRACKED_RUN
from tests.helpers.store import all_runs, running_with_metrics, store_client
from tests.helpers.waiting import wait_for


def test_user_error_exits_2_with_one_line_and_no_traceback(tmp_path, nst):
    done = single_run(nst, tmp_path, "progress=false", "content=" + str(tmp_path / "missing.png"), "style=starry_night",
                      "model=random")
    assert done.returncode == 2
    assert "nst: error: content image" in done.stderr and "missing.png" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_help_lists_config_groups(tmp_path):
    # the console script in a fresh process: `nst` is installed and starts
    nst_script = Path(sys.executable).with_name("nst")
    done = subprocess.run([str(nst_script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0
    for group in ("model:", "optimizer:", "loss:", "image:", "experiment:"):
        assert group in done.stdout
    assert "seed_presentation" in done.stdout and "vgg16_hed" in done.stdout


def test_help_says_what_nst_is_with_sweeps_experiments_launchers_and_samples(tmp_path, nst):
    done = nst(tmp_path / "outputs", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "powered by Hydra" not in text and text.startswith("nst: neural style transfer")
    assert "nst content=tubingen style=starry_night" in text  # examples
    sections = dict(re.findall(r"^== ([A-Z][a-z ]+?) [=(][^\n]*\n(.*?)\n\n", text, re.S | re.M))
    for title, names in (("Sweeps", ["ratio", "style_layers", "controls"]),
                         ("Experiments", ["seed_presentation", "quick", "masks"]),
                         ("Launchers", ["basic", "joblib", "batched", "ray", "slurm"]),
                         ("Sample images", ["tubingen", "starry_night", "composition_vii", "wave"])):
        listed = [line.split()[0] for line in sections[title].splitlines()]
        assert set(names) <= set(listed), (title, listed)
    assert "Gatys et al. Fig. 3" in sections["Sweeps"]  # each with its description


def test_shell_completion_offers_sample_names(tmp_path, nst):
    from nst.cli.nst_app import complete_samples

    assert complete_samples("content=tu") == ["content=tubingen"]
    assert complete_samples("nst content=tubingen style=s") == ["style=starry_night", "style=shipwreck"]
    assert complete_samples("style=[starry_night,the_") == ["style=[starry_night,the_scream"]
    assert complete_samples("model=ran") == [] and complete_samples("content=tubingen ") == []
    # through Hydra's own completion, as `eval "$(nst --shell-completion install=bash)"` calls it
    env = {"COMP_LINE": "nst content=tu", "COMP_POINT": "14"}
    done = nst(tmp_path / "outputs", "--shell-completion", "query=bash", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["content=tubingen"]
    env["COMP_LINE"] = "nst mod"
    done = nst(tmp_path / "outputs", "--shell-completion", "query=bash", cwd=tmp_path, env=env)
    assert "model=" in done.stdout.split()  # Hydra's completion of keys and groups still works


# --- the pre-flight: the command line checked before Hydra composes anything --------------------------


@pytest.mark.parametrize("args", [
    ["-m", *PAIR, "loss.style_weight=1,10"],
    [*PAIR, "sweep=ratio", "hydra/launcher=batched", "hydra.launcher.max_batch=2"],
    ["-m", *PAIR, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "loss.style_weight=range(1,3)"],
    ["experiment=masks", "+pair=tubingen_starry_night", "~progress", "hydra.run.dir=/tmp/x", "hydra.job.chdir=true"],
    ["--cfg", "job", *PAIR, "model=random", "loss.style_layers=[conv1_1]", "loss.style_layers.0=conv2_1"],
    ["+experiment=quick", "optimizer=adam", "optimizer.betas=[0.8,0.9]", "style=[wave,the_scream]"],
    ["--help"], ["--info", "defaults"], ["--version"], ["-cn", "other", "anything.at_all=1"],
    [*PAIR, 'content="/tmp/été (1).jpg"', "frame_every=5", "video=false", "device=cuda:1"],
    [*PAIR, "sweep=ratio", "loss.style_weight=1,10"], [*PAIR, "experiment=null", "sweep=null", "model=random"],
    ["-m", *PAIR, "model=random,vgg19", "optimizer=choice(adam,lbfgs)"], ["-m", *PAIR, "hydra/launcher=joblib"],
    [*PAIR, "hydra.mode=MULTIRUN", "loss.style_weight=1,10"], [*PAIR, 'content="/tmp/a,b.jpg"', "~experiment"],
])
def test_preflight_lets_good_command_lines_through(args):
    nst_app.preflight(args)


MODELS = "one of auto, random, vgg16_hed, vgg19, vgg19_caffe (conf/model/)"


SWEEPS = "one of content_layer, controls, epochs, examples, learning_rate, pareto, ratio, style_layers, null (conf/sweep/)"


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
        nst_app.preflight([*args[:multirun], *PAIR, *args[multirun:]])
    assert str(caught.value) == message


def test_an_unknown_option_in_a_sweep_stops_it_before_any_run(tmp_path, nst):
    # Hydra's own error came after the sweep's parent MLflow run was created, and left it FAILED
    out = tmp_path / "outputs"
    done = nst(out, "-m", *PAIR, *QUICK_UNTRACKED, "model=random,nosuch")
    refused(done, f"nst: error: model=nosuch is not an option of model: {MODELS}")
    assert not (out / "multiruns").exists() and not (out / "mlflow.db").exists()


@pytest.mark.parametrize("where", [pytest.param("read-only disk", marks=pytest.mark.slow),
                                   pytest.param("under /proc", marks=pytest.mark.slow), "below a file"])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_anything_runs(tmp_path, where, small_disk, nst):
    if where == "read-only disk":
        out, reason = small_disk(64, read_only=True) / "outputs", "Read-only file system"
    elif where == "under /proc":
        out, reason = Path("/proc/nst-outputs"), "No such file or directory"
    else:
        (tmp_path / "a-file").write_text("")
        out, reason = tmp_path / "a-file" / "outputs", "Not a directory"
    done = nst(out, *TRACKED_RUN, f"paths.output_dir={out}", cwd=tmp_path)
    assert done.returncode == 2
    assert one_line_error(done.stderr) == (f"nst: error: the output folder {out} cannot be written ({reason}): "
                                           f"choose a writable output folder with paths.output_dir=<folder> "
                                           f"or NST_OUTPUT_DIR")


@pytest.mark.parametrize("mode", ["single run", "sweep"])
def test_an_output_folder_on_a_full_disk_is_one_line(small_disk, nst, mode):
    """Hydra's own config files could not be written: its OSError traceback, and no nst line."""
    out = small_disk(64) / "outputs"
    out.mkdir()
    fill_disk(out)
    done = nst(out, *(["-m", "seed=1,2"] if mode == "sweep" else []), *QUICK_UNTRACKED, *PAIR)
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_line_error(done.stderr)
    assert line.startswith("nst: error: no space left on the device"), line
    assert line.endswith("free some space or choose a writable output folder (paths.output_dir=<folder> or "
                         "NST_OUTPUT_DIR); finished runs are kept"), line


# --- signals: Ctrl-C and SIGTERM end the runs KILLED and keep what they made ------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_kills_run_keeps_partial_and_rerun_completes(tmp_path, sig, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    process = subprocess.Popen([*NST, *LONG_SWEEP], env=nst_environment(out), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # past evaluation 10, so the video has frames 1, 5 and 10 (signalled after the first metric, a run was
    # seen killed with one frame: metrics at step 1 only, and no video, as one frame makes none)
    victim = wait_for(lambda: running_with_metrics(out, min_step=10))
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    client = store_client(out)
    killed = client.get_run(victim.info.run_id)
    assert killed.info.status == "KILLED"
    assert client.get_metric_history(killed.info.run_id, "total")
    names = [a.path for a in client.list_artifacts(killed.info.run_id)]
    assert "partial.png" in names
    assert "optimisation.mp4" in names  # the frames the encoder thread had, flushed before the folder was logged
    assert all(r.info.status != "RUNNING" for r in all_runs(out) + all_runs(out, "sweep"))
    assert all_runs(out, "sweep")[0].info.status == "KILLED"

    again = nst(out, *LONG_SWEEP, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    finished = [r for r in all_runs(out) if r.info.status == "FINISHED"]
    assert sorted(float(r.data.params["loss.style_weight"]) for r in finished) == [10.0, 1000.0]
