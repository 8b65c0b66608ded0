"""Publishing a model as a hub repository: folder round trip, card, upload to a local stand-in.

No hub is reachable here: uploads go to :mod:`tests.hub_recorder` on 127.0.0.1, which records
every request, so the tests assert on the repo and the commit the client would create.
"""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from .conftest import SAMPLES
from .hub_recorder import recording_hub

pytest.importorskip("huggingface_hub")

LITE = {"features": 16, "mask_upsample_features": 16, "mask_inter_features": 8}
#: Small copies of the sample photos: the checks compare masks, not quality, and the CI
#: machine is shared, so every forward pass counts.
SMALL = (160, 120)


def small_photos(count: int = 1) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB").resize(SMALL))
            for p in sorted(SAMPLES.glob("*.jpg"))[:count]]


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory) -> Path:
    """A Lightning-style checkpoint of a small lite model, as training leaves it."""
    from s3od.modeling import LiteSegmentation

    torch.manual_seed(0)
    model = LiteSegmentation(**LITE).eval()
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"architecture": "lite", "config": LITE}}, path)
    return path


@pytest.fixture(scope="module")
def results_json(tmp_path_factory, lightning_ckpt) -> Path:
    """A real `s3od benchmark --out` file: the checkpoint scored on two sample photos."""
    from PIL import Image

    from s3od.evaluation.api import benchmark_model
    from s3od.evaluation.report import write_reports

    root = tmp_path_factory.mktemp("bench")
    data = root / "Samples"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i, photo in enumerate(small_photos(2)):
        image = Image.fromarray(photo)
        image.save(data / "images" / f"s{i}.jpg")
        mask = np.zeros((image.height, image.width), np.uint8)
        mask[image.height // 4: 3 * image.height // 4, image.width // 4: 3 * image.width // 4] = 255
        Image.fromarray(mask).save(data / "masks" / f"s{i}.png")
    rows = benchmark_model(str(lightning_ckpt), data, batch_size=2)
    return write_reports(rows, root / "results")[1]


def test_saved_folder_loads_with_the_same_masks_and_its_card_carries_the_metrics(
        tmp_path, lightning_ckpt, results_json) -> None:
    from huggingface_hub import ModelCard

    from s3od import BackgroundRemoval
    from s3od.publish import CardInfo, save_pretrained

    folder = save_pretrained(lightning_ckpt, tmp_path / "repo", benchmark=results_json,
                             card=CardInfo(repo_id="me/my-lite", datasets=["me/photos"]))
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json",
                                                         "model.safetensors"]
    loaded, reference = (BackgroundRemoval(m, device="cpu") for m in (folder, lightning_ckpt))
    assert loaded.image_size == reference.image_size
    (photo,) = small_photos()
    np.testing.assert_array_equal(loaded.remove_background(photo).all_masks,
                                  reference.remove_background(photo).all_masks)

    config = json.loads((folder / "config.json").read_text())
    assert (config["architecture"], config["config"], config["library_name"]) == (
        "lite", LITE, "s3od")

    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert (data.library_name, data.pipeline_tag) == ("s3od", "image-segmentation")
    assert data.license == "other" and data.license_name == "unspecified"
    assert data.datasets == ["me/photos"] and "background-removal" in data.tags
    scored = json.loads(results_json.read_text())["results"][0]
    found = {r.metric_name: r.metric_value for r in data.eval_results}
    assert set(found) == {"MAE", "maxF", "Sm", "meanEm", "wF", "IoU"}
    for key, value in found.items():
        assert value == pytest.approx(scored["metrics"][key], abs=1e-4)
    assert {r.dataset_name for r in data.eval_results} == {"Samples"}
    assert 'BackgroundRemoval("me/my-lite")' in card.text and "s3od remove" in card.text


def test_remover_methods_publish_the_loaded_model(tmp_path, lightning_ckpt) -> None:
    """``BackgroundRemoval(...).save_pretrained`` / ``push_to_hub``: same files, same masks,
    and the remover's own input size."""
    from s3od import BackgroundRemoval

    remover = BackgroundRemoval(lightning_ckpt, image_size=256, device="cpu")
    folder = remover.save_pretrained(tmp_path / "repo")
    again = BackgroundRemoval(folder, device="cpu")
    assert again.image_size == 256
    (photo,) = small_photos()
    np.testing.assert_array_equal(again.remove_background(photo).all_masks,
                                  remover.remove_background(photo).all_masks)
    with recording_hub() as hub:
        remover.push_to_hub("me/r", token="t", endpoint=hub.url)
    _, files = _commit_files(hub.find("POST", "/commit/main$")[0].body)
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]


def test_card_usage_code_runs_against_the_saved_folder(tmp_path, lightning_ckpt) -> None:
    """The card's Python block, pointed at the folder instead of the repo id, works as written."""
    import re

    from PIL import Image

    from s3od.publish import save_pretrained

    folder = save_pretrained(lightning_ckpt, tmp_path / "repo")
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S)[1]
    photo = tmp_path / "photo.png"
    Image.fromarray(small_photos()[0]).save(photo)
    code = code.replace("path/to/this/folder", str(folder)).replace('"photo.jpg"',
                                                                    repr(str(photo)))
    code = code.replace('"photo_cutout.png"', repr(str(tmp_path / "cut.png")))
    scope: dict = {}
    exec(compile(code, "card", "exec"), scope)  # our own generated snippet
    assert (tmp_path / "cut.png").is_file() and scope["mask"].ndim == 2


