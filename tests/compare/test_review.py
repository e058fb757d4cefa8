"""A human review in the store (nst/compare/review.py): the runs it picks, where the judgements are kept,
stability, the measures of runs logged before them. A synthetic store (runs with small images, as nst
logs them) keeps these fast; tests/system/test_review_browser.py drives the page on a real sweep."""

import pytest

from nst.compare import pareto, ranking, review, review_app
from nst.images import measures
from nst.tracking import tags
from tests.helpers.reviews import judge, picture, synthetic_sweep


def test_the_latest_sweep_is_reviewed_on_its_parent(review_world):
    chosen = review.select(review_world["client"], "nst")
    assert chosen.home == review_world["parent"]
    assert set(chosen.ids) == set(review_world["children"])
    assert sorted(c.label for c in chosen.runs) == sorted(["β=0.01 · α/β=100", "β=1 · α/β=1",
                                                           "β=100 · α/β=0.01", "β=1e4 · α/β=1e-4"])
    assert all(c.settings["content"] == "tubingen" and "loss.style_weight" not in c.settings for c in chosen.runs)


def test_stable_since_counts_the_judgements_after_which_the_top_three_stayed(review_world):
    chosen = review.select(review_world["client"], "nst")
    a, b, c, d = chosen.ids

    def j(left, right):
        return ranking.Judgement.new(left, right, "left", "ana")

    settled = [j(a, b), j(b, c), j(c, d), j(a, c), j(b, d), j(a, d)]
    assert review.stable_since(chosen, settled) <= len(settled)
    upset = settled + [j(d, a), j(d, b), j(d, c), j(d, a), j(d, b), j(d, c)]
    since = review.stable_since(chosen, upset)
    assert len(settled) < since <= len(upset)  # d climbing changed the top three after the sixth
    assert ranking.fit(upset, runs=chosen.ids).order[0] == d
    assert review.stable_since(chosen, []) is None


def test_runs_logged_before_the_measures_get_them_when_reviewed(review_world, tmp_path):
    client = review_world["client"]
    parent, children = synthetic_sweep(client, review_world["experiment"], betas=("1", "10"), measured=False)
    chosen = review.prepare(client, review.select(client, "nst", [parent]), tmp_path)
    for run in children:
        logged = client.get_run(run).data.metrics
        assert set(review.IMAGE_MEASURES) <= set(logged)
        assert logged == pytest.approx({**logged, **chosen.candidate(run).metrics})
    assert client.get_run(children[0]).data.metrics["auto.ssim_content"] == pytest.approx(
        measures.ssim_to_content(picture(0), picture(100)))


def test_identical_results_are_shown_and_ranked_as_one_entry(review_world, tmp_path):
    """The ratio sweep's β=0.01 and 0.1 are both the photo: shown as one, ranked as one with both runs named,
    and both runs get that entry's human.* metrics."""
    client = review_world["client"]
    parent, (photo, same, styled) = synthetic_sweep(client, review_world["experiment"], betas=("0.01", "0.1", "1e4"),
                                                    seeds=(7, 7, 8))
    chosen = review.prepare(client, review.select(client, "nst", [parent]), tmp_path)
    assert chosen.entries == (photo, styled) and chosen.members(photo) == [photo, same]
    app = review_app.create_app(client, chosen, review_world["uri"], tmp_path, seed=1).test_client()
    for _ in range(4):
        pair = app.get("/api/pair").get_json()
        assert {pair["left"], pair["right"]} == {photo, styled}
        answer = "left" if pair["left"] == styled else "right"
        assert judge(app, chosen, answer, judgement_id=pair["id"], pair=(pair["left"], pair["right"])).status_code == 201
    table = review.ranked(chosen, review.read(client, chosen.home))
    assert list(table["run_id"]) == [styled, photo] and list(table["rank"]) == [1, 2]
    assert table["label"].iloc[1] == "β=0.01 · α/β=100 = β=0.1 · α/β=10" and table["same_result"].iloc[1] == same
    assert client.get_run(same).data.metrics["human.rank"] == client.get_run(photo).data.metrics["human.rank"] == 2


def test_runs_picked_by_a_filter_keep_their_judgements_on_one_review_run(review_world):
    client = review_world["client"]
    filter_string = "params.`loss.style_weight` != '0.01'"
    first = review.select(client, "nst", filter_string=filter_string)
    assert len(first.runs) == 3 and first.home not in review_world["children"] + [review_world["parent"]]
    home = client.get_run(first.home)
    assert home.data.tags[tags.TAG_ROLE] == review.ROLE and home.info.status == "FINISHED"
    assert review.select(client, "nst", filter_string=filter_string).home == first.home  # found again
    both = review.select(client, "nst", sweeps=[review_world["parent"]], filter_string=filter_string)
    assert len(both.runs) == 4 and both.home != first.home
    with pytest.raises(review.TrackingError, match="at least two FINISHED runs"):
        review.select(client, "nst", filter_string="params.content = 'nowhere'")


def _measured_sweep(client, experiment_id: str, values) -> tuple[str, list[str]]:
    """A finished sweep whose runs have the content-style measures ``values`` ((ssim, gram
    distance), None for one not logged)."""
    betas = tuple(f"1e{k}" for k in range(len(values)))
    parent, children = synthetic_sweep(client, experiment_id, betas=betas, measured=False)
    names = (pareto.SSIM_CONTENT, pareto.GRAM_DISTANCE_STYLE)
    for run, measured in zip(children, values, strict=True):
        for name, value in zip(names, measured, strict=True):
            if value is not None:
                client.log_metric(run, name, value)
    return parent, children


def test_a_pareto_review_keeps_the_runs_no_other_beats_on_both_measures(review_world):
    client = review_world["client"]
    # c is beaten by b (less content kept, less style taken); d has no style distance; f equals b
    parent, (a, b, c, d, e, f) = _measured_sweep(client, review_world["experiment"], [
        (0.9, 2.0), (0.5, 0.5), (0.4, 0.6), (0.95, None), (0.7, 1.0), (0.5, 0.5)])
    chosen = review.select(client, "nst", [parent], pareto=True)
    assert set(chosen.ids) == {a, b, e, f}
    assert chosen.title.startswith("Pareto front of ")
    home = client.get_run(chosen.home)
    assert chosen.home != parent and home.data.tags[tags.TAG_ROLE] == review.ROLE
    assert "the Pareto front of" in home.data.tags[tags.TAG_DESCRIPTION]
    assert review.select(client, "nst", [parent], pareto=True).home == chosen.home  # found again
    everything = review.select(client, "nst", [parent])  # without the flag: as before
    assert everything.home == parent and set(everything.ids) == {a, b, c, d, e, f}


def test_a_front_of_one_run_is_too_few_to_review(review_world):
    client = review_world["client"]
    parent, _ = _measured_sweep(client, review_world["experiment"],
                                [(0.9, 0.1), (0.5, 0.5), (0.4, None)])
    expected = (r"at least two FINISHED runs; the Pareto front \(auto.ssim_content higher, "
                rf"auto.gram_distance_style lower\) of 3 runs of sweep {parent} has 1$")
    with pytest.raises(review.TrackingError, match=expected):
        review.select(client, "nst", [parent], pareto=True)
