"""Run names and tile labels in the seed's terms."""

import pytest

from nst.figures import labels


@pytest.mark.parametrize(("value", "text"), [(1e4, "1e4"), (1e-4, "1e-4"), (100, "100"), (0.01, "0.01"),
                                             (2.5e5, "2.5e5"), (0.2, "0.2"), (0, "0"), ("1e-2", "0.01")])
def test_numbers_are_written_as_the_seed_writes_weights(value, text):
    assert labels.short(value) == text


def test_a_ratio_sweep_is_named_by_beta_and_alpha_over_beta():
    config = {"loss": {"style_weight": 1e4, "content_weight": 1.0}}
    assert labels.label(["loss.style_weight"], config) == "β=1e4 · α/β=1e-4"
    params = {"loss.style_weight": "10000.0", "loss.content_weight": "1.0"}  # MLflow's params are text
    assert labels.label(["loss.style_weight"], params) == "β=1e4 · α/β=1e-4"


def test_layers_groups_and_other_keys_are_short():
    config = {"loss": {"style_layers": ["conv1_1", "conv2_1", "conv3_1"]}, "optimizer": {"lr": 0.2}}
    assert labels.label(["loss.style_layers", "optimizer.lr"], config) == "style_layers=conv1_1..conv3_1 · lr=0.2"
    assert labels.label(["+pair"], {}, {"hydra.choice.pair": "golden_gate_the_scream"}) == "pair=golden_gate_the_scream"


def test_only_log_spaced_numbers_get_a_log10_param():
    assert labels.log_spaced([1e-2, 1, 1e4]) and not labels.log_spaced([0.5, 1.0]) and not labels.log_spaced(["a"])
    params = labels.sweep_params({"loss.style_weight": True, "optimizer.lr": False},
                                 {"loss": {"style_weight": 1e-2}, "optimizer": {"lr": 0.5}})
    assert params == {"sweep.loss.style_weight": "0.01", "sweep.log10_loss.style_weight": "-2",
                      "sweep.optimizer.lr": "0.5"}