def test_dinov3_model_round_trip_keeps_its_input_size_and_names_its_backbone(tmp_path) -> None:
    from huggingface_hub import ModelCard

    from s3od import BackgroundRemoval
    from s3od.architectures import build_model
    from s3od.hub import ResolvedCheckpoint
    from s3od.publish import save_pretrained

    from .onnx_tiny import TINY_DPT

    torch.manual_seed(0)
    model = build_model("dpt_dinov3", **TINY_DPT).eval()
    resolved = ResolvedCheckpoint(model.state_dict(), "dpt_dinov3", dict(TINY_DPT), "memory",
                                  "tiny-dpt", image_size=224)
    folder = save_pretrained(resolved, tmp_path / "dpt")
    loaded = BackgroundRemoval(folder, device="cpu")
    assert loaded.image_size == 224
    reference = BackgroundRemoval.from_model(model, image_size=224, device="cpu")
    (photo,) = small_photos()
    np.testing.assert_array_equal(loaded.remove_background(photo).all_masks,
                                  reference.remove_background(photo).all_masks)
    data = ModelCard.load(folder / "README.md").data
    assert data.base_model == "facebook/dinov3-vitb16-pretrain-lvd1689m"
    assert data.eval_results is None  # no benchmark given: no model-index


def _commit_files(body: bytes) -> tuple[dict, dict[str, bytes]]:
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    header = next(x["value"] for x in lines if x["key"] == "header")
    files = {x["value"]["path"]: base64.b64decode(x["value"]["content"])
             for x in lines if x["key"] == "file"}
    return header, files


def test_push_creates_the_repo_and_commits_the_folder_once(tmp_path, lightning_ckpt,
                                                           results_json) -> None:
    from s3od.publish import CardInfo, push_to_hub, save_pretrained

    local = save_pretrained(lightning_ckpt, tmp_path / "local", benchmark=results_json,
                            card=CardInfo(repo_id="me/my-lite"))
    with recording_hub() as hub:
        url = push_to_hub(lightning_ckpt, "me/my-lite", private=True, token="hf_secret",
                          benchmark=results_json, endpoint=hub.url)
    assert url == f"{hub.url}/me/my-lite/commit/{'a' * 40}"
    assert all(r.headers.get("Authorization", r.headers.get("authorization"))
               == "Bearer hf_secret" for r in hub.requests)
    (create,) = hub.find("POST", r"^/api/repos/create$")
    assert json.loads(create.body) == {"name": "my-lite", "organization": "me",
                                       "visibility": "private"}
    (commit,) = hub.find("POST", r"^/api/models/me/my-lite/commit/main$")
    header, files = _commit_files(commit.body)
    assert header["summary"] == "Upload s3od model"
    assert files == {p.name: p.read_bytes() for p in local.iterdir()}


def test_cli_publish_dry_run_upload_and_clear_failures(tmp_path, lightning_ckpt, results_json,
                                                       monkeypatch) -> None:
    from huggingface_hub import constants

    from s3od.cli import app

    runner = CliRunner()
    dry = runner.invoke(app, ["publish", str(lightning_ckpt), "me/my-lite", "--dry-run",
                              "-o", str(tmp_path / "out"), "--benchmark", str(results_json),
                              "--license", "apache-2.0"])
    assert dry.exit_code == 0, dry.output
    assert "nothing uploaded" in dry.output
    assert "license: apache-2.0" in (tmp_path / "out" / "README.md").read_text()

    with recording_hub() as hub:
        done = runner.invoke(app, ["publish", str(lightning_ckpt), "me/my-lite", "--token",
                                   "hf_x", "--endpoint", hub.url])
    assert done.exit_code == 0, done.output
    assert len(hub.find("POST", "/commit/main$")) == 1 and "uploaded me/my-lite" in done.output

    # No token anywhere: a clear message before any weights are read.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    missing = runner.invoke(app, ["publish", str(lightning_ckpt), "me/my-lite"])
    assert missing.exit_code == 2 and "no Hugging Face token" in missing.output

    # Nothing listening: refused at once, never a hang.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    offline = runner.invoke(app, ["publish", str(lightning_ckpt), "me/my-lite", "--token", "t",
                                  "--endpoint", f"http://127.0.0.1:{port}"])
    assert offline.exit_code == 2 and "cannot reach" in offline.output

    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    wrong = runner.invoke(app, ["publish", str(lightning_ckpt), "me/x", "--dry-run",
                                "--benchmark", str(bad)])
    assert wrong.exit_code == 2 and "not an `s3od benchmark --out` JSON" in wrong.output
    assert runner.invoke(app, ["publish", str(lightning_ckpt), "no-slash"]).exit_code == 2
    for result in (missing, offline, wrong):
        assert "Traceback" not in result.output


def test_a_silent_server_times_out_with_a_typed_error(tmp_path, lightning_ckpt,
                                                      monkeypatch) -> None:
    """A hub that accepts the connection and never answers: PublishError, not a hang."""
    import s3od.publish
    from s3od.publish import PublishError, save_pretrained, upload_folder

    folder = save_pretrained(lightning_ckpt, tmp_path / "repo")
    monkeypatch.setattr(s3od.publish, "NETWORK_TIMEOUT", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        with pytest.raises(PublishError, match="Timeout"):
            upload_folder(folder, "me/x", token="t",
                          endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}")
    finally:
        silent.close()
