"""One style-transfer run, or a batch of them, from checked inputs to files on disk.

``execute_batch`` takes the members of a batch (jobs whose specs share a ``batch_key``),
loads and calibrates the backbone once, optimises them together (``nst.engine.scales``)
and writes each member's files (``nst.engine.run_files``); ``execute`` is a batch of one.
Whoever records a run passes per-evaluation callbacks and an ``on_ready`` hook: the engine
knows nothing of Hydra or MLflow.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nst import interrupts, phases
from nst.engine import reuse, yardstick
from nst.engine.backbones import Backbone
from nst.engine.calibration import calibrate
from nst.engine.inputs import Inputs, check_batch_memory
from nst.engine.losses import LossWeights
from nst.engine.optimization import EvaluationCallback, OptimizationResult
from nst.engine.run_files import (
    LAST_FINITE_PNG,
    LOSSES_CSV,
    PARTIAL_PNG,
    RECORD_JSON,
    result_png,
    write_config,
    write_losses,
    write_record,
    writing,
)
from nst.engine.scales import optimize_scales
from nst.engine.weights import load_backbone
from nst.errors import NonFiniteLossError
from nst.images import measures
from nst.images.files import save_png, tensor_to_pil

log = logging.getLogger(__name__)

# a style layer is stuck when its term moved by less than 0.01 % over STUCK_WINDOW evaluations in which the
# total loss fell by more than STUCK_LOSS_FALL
STUCK_WINDOW = 25
STUCK_LOSS_FALL = 0.01


@dataclass
class Member:
    """One member of a batch: a job's checked inputs, its run folder, and what it reports to."""

    inputs: Inputs
    output_dir: Path
    callbacks: Sequence[EvaluationCallback] = ()
    on_ready: Callable[[dict], None] | None = None  # receives the run record just before optimising
    # receives the member's outcome once its files are written (and returns what the caller gets); an
    # interrupt waits until it has returned, so whoever records the run records the files as they are
    on_end: Callable[[RunOutcome | BaseException], RunOutcome | BaseException] | None = None


class StuckLayers:
    """An evaluation callback that notices a style layer whose term has stopped moving while the loss falls.

    Such a layer's units are (nearly) all off on the image, so little gradient reaches it and the result
    lacks its part of the style; the optimiser revives a layer whose units are all off
    (``StyleTransferLoss.revived``), and this says when one stays stuck anyway: one warning per layer,
    and ``found`` (layer -> the evaluation it was noticed at) for the run record.
    """

    def __init__(self, layers: Sequence[str], window: int = STUCK_WINDOW):
        self.layers, self.window = list(layers), window
        self.recent: list[dict] = []
        self.found: dict[str, int] = {}

    def __call__(self, record: dict, _image: torch.Tensor) -> None:
        self.recent = [*self.recent[-self.window:], record]
        if len(self.recent) <= self.window:
            return
        first, last = self.recent[0], self.recent[-1]
        if last["total"] > (1 - STUCK_LOSS_FALL) * first["total"]:
            return  # the loss itself is not moving: nothing stands out
        for layer in self.layers:
            values = [r[f"style/{layer}"] for r in self.recent]
            if layer not in self.found and values[-1] > 0 and max(values) - min(values) <= 1e-4 * values[-1]:
                self.found[layer] = int(last["evaluation"])
                log.warning("style/%s has stayed at %.4g for %d evaluations while the loss fell by %.0f %%: the "
                            "image's units there are (nearly) all off, so the result lacks that layer's part of "
                            "the style", layer, values[-1], self.window,
                            100 * (1 - last["total"] / first["total"]))


@dataclass
class RunOutcome:
    """A run that finished: its folder, the optimisation's result, the backbone used, its run record."""

    output_dir: Path
    optimization: OptimizationResult
    backbone: Backbone
    record: dict = field(default_factory=dict)

    @property
    def result_png(self) -> Path:
        """The result image as written (config ``output``, ``result.png`` by default)."""
        return result_png(self.output_dir, self.record)


