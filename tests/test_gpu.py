"""The GPU suite: what only a CUDA GPU can show. Run it on a GPU machine with one command,

    pytest -m gpu -v

(docs/gpu.md says what each test proves). Every test here is marked ``gpu``: excluded from the
default run, and skipped, never passed, without CUDA. Everything in it was written on a machine
without a GPU; the CPU tests next to it (``test_*_devices.py``) check the same decisions with
fakes, which is not CUDA coverage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from .conftest import REPO, SAMPLES, SHARED, SHARED_DATA, needs_shared

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LITE = REPO / "src" / "s3od" / "weights" / "s3od-lite.safetensors"
# Agreement with float32 on CPU (min IoU of the best masks, max mean |dp| per image): the
# bounds tests/test_runtime.py holds the trained model to on CPU.
MIN_IOU, MAX_MEAN_DIFF = 0.98, 0.01
JPEG = {"Content-Type": "image/jpeg"}


def _photos(count: int = 6) -> list[np.ndarray]:
    from s3od.imageio import load_image

    paths = []
    for source in ("davis2016", "sod-bsds300", "s3od-fixture"):
        paths += sorted((SHARED_DATA / source / "images").glob("*.jpg"))[: count // 3 or 1]
    return [load_image(p) for p in paths[:count]]


def _agreement(reference, other) -> tuple[float, float]:
    ious, diffs = [], []
    for (ref_masks, ref_iou), (masks, iou) in zip(reference, other, strict=True):
        a = ref_masks[int(np.argmax(ref_iou))] > 0.5
        b = masks[int(np.argmax(iou))] > 0.5
        ious.append(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))
        diffs.append(float(np.abs(ref_masks - masks).mean()))
    return min(ious), max(diffs)


@contextlib.contextmanager
def _tf32_convolutions() -> Iterator[None]:
    """cuDNN's default (TF32 float32 convolutions on Ampere+), whatever the session set."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        before = conv.fp32_precision
        conv.fp32_precision = "tf32"
        try:
            yield
        finally:
            conv.fp32_precision = before
    else:
        before = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = before


# --------------------------------------------------------------------------- training: DDP


@needs_shared
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("processes", [1, 2])
def test_ddp_over_nccl_trains_a_multi_mask_model(tmp_path, processes, precision):
    """Issue 16 #1: every logged value must be on the GPU for NCCL's all-reduce (a CPU tensor
    stopped every multi-mask run at step 1). One process still builds an NCCL process group;
    two need two GPUs."""
    if torch.cuda.device_count() < processes:
        pytest.skip(f"needs {processes} GPUs")
    cmd = [
        sys.executable, "-m", "synth_sod.model_training.train",
        "model=dino_tiny", "dataset=folders", "backend=1gpu", f"backend.devices={processes}",
        "backend.strategy=ddp", f"backend.precision={precision}", "backend.max_epochs=1",
        f"data_dir={SHARED}", f"base_dir={tmp_path / 'run'}",
        "dataset.datasets=[data/sod-bsds300,data/s3od-fixture]", "dataset.val_split=0.05",
        "dataset.image_size=64", "dataset.train_bs=4", "dataset.val_bs=4",
        "dataset.num_workers=2", "train_stage.experiment_name=gpu",
        "train_stage.progress_bar=false", "train_stage.limit_train_batches=4",
        "train_stage.limit_val_batches=2", "train_stage.num_sanity_val_steps=0",
        "train_stage.print_every_n_steps=1", "train_stage.checkpoint.every_n_train_steps=1",
        "train_stage.evaluation.enabled=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "distributed_backend=nccl" in text
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "gpu" / "last.ckpt",
                      map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    metrics = next((tmp_path / "run" / "logs" / "gpu").glob("version_*/metrics.csv")).read_text()
    assert "train_full_mask_lambda_epoch" in metrics and "val_iou" in metrics


# --------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def cpu_reference():
    from s3od import BackgroundRemoval

    photos = _photos()
    remover = BackgroundRemoval(str(LITE), device="cpu", precision="fp32")
    return photos, remover.predict_arrays(photos)


@needs_shared
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
def test_every_cuda_precision_agrees_with_fp32_and_keeps_the_fold(cpu_reference, precision):
    """Issues 16 #4, #7, #10: under cuDNN's default TF32 convolutions the batch-norm folding
    check must still accept the fold (it fell back to the unfolded model), ``auto`` must pick
    bf16 on the GPU that runs it, and each precision must agree with float32 on real photos."""
    from s3od import BackgroundRemoval

    photos, reference = cpu_reference
    torch.backends.cudnn.benchmark = False
    with _tf32_convolutions():
        remover = BackgroundRemoval(str(LITE), device="cuda", precision=precision)
        result = remover.predict_arrays(photos)
    assert torch.backends.cudnn.benchmark is True  # fixed-shape inference autotunes
    major, _ = torch.cuda.get_device_capability(remover.device)
    if precision == "auto":
        assert remover.precision == ("bf16" if major >= 8 else "fp16" if major >= 7 else "fp32")
    if remover.precision != "fp32":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in remover._forward.modules()), (
            "batch-norm folding fell back to the unfolded model")
    min_iou, max_mean_diff = _agreement(reference, result)
    assert min_iou >= MIN_IOU, f"{precision}: IoU {min_iou:.4f}"
    assert max_mean_diff <= MAX_MEAN_DIFF, f"{precision}: mean |dp| {max_mean_diff:.4f}"


