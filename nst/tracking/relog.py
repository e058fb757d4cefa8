"""``nst-report --relog <folder>``: a run the store could not record when it ended, recorded from its folder.

A run whose store refused it (locked beyond the wait, a full disk) keeps its files:
config.yaml, run.json, losses.csv and its result. ``relog`` reads from config.yaml where
the run was to be recorded, finds the MLflow run nst created for the folder (by its
``nst.output_dir`` tag) and completes it with what the store lacks; a folder without a
run gets a new one. The config was checked when the run ran, so only the few values
needed here are read, directly (the config parser is ``nst.jobs``', a higher layer).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nst.engine.run_files import CONFIG_YAML, LOSSES_CSV, RECORD_JSON, RESULT_PNG, result_png
from nst.errors import TrackingError
from nst.figures.grid import triptych
from nst.images import measures
from nst.images.files import load_image, pil_to_tensor, tensor_to_pil
from nst.tracking import ownership, store, tags
from nst.tracking.recorder import RunRecorder, metrics
from nst.tracking.steps import PROGRESS, StepGrid
from nst.tracking.store import TrackingSpec

DEFAULT_FRAME_EVERY = 10  # frame_every's default, for a config that has neither it nor tracking.log_every


def relog(folder: Path) -> tuple[str, bool]:
    """Record the run whose files are in ``folder`` in the store its config names; its run id, and whether
    anything was recorded now (False: the run had ended by itself, and is left as it is).

    A run ended FAILED only because its process was gone, or ended otherwise than its folder's run.json
    says, is completed from the folder.
    """
    folder = Path(folder).resolve()
    tracking, frame_every = _settings(folder)
    client, experiment_id = store.connect(tracking, create=False)
    return _record(client, experiment_id, folder, frame_every)


def _settings(folder: Path) -> tuple[TrackingSpec, int]:
    """Where the run in ``folder`` was to be recorded, and its frames' interval, from its config.yaml; a
    missing or odd value is one ``TrackingError`` line naming it."""
    path = folder / CONFIG_YAML
    if not path.is_file():
        raise TrackingError(f"{folder} holds no {CONFIG_YAML}: not the folder of an nst run")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - YAML's and OmegaConf's many errors
        raise TrackingError(f"{path} cannot be read: {_first_line(exc)}") from exc

    def value(key: str, kinds: tuple[type, ...], wanted: str):
        try:
            found = OmegaConf.select(cfg, key)
        except Exception as exc:  # noqa: BLE001 - an interpolation that no longer resolves
            raise TrackingError(f"{path}: {key} cannot be read: {_first_line(exc)}") from exc
        if found is not None and type(found) not in kinds:  # type(), not isinstance(): true is no number
            raise TrackingError(f"{path}: {key}={found!r} is not {wanted}")
        return found

    def text(key: str) -> str | None:
        found = value(key, (str, int, float), "a text")
        return str(found) if found not in (None, "") else None

    if not value("tracking.enabled", (bool,), "true or false"):
        raise TrackingError(f"{folder} was run with tracking=none: there is no store to record it in")
    output_dir = Path(text("paths.output_dir") or "outputs")
    if not output_dir.is_absolute():  # relative to where the run was started: the folder's ancestor of that name
        output_dir = next((parent for parent in folder.parents
                           if parent.as_posix().endswith("/" + output_dir.as_posix().strip("./"))), output_dir)
    # frame_every, or the tracking.log_every of a run recorded before the key moved
    number = (int, float)  # the run's check allowed 10.0
    every = value("frame_every", number, "a number") or value("tracking.log_every", number, "a number")
    if every is not None and not (float(every).is_integer() and every >= 1):
        raise TrackingError(f"{path}: frame_every={every!r} is not a whole number >= 1")
    tracking = TrackingSpec(enabled=True, uri=text("tracking.uri"), artifact_location=text("tracking.artifact_location"),
                            experiment=text("tracking.experiment") or store.DEFAULT_EXPERIMENT,
                            resume=False, output_dir=str(output_dir))  # resume: relog reuses no other run
    return tracking, int(every or DEFAULT_FRAME_EVERY)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _record(client, experiment_id: str, folder: Path, frame_every: int) -> tuple[str, bool]:
    """The run of ``folder`` (``relog``) completed in ``client``'s store: the metrics the store lacks, the
    result, the folder, its status."""
    if not (folder / RECORD_JSON).is_file():
        raise TrackingError(f"{folder} holds no {RECORD_JSON}: not the folder of a run that ended "
                            f"(nothing to record)")
    record = json.loads((folder / RECORD_JSON).read_text())
    import pandas as pd  # 0.7 s to import: only when a folder is recorded again

    history = pd.read_csv(folder / LOSSES_CSV).to_dict("records") if (folder / LOSSES_CSV).is_file() else []
    run = _folder_run(client, experiment_id, folder)
    if run is not None and not _needs_recording(run, record):
        return run.info.run_id, False
    if run is None:
        run_id = client.create_run(experiment_id, run_name=folder.name, tags={
            tags.TAG_ROLE: "run", tags.TAG_OUTPUT_DIR: str(folder), **store.environment_tags()}).info.run_id
    else:
        run_id = run.info.run_id
        if tags.TAG_FAILURE in run.data.tags:
            client.delete_tag(run_id, tags.TAG_FAILURE)
    grid = StepGrid.of(run.data.tags) if run is not None else None
    grid = grid or StepGrid.planned(frame_every, max(1, len(history)))
    logged = {metric.step for metric in client.get_metric_history(run_id, "total")}
    now = int(time.time() * 1000)
    recorder = RunRecorder(client, run_id, folder, grid,
                           last_step=max(store.step_images(client, run_id, PROGRESS), default=None),
                           pending=[m for row in history if int(row["evaluation"]) not in logged
                                    for m in metrics(row, now, record.get("loss_weights"))])
    client.set_tag(run_id, tags.TAG_RELOGGED, ownership.now_iso())
    if record.get("status") == "FINISHED" and result_png(folder, record).is_file():
        image = pil_to_tensor(load_image(result_png(folder, record), "result"))
        inputs = _logged_inputs(client, run_id)
        overview = triptych(*inputs, image) if inputs else None
        measured = record.get("measures") or (measures.measure(tensor_to_pil(image), *map(tensor_to_pil, inputs))
                                              if inputs else None)
        recorder.end_with(lambda: recorder.log_result(image, history, int(record["evaluations"]), overview,
                                                      measured=measured, stopped=record.get("stopped")),
                          "FINISHED")
    else:
        reason = record.get("failure") or f"the run did not finish (no {RESULT_PNG})"

        def failed() -> None:
            client.set_tag(run_id, tags.TAG_FAILURE, reason[:5000])
            recorder.keep_outputs(None, [])

        recorder.end_with(failed, "KILLED" if record.get("status") == "KILLED" else "FAILED")
    return run_id, True


def _needs_recording(run, record: dict) -> bool:
    """Whether the store's run lacks what the folder holds: it never ended, was ended only because its
    process was gone, or ended otherwise than the folder's run.json says it did (a signal that came while
    the run's end was recorded)."""
    if run.info.status == "RUNNING" or store.ended_as_dead(run):
        return True
    return record.get("status") == "FINISHED" and run.info.status != "FINISHED"


def _logged_inputs(client, run_id: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The content and (first) style images the run logged when it started, if it did."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            content, style = (pil_to_tensor(load_image(client.download_artifacts(run_id, f"inputs/{name}.png", scratch)))
                              for name in ("content", "style"))
        except Exception:  # noqa: BLE001 - a run created by the relog itself has no inputs
            return None
    return content, style


def _folder_run(client, experiment_id: str, folder: Path):
    """The newest run nst created for ``folder``, or None."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{tags.TAG_OUTPUT_DIR}` = '{folder}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None