def execute(inputs: Inputs, output_dir: Path, callbacks: Sequence[EvaluationCallback] = (),
            on_ready: Callable[[dict], None] | None = None) -> RunOutcome:
    """One run: load the backbone, optimise, write its files; raises what stopped it."""
    (outcome,) = execute_batch([Member(inputs, Path(output_dir), callbacks, on_ready)])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def execute_batch(members: Sequence[Member]) -> list[RunOutcome | BaseException]:
    """Run the members of a batch together: one backbone and one set of targets serve them all.

    Each keeps its own weights, optimiser, epochs and init, and writes its own files. A
    member whose loss became non-finite gets its ``NonFiniteLossError`` in the returned list
    (the others go on); anything else that goes wrong is raised.
    """
    first = members[0].inputs
    if len(members) > 1:
        check_batch_memory(first, len(members))
    for member in members:
        write_config(member.output_dir, member.inputs.spec.config_yaml)
    records: list[dict] = [{} for _ in members]
    trails = [Trail() for _ in members]
    try:
        return _run_batch(members, records, trails)
    except KeyboardInterrupt as exc:
        for member, record, trail in zip(members, records, trails, strict=True):
            _write_interrupted(member, record, trail, exc)
        raise


def _run_batch(members: Sequence[Member], records: list[dict], trails: list[Trail]) -> list[RunOutcome | BaseException]:
    """``execute_batch``'s work: each member's run record is filled in ``records`` and its evaluations are
    followed by its ``Trail``, so an interrupt can still write what the members had."""
    first = members[0].inputs
    backbone = _load_backbone(first)
    weights = LossWeights.stack([member_weights(member.inputs) for member in members], first.device)
    for member, record in zip(members, records, strict=True):
        record.update(run_record(member.inputs, backbone), batch_size=len(members))
        if member.on_ready is not None:
            member.on_ready(record)
    watches = [StuckLayers(member.inputs.style_layers) for member in members]
    # the trail first: an interrupt in a later callback still finds the evaluation in losses.csv
    callbacks = [[trail, *m.callbacks, watch] for m, watch, trail in zip(members, watches, trails, strict=True)]
    optimized = optimize_scales([m.inputs for m in members], callbacks, backbone, weights)
    outcomes = []
    with interrupts.held():
        for member, record, result, watch in zip(members, records, optimized, watches, strict=True):
            if watch.found:
                record["stuck_layers"] = watch.found
            with writing(member.output_dir):
                outcome = _write_outcome(member, record, backbone, result)
            phases.lap(phases.FILES)
            outcomes.append(member.on_end(outcome) if member.on_end is not None else outcome)
    return outcomes


class Trail:
    """An evaluation callback that keeps a member's evaluations so far and its latest image."""

    def __init__(self) -> None:
        self.history: list[dict] = []
        self.image: torch.Tensor | None = None

    def __call__(self, record: dict, image: torch.Tensor) -> None:
        self.history.append(record)
        self.image = image
        interrupts.check()  # an interrupt Python dropped stops the run at the next evaluation


def _write_interrupted(member: Member, record: dict, trail: Trail, interrupt: KeyboardInterrupt) -> None:
    """An interrupted member's folder: its latest image as partial.png, losses.csv so far and run.json with
    status KILLED; a member whose result was written already keeps it. A file that cannot be written is
    logged: the interrupt is what the caller must see."""
    folder = member.output_dir
    if record.get("status") == "FINISHED" and (folder / RECORD_JSON).is_file():
        return
    record.update(status="KILLED", failure=f"interrupted ({interrupt or 'SIGINT'})", evaluations=len(trail.history))
    try:
        if trail.image is not None:
            save_png(trail.image, folder / PARTIAL_PNG)
        write_losses(folder / LOSSES_CSV, trail.history)
        write_record(folder, record)
    except OSError as exc:
        log.warning("could not keep the interrupted run's files in %s: %s", folder, exc)


def member_weights(inputs: Inputs) -> dict:
    """The loss weights of one member (alpha, beta, TV, per layer), for ``LossWeights.stack``."""
    member = inputs.spec.member
    return {"content": member.content_weight, "style": member.style_weight, "tv": member.tv_weight,
            "content_layers": inputs.content_layers, "style_layers": inputs.style_layers}


