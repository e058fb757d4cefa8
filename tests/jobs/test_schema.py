"""The keys any composition of conf/ can have (nst/jobs/schema.py): unknown keys refused with a did-you-mean,
overrides Hydra cannot parse given the quoting that parses."""

import shlex
import shutil
import time

import pytest
from omegaconf import OmegaConf

from nst.errors import OverrideError, UnknownKeyError
from nst.jobs import schema
from nst.jobs.config import validate
from tests.helpers.cli import refused
from tests.helpers.config import make
from tests.helpers.overrides import PAIR, QUICK_UNTRACKED

UNKNOWN = "; nst --help lists the groups, conf/ holds every key"


@pytest.mark.parametrize("old, new", [("tracking.log_every", "frame_every"), ("tracking.video", "video")])
def test_a_moved_key_is_refused_with_its_new_name(old, new):
    with pytest.raises(UnknownKeyError) as caught:
        schema.check_override_keys(schema.parse_overrides([f"{old}=1"]))
    assert f"(did you mean {new}?)" in str(caught.value)


@pytest.mark.parametrize("override, key, suggestion", [
    ("loss.styleweight=1", "loss.styleweight", "loss.style_weight"),
    ("+loss.styleweight=1", "loss.styleweight", "loss.style_weight"),  # ran with exit 0, value ignored
    ("++loss.styleweight=1", "loss.styleweight", "loss.style_weight"),
    ("modle=random", "modle", "model"),
])
def test_unknown_key_is_refused_with_a_suggestion(tmp_path, override, key, suggestion, nst):
    done = nst(tmp_path / "outputs", *PAIR, *QUICK_UNTRACKED, override)
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


def test_an_added_key_is_refused_in_a_composed_config_too():
    # compose-API users and a sweep file's mistyped param never pass the CLI's pre-flight
    with pytest.raises(UnknownKeyError) as caught:
        validate(make("+loss.styleweight=1"))
    assert str(caught.value) == f"unknown config key 'loss.styleweight' (did you mean loss.style_weight?){UNKNOWN}"
    with pytest.raises(UnknownKeyError, match="'colour'"):
        validate(make("+colour={a: 1}"))


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
    done = nst(tmp_path / "outputs", f"content={photo}", "style=starry_night", *QUICK_UNTRACKED)
    prefix = "nst: error: " + problem.format(photo=photo)
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("nst: error:")]
    assert done.returncode == 2 and line.startswith(prefix), done.stderr[-2000:]
    (suggested,) = shlex.split(line.removeprefix(prefix))
    done = nst(tmp_path / "outputs", suggested, "style=starry_night", *QUICK_UNTRACKED, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "result.png").is_file()
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").content == str(photo)


@pytest.mark.parametrize(("arg", "multirun", "why"), [
    ("loss.style_weight=choice(1,2", True, "its ( and ) do not pair up"),
    ("loss.style_weight=1,,2", True, "it has an empty value between commas"),
    ("loss.style_weight=[1,2", False, "its [ and ] do not pair up"),
    ("loss.style_weight=1,", True, "it has an empty value between commas"),
])
def test_no_quoting_is_suggested_that_would_turn_numbers_into_text(arg, multirun, why):
    """Quoting these parses, but each job would then refuse '1' as a weight: the line says what is wrong."""
    with pytest.raises(OverrideError) as caught:
        schema.parse_overrides([arg], multirun=multirun)
    assert str(caught.value) == f"cannot parse the override {arg}: {why}"
