"""A synthetic store for nst-review: finished sweeps of small random pictures, as nst logs them, and the
judgement API called as the page calls it."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
from PIL import Image

from nst.compare import review
from nst.images import measures
from nst.tracking import store, tags

BETAS = ("0.01", "1", "100", "10000")


def picture(seed: int, size=(24, 18)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def synthetic_sweep(client, experiment_id: str, betas=BETAS, measured: bool = True,
                    seeds=None, folder: Path | None = None) -> tuple[str, list[str]]:
    """A finished sweep as nst records one: a parent (its sweep folder ``folder``) and a FINISHED child per β
    with its images."""
    sweep_id = uuid.uuid4().hex[:8]
    parent = client.create_run(experiment_id, run_name=f"sweep {sweep_id}", tags={
        tags.TAG_ROLE: "sweep", tags.TAG_SWEEP: sweep_id, tags.TAG_SWEEP_DIR: str(folder or ""),
        tags.TAG_SWEPT: json.dumps({"loss.style_weight": True})}).info.run_id
    children, seeds = [], seeds or range(len(betas))
    for job, (beta, seed) in enumerate(zip(betas, seeds, strict=True)):
        run = client.create_run(experiment_id, tags={
            tags.TAG_ROLE: "run", tags.PARENT_TAG: parent, tags.TAG_JOB: str(job),
            tags.TAG_OVERRIDES: json.dumps([f"loss.style_weight={beta}"])}).info.run_id
        for key, value in {"content": "tubingen", "style": "starry_night", "loss.style_weight": beta,
                           "loss.content_weight": "1", "image.size": "24"}.items():
            client.log_param(run, key, value)
        client.log_image(run, picture(seed), artifact_file="result/result.png")
        client.log_image(run, picture(100), artifact_file="inputs/content.png")
        client.log_image(run, picture(200), artifact_file="inputs/style.png")
        if measured:
            for name, value in measures.measure(picture(seed), picture(100), picture(200)).items():
                client.log_metric(run, name, value)
        client.set_terminated(run, "FINISHED")
        children.append(run)
    client.set_terminated(parent, "FINISHED")
    return parent, children


def review_world(tmp_path: Path) -> dict:
    """A store with experiment nst holding one 4-run sweep, and experiment other holding one run; their
    artifacts under ``tmp_path`` too."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.open_store(uri, create=True, artifact_root=(tmp_path / "mlartifacts").as_uri())
    experiment = client.create_experiment("nst", artifact_location=(tmp_path / "mlartifacts" / "nst").as_uri())
    (tmp_path / "sweep").mkdir()
    parent, children = synthetic_sweep(client, experiment, folder=tmp_path / "sweep")
    other = client.create_run(client.create_experiment(
        "other", artifact_location=(tmp_path / "mlartifacts" / "other").as_uri())).info.run_id
    return {"uri": uri, "client": client, "experiment": experiment, "parent": parent, "children": children,
            "other": other, "folder": tmp_path / "images"}


def judge(client, chosen, answer="left", reviewer="ana", judgement_id=None, pair=None):
    """POST a judgement to the app's test ``client`` (the first two runs of ``chosen`` unless ``pair``)."""
    left, right = pair or chosen.ids[:2]
    return client.post("/api/judgements", json={"id": judgement_id or uuid.uuid4().hex, "left": left,
                                                "right": right, "answer": answer, "reviewer": reviewer})


def damage(client, home: str, content: bytes, age_s: float = 60) -> str:
    """A damaged judgement file holding ``content`` on run ``home``, last written ``age_s`` seconds ago (not one
    another app is still copying); its path under the run's artifacts, ``judgements/<id>.json``."""
    name = f"{uuid.uuid4().hex}.json"
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / name).write_bytes(content)
        client.log_artifact(home, str(Path(scratch) / name), review.JUDGEMENTS)
    stored = Path(url2pathname(urlparse(client.get_run(home).info.artifact_uri).path)) / review.JUDGEMENTS / name
    then = time.time() - age_s
    os.utime(stored, (then, then))
    return f"{review.JUDGEMENTS}/{name}"


def published(client, home: str) -> list[str]:
    """The ids in the home run's published ``human/judgements.jsonl``, in its order."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(client.download_artifacts(home, f"{review.HUMAN}/judgements.jsonl", scratch))
        return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line]