def _load_backbone(inputs: Inputs) -> Backbone:
    """The network cut after the deepest layer in use, calibrated, recorded with what was asked for and why;
    built once for the batches of this process that share it (``nst.engine.reuse``)."""
    built = reuse.backbones.get(inputs.spec.batch_key, lambda: _build_backbone(inputs))
    return dataclasses.replace(built, requested=inputs.spec.shared.model,
                               notes=inputs.backbone_notes + built.notes)


def _build_backbone(inputs: Inputs) -> Backbone:
    shared = inputs.spec.shared
    layers = [*inputs.content_layers, *inputs.style_layers]
    backbone = load_backbone(inputs.backbone_name, layers, shared.pooling, inputs.device, inputs.spec.member.seed)
    phases.lap(phases.BACKBONE)
    backbone.calibration = calibrate(backbone, shared.calibration, [inputs.content, *inputs.styles],
                                     [inputs.content_path, *inputs.style_paths]).record()
    phases.lap(phases.CALIBRATION)
    return backbone


def _write_outcome(member: Member, record: dict, backbone: Backbone,
                   result: OptimizationResult | BaseException) -> RunOutcome | BaseException:
    """Write a member's files: result.png (or last_finite.png), losses.csv and run.json."""
    folder = member.output_dir
    if isinstance(result, NonFiniteLossError):
        save_png(result.last_finite_image, folder / LAST_FINITE_PNG)
        write_losses(folder / LOSSES_CSV, result.history)
        record.update(status="FAILED", failure=str(result))
        write_record(folder, record)
        return result
    if isinstance(result, BaseException):
        raise result
    output = member.inputs.spec.member.output
    image = folder / output
    image.parent.mkdir(parents=True, exist_ok=True)
    save_png(result.image, image)
    write_losses(folder / LOSSES_CSV, result.history)
    record.update(status="FINISHED", result=output, evaluations=result.evaluations, stopped=result.stopped,
                  elapsed_s=round(result.elapsed_s, 3),
                  final_losses={k: v for k, v in result.final.items() if k not in ("evaluation", "epoch")},
                  measures=measure_result(member.inputs, backbone, result.image))
    write_record(folder, record)
    log.debug("wrote %s", image)  # the job driver says where the result is, once
    return RunOutcome(folder, result, backbone, record)


def measure_result(inputs: Inputs, backbone: Backbone, image: torch.Tensor) -> dict[str, float]:
    """The result's automatic measures (``nst.images.measures`` and ``nst.engine.yardstick``), by metric name:
    the same numbers for every run, whatever its weights and layers, so that runs and searches compare."""
    pictures = (tensor_to_pil(x) for x in (image, inputs.content, inputs.style))
    return {**measures.measure(*pictures), **yardstick.measure(inputs, backbone, image)}


def run_record(inputs: Inputs, backbone: Backbone) -> dict:
    """What a reader needs to interpret the numbers: backbone, weights, normalisation, versions."""
    return {
        **backbone.record(),
        "normalization": inputs.spec.shared.normalization,
        "loss_weights": {key: getattr(inputs.spec.member, f"{key}_weight") for key in ("content", "style", "tv")},
        "optimizer_space": inputs.spec.member.optimizer.space,
        "content_layers": inputs.content_layers,
        "style_layers": inputs.style_layers,
        "content_image": str(inputs.content_path),
        "style_image": str(inputs.style_path),
        "content_size": list(inputs.content.shape[-2:]),
        "style_size": list(inputs.style.shape[-2:]),
        **({"style_images": [str(p) for p in inputs.style_paths], "style_blend": inputs.style_blend}
           if len(inputs.style_paths) > 1 else {}),
        **({"style_masks": [None if p is None else str(p) for p in inputs.mask_paths]}
           if inputs.mask_paths is not None else {}),
        "color_preservation": inputs.spec.shared.color_preservation,
        "device": str(inputs.device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