# --------------------------------------------------------------------------- Ray bulk


def test_ray_bulk_on_one_gpu(tmp_path):
    """Issues 16 #2, #3, #5: ``cuda:1`` and two actors on a one-GPU cluster (an invalid ordinal
    in the actor, and a pool that never filled), then ``device=None``, which must reserve the
    GPU instead of running on the CPU."""
    ray = pytest.importorskip("ray", reason="needs the [ray] extra")
    from s3od.bulk import remove_backgrounds_ray

    src = tmp_path / "in"
    src.mkdir()
    for path in sorted(SAMPLES.glob("*.jpg")):
        shutil.copy(path, src / path.name)
    count = len(list(src.iterdir()))
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
    try:
        first = remove_backgrounds_ray(str(src), str(tmp_path / "out1"), model=str(LITE),
                                       device="cuda:1", num_actors=2, batch_size=1)
        assert (first.done, first.failed) == (count, [])
        second = remove_backgrounds_ray(str(src), str(tmp_path / "out2"), model=str(LITE),
                                        batch_size=2)
        assert (second.done, second.failed) == (count, [])
        from ray.util.state import list_actors

        reserved = [a for a in list_actors(detail=True, limit=1000)
                    if "RemovalActor" in str(getattr(a, "class_name", ""))
                    and (getattr(a, "required_resources", None) or {}).get("GPU")]
        assert reserved, "no bulk actor reserved a GPU"
    finally:
        ray.shutdown()
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == sorted(
        Path(p).with_suffix(".png").name for p in src.iterdir())


# --------------------------------------------------------------------------- server


def test_server_cuda_out_of_memory_is_503_and_the_memory_comes_back():
    """Issue 16 #14 with a real CUDA OOM: the per-process memory cap is set just above what
    the loaded model holds, so the next forward pass cannot allocate its activations."""
    from fastapi.testclient import TestClient

    from s3od import BackgroundRemoval
    from s3od.serving.app import create_app
    from s3od.serving.settings import ServerSettings

    remover = BackgroundRemoval(str(LITE), device="cuda", precision="fp32")
    data = (SAMPLES / "coffee.jpg").read_bytes()
    device = remover.device
    total = torch.cuda.get_device_properties(device).total_memory
    with TestClient(create_app(ServerSettings(), remover)) as client:
        assert client.post("/v1/remove", content=data, headers=JPEG).status_code == 200
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated(device)
        try:
            torch.cuda.set_per_process_memory_fraction((baseline + (1 << 20)) / total, device)
            r = client.post("/v1/remove", content=data, headers=JPEG)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "out_of_memory" and "retry-after" in r.headers
        assert torch.cuda.memory_allocated(device) <= baseline + (1 << 20)
        assert client.post("/v1/remove", content=data, headers=JPEG).status_code == 200
        assert client.get("/healthz").json()["batches"]["out_of_memory"] == 1


def test_compiled_server_compiles_every_batch_size_at_start_up():
    """Issue 16 #12: with ``compile`` the lifespan hook compiles each padded batch size; no
    request compiles anything."""
    from fastapi.testclient import TestClient

    from s3od.serving.app import create_app
    from s3od.serving.settings import ServerSettings

    settings = ServerSettings(model=str(LITE), device="cuda", compile=True, max_batch=2,
                              max_concurrency=2)
    app = create_app(settings)
    timer = app.state.remover._forward  # s3od.runtime.CompileTimer
    assert timer.seconds == {}
    with TestClient(app) as client:
        compiled = set(timer.seconds)
        assert sorted(shape[0] for shape in compiled) == [1, 2]
        for _ in range(2):
            r = client.post("/v1/remove", content=(SAMPLES / "cat.jpg").read_bytes(),
                            headers=JPEG)
            assert r.status_code == 200
        assert set(timer.seconds) == compiled
