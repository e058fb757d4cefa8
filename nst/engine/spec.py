"""The run specification: a composed config, checked once and frozen.

``nst.config.parse`` turns Hydra's composed config into a ``RunSpec``; everything
below the job driver (``nst.engine.run``, the recorder, the store) reads this object,
never the config. The spec is split the way a batch is: ``SharedSpec`` is what
every member of a batch must have in common (images, network, layers, sizes,
device), ``MemberSpec`` what each member may set for itself (loss weights,
optimiser, epochs, init, seed). ``batch_key`` states the same rule on the
resolved config, so that jobs can be grouped before they are parsed.

This module is pure data: no Hydra, no OmegaConf, no MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nst.engine.losses import paper_style_layer_weights
from nst.engine.optimization import OptimizerSettings

# Config keys members of one batch may differ in; everything else must be equal. These are
# exactly the config keys that ``MemberSpec`` is built from.
MEMBER_KEYS = ("loss.content_weight", "loss.style_weight", "loss.tv_weight", "loss.content_layer_weights",
               "loss.style_layer_weights", "optimizer", "epochs", "init", "seed", "progress",
               "print_every", "save_every", "frame_every", "video", "output")


@dataclass(frozen=True)
class SharedSpec:
    """What every member of a batch shares: one backbone pass and one set of targets serve them all."""

    content: str
    styles: tuple[str, ...]  # paths or sample names, one or more
    style_blend: tuple[float, ...]  # normalised to sum 1, one per style
    style_masks: tuple[str | None, ...] | None  # one per style (None: everywhere), or no masks at all
    color_preservation: str
    color_histogram: str
    model: str  # as requested: auto, vgg19, vgg19_caffe, vgg16_hed, random
    pooling: str
    calibration: str  # how features are scaled before the losses (nst.engine.calibration)
    precision: str
    normalization: str
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    size: int
    style_scale: float
    scales: tuple[int, ...]  # long sides, coarse to fine, ending at ``size``
    device: str
    cuda_graphs: bool = False  # on CUDA at fp32, evaluations replayed from CUDA graphs (nst.engine.cuda_graphs)


@dataclass(frozen=True)
class MemberSpec:
    """What one member of a batch sets for itself (the config keys of ``MEMBER_KEYS``)."""

    content_weight: float
    style_weight: float
    tv_weight: float
    content_layer_weights: tuple[float, ...] | None  # None: auto
    style_layer_weights: tuple[float, ...] | None  # None: auto (1e3/n^2 for n channels)
    optimizer: OptimizerSettings
    scale_epochs: tuple[int, ...]  # epochs at each of ``SharedSpec.scales``
    init: str
    seed: int
    progress: bool
    print_every: int = 0  # a line of per-layer losses every N evaluations; 0: none
    save_every: int = 0  # progress/<evaluation>.png in the run's folder every N evaluations; 0: none
    frame_every: int = 10  # a frame of the video and of MLflow's step slider every N evaluations
    video: bool = True  # optimisation.mp4 of those frames in the run's folder
    output: str = "result.png"  # the result image: a file name in the run's folder (or a path from it)

    @property
    def planned_evaluations(self) -> int:
        """The most evaluations the member's schedule can take, over all its scales."""
        return sum(self.optimizer.planned_evaluations(epochs) for epochs in self.scale_epochs)


@dataclass(frozen=True)
class RunSpec:
    """One job, checked. ``config`` is the resolved config as a plain dict and ``config_yaml`` its
    text: what ``config.yaml``, the MLflow params and the resume fingerprint record."""

    shared: SharedSpec
    member: MemberSpec
    config: Mapping[str, Any]
    config_yaml: str

    @property
    def schedule(self) -> list[tuple[int, int]]:
        """(long side, epochs) per scale, coarse to fine."""
        return list(zip(self.shared.scales, self.member.scale_epochs, strict=True))

    @property
    def batch_key(self) -> str:
        return batch_key(self.config)

    def layer_weights(self, channels: Mapping[str, int]) -> tuple[dict[str, float], dict[str, float]]:
        """Content and style layers with their weights, once the backbone's channels are known."""
        return (weighted(self.shared.content_layers, self.member.content_layer_weights),
                weighted(self.shared.style_layers, self.member.style_layer_weights,
                         [channels[n] for n in self.shared.style_layers]))


def weighted(layers: Sequence[str], weights: Sequence[float] | None,
             channels: Sequence[int] | None = None) -> dict[str, float]:
    """Pair layers with weights; ``None`` (auto) is 1e3/n^2 with ``channels`` (style), else 1."""
    if weights is None:
        weights = paper_style_layer_weights(channels) if channels is not None else [1.0] * len(layers)
    return dict(zip(layers, map(float, weights), strict=True))


def batch_key(config: Mapping[str, Any]) -> str:
    """Jobs with equal keys can share one batch: their configs differ only in ``MEMBER_KEYS``.

    ``config`` is a resolved config (a dict, or any mapping such as a DictConfig). The
    seed stays in the key for the random backbone, whose weights it determines.
    """
    container = {key: _plain(value) for key, value in config.items() if key != "hydra"}
    random_weights = container.get("model", {}).get("name") == "random"
    for key in MEMBER_KEYS:
        if key == "seed" and random_weights:
            continue
        *parents, leaf = key.split(".")
        node = container
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return json.dumps(container, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(item) for item in value]
    return value
