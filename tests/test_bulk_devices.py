"""Ray bulk removal on GPUs, decided on CPU: which device an actor uses and how big the actor
pool may grow, with Ray's GPU ids and the cluster's resources faked. No actor starts here;
tests/test_gpu.py runs the pipeline on a real GPU.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="needs the [ray] extra")

from s3od.bulk import pipeline  # noqa: E402
from s3od.bulk.pipeline import BulkInputError, actor_device, plan_actors  # noqa: E402

from .conftest import SAMPLES  # noqa: E402


@pytest.mark.parametrize("requested,gpu_ids,expected", [
    ("cuda:1", [1], "cuda:0"),   # Ray reserved GPU 1: the actor sees it as its only GPU, 0
    ("cuda", [3], "cuda:0"),
    (None, [2], "cuda:0"),
    (None, [], "cpu"),           # nothing reserved: not an unreserved GPU that may be busy
    ("cpu", [0], "cpu"),
    ("cuda", [], "cuda"),        # gpus_per_actor=0 with CUDA asked for explicitly
])
def test_actor_device_is_the_gpu_ray_reserved(requested, gpu_ids, expected):
    assert actor_device(requested, gpu_ids) == expected


def test_actor_loads_the_model_on_its_reserved_gpu_with_the_run_options(monkeypatch):
    import s3od.loading

    loaded = {}

    def load_remover(model, **kwargs):
        loaded.update(kwargs, model=model)
        return object()

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [1])
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    monkeypatch.setattr(s3od.loading, "load_remover", load_remover)
    actor = pipeline._RemovalActor(["weights"], 320, "cuda:1", [], None, "png",
                                   pipeline.RenderOptions(), precision="bf16", compile=True)
    assert actor.device == "cuda:0"
    # threads: the thread policy's share for an actor that reserved one CPU (issue 24)
    assert loaded == {"model": "weights", "device": "cuda:0", "precision": "bf16",
                      "compile": True, "image_size": 320, "threads": 1}


def test_actor_threads_come_from_its_reservation_unless_given(monkeypatch):
    import s3od.loading
    from s3od import threads as policy

    loaded: list[dict] = []
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    monkeypatch.setattr(s3od.loading, "load_remover",
                        lambda model, **kwargs: loaded.append(kwargs) or object())
    monkeypatch.setattr(policy, "cpu_budget", lambda **_: policy.CpuBudget(16))
    for extra in ({"cpus_per_actor": 4.0, "num_actors": 8}, {"cpus_per_actor": 0.0,
                                                             "num_actors": 4},
                  {"threads": 3, "cpus_per_actor": 4.0}):
        pipeline._RemovalActor(["w"], None, "cpu", [], None, "png", pipeline.RenderOptions(),
                               **extra)
    assert [k["threads"] for k in loaded] == [4, 4, 3]


@pytest.mark.parametrize("device,num_actors,resources,expected", [
    # --ray-actors 2 --device cuda on a 1-GPU cluster: one actor, not a pool that never fills
    ("cuda", 2, {"CPU": 16, "GPU": 1}, ("cuda", 1.0, 1, 1)),
    ("cuda:1", 4, {"CPU": 16, "GPU": 8}, ("cuda", 1.0, 1, 4)),
    (None, 4, {"CPU": 16, "GPU": 2}, ("cuda", 1.0, 1, 2)),   # GPUs there: use them
    (None, 4, {"CPU": 3}, ("cpu", 0.0, 1, 3)),               # CPU-only: one actor per CPU
    ("cpu", 2, {"CPU": 16, "GPU": 4}, ("cpu", 0.0, 1, 2)),
])
def test_actor_pool_fits_the_cluster(device, num_actors, resources, expected):
    plan = plan_actors(device, num_actors, 100, 1.0, None, resources)
    assert (plan.device, plan.gpus, plan.min_size, plan.max_size) == expected


def test_actor_pool_with_fractional_gpus_and_few_batches():
    assert plan_actors("cuda", 8, 100, 1.0, 0.5, {"CPU": 16, "GPU": 1}).max_size == 2
    assert plan_actors("cuda", 8, 3, 1.0, None, {"CPU": 16, "GPU": 8}).max_size == 3


def test_cuda_on_a_cluster_without_gpus_is_refused():
    with pytest.raises(BulkInputError, match="has 0"):
        plan_actors("cuda", 2, 10, 1.0, None, {"CPU": 16})


def test_cli_hands_precision_and_compile_to_the_ray_pipeline(monkeypatch, tmp_path):
    seen = {}

    def remove_backgrounds_ray(inputs, output, **kwargs):
        seen.update(kwargs)
        return pipeline.BulkSummary(output=output, done=1)

    monkeypatch.setattr(pipeline, "remove_backgrounds_ray", remove_backgrounds_ray)
    from s3od.cli import app

    result = CliRunner().invoke(app, ["remove", str(SAMPLES / "cat.jpg"), "-o",
                                      str(tmp_path / "out"), "--ray", "local", "--device",
                                      "cuda", "--precision", "bf16", "--compile"])
    assert result.exit_code == 0, result.output
    assert (seen["precision"], seen["compile"], seen["device"]) == ("bf16", True, "cuda")
