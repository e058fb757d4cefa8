"""hydra/launcher=batched (nst/jobs/launcher.py): compatible jobs grouped into one batch, each member its own
folder and MLflow run; Ray workers' environment."""

from omegaconf import OmegaConf

from nst.engine.spec import batch_key
from nst.jobs.launcher import group_jobs
from tests.helpers.overrides import STYLE_LAYERS, SWEEP_JOB
from tests.helpers.store import artifact_paths, runs, store_client


def cfg(**over):
    base = {"content": "a.png", "style": "b.png", "seed": 0, "epochs": 5, "init": "content",
            "model": {"name": "vgg16_hed"}, "image": {"size": 64},
            "loss": {"style_weight": 100, "content_weight": 1, "tv_weight": 0, "style_layers": STYLE_LAYERS},
            "optimizer": {"name": "lbfgs", "lr": 1}, "hydra": {"job": {"num": 0}}}
    conf = OmegaConf.create(base)
    for key, value in over.items():
        OmegaConf.update(conf, key, value)
    return conf


def test_jobs_differing_only_in_member_values_share_a_batch():
    members = [cfg(), cfg(**{"loss.style_weight": 1e4}), cfg(**{"optimizer.lr": 0.5, "seed": 3}),
               cfg(epochs=9, init="noise", **{"optimizer.name": "adam", "hydra.job.num": 4})]
    assert len({batch_key(c) for c in members}) == 1
    others = [cfg(content="c.png"), cfg(**{"image.size": 128}), cfg(**{"loss.style_layers": STYLE_LAYERS[:2]}),
              cfg(**{"model.name": "random"}), cfg(**{"model.name": "random", "seed": 1})]
    assert len({batch_key(c) for c in members[:1] + others}) == 6  # the random backbone's seed is its weights
    configs = [members[0], others[0], members[1], members[2], None, members[3]]
    assert group_jobs(configs, max_batch=8) == [[0, 2, 3, 5], [1]]
    assert group_jobs(configs, max_batch=2) == [[0, 2], [1], [3, 5]]


def test_batched_launcher_gives_each_member_its_own_folder_and_mlflow_run(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    sweep = ["-m", "hydra/launcher=batched", *SWEEP_JOB, "loss.style_weight=1,100,1e4", "optimizer.lr=1,0.5"]
    done = nst(out, *sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batch of 6 jobs" in done.stdout + done.stderr
    client = store_client(out)
    children, parent = runs(client, "run", "FINISHED"), runs(client, "sweep", "FINISHED")[0]
    assert len(children) == 6
    assert sorted((float(c.data.params["loss.style_weight"]), float(c.data.params["optimizer.lr"]))
                  for c in children) == sorted((b, lr) for b in (1, 100, 1e4) for lr in (1, 0.5))
    finals = set()
    for child in children:
        run_id = child.info.run_id
        assert child.data.params["run.batch_size"] == "6"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        evaluations = int(child.data.metrics["evaluations"])
        assert [m.step for m in client.get_metric_history(run_id, "total")] == list(range(1, evaluations + 1))
        assert {"result/result.png", "result/triptych.png", "result.png", "losses.csv",
                ".hydra/overrides.yaml"} <= set(artifact_paths(client, run_id))
        finals.add(round(child.data.metrics["total"], 6))
        folder = out / "multiruns"
        (job_dir,) = [p for p in folder.glob("*/*") if p.name == child.data.tags["nst.job_num"]]
        assert (job_dir / "result.png").is_file()
        job_cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        assert float(job_cfg.loss.style_weight) == float(child.data.params["loss.style_weight"])
        assert float(job_cfg.optimizer.lr) == float(child.data.params["optimizer.lr"])
    assert len(finals) == 6  # six different optimisations, not one copied six times
    assert "sweep/grid.png" in artifact_paths(client, parent.info.run_id)

    again = nst(out, *sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped, identical config already FINISHED") == 6
    assert len(runs(client, "run", "FINISHED")) == 6


def test_ray_workers_get_nst_variables_and_an_absolute_output_folder(monkeypatch, tmp_path):
    from nst.jobs.launcher import ray_environment

    monkeypatch.setenv("NST_ASSETS_DIR", "/data/assets")
    monkeypatch.delenv("NST_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    environment = ray_environment(OmegaConf.create({"paths": {"output_dir": "outputs"}}))
    assert environment["NST_ASSETS_DIR"] == "/data/assets" and "NST_OFFLINE" not in environment
    assert environment["NST_OUTPUT_DIR"] == str(tmp_path / "outputs")
