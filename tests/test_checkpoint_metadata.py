"""Checkpoint metadata is not trusted (issue 22, item 7).

The metadata of a checkpoint file (safetensors key ``s3od``, a torch file's
``architecture``/``config``, a ``config.json`` beside it) may only choose among registered
architectures and bounded sizes: it cannot make the loader fetch other weights, allocate more
than the file holds, or fail with anything but ``CheckpointError``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from s3od.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
TINY_LITE = {"features": 16, "mask_upsample_features": 16, "mask_inter_features": 8}


@pytest.fixture(scope="module")
def lite_state() -> dict[str, torch.Tensor]:
    from s3od.modeling import LiteSegmentation

    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in LiteSegmentation(**TINY_LITE).state_dict().items()}


def _safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: object) -> Path:
    """A safetensors file whose ``s3od`` metadata is ``meta`` (JSON), whatever its shape."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"s3od": json.dumps(meta)})
    return path


@pytest.fixture()
def no_fetch(monkeypatch):
    """Record every attempt to load pretrained weights from elsewhere (and stop it)."""
    calls: list[tuple] = []
    import s3od.modeling.encoders.dinov3 as dinov3
    import s3od.modeling.encoders.efficientnet_lite as lite
    import s3od.modeling.segmentation as segmentation

    def record(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the loader tried to fetch pretrained weights")

    monkeypatch.setattr(dinov3, "load_pretrained_dinov3", record)
    monkeypatch.setattr(lite, "load_imagenet_weights", record)
    monkeypatch.setattr(segmentation, "load_imagenet_weights", record, raising=False)
    return calls


@pytest.mark.parametrize("arch", ["dpt_dinov3", "lite"])
def test_pretrained_and_encoder_name_are_refused(tmp_path, lite_state, no_fetch, arch):
    from s3od.hub import resolve

    marker = tmp_path / "fetched-from-here"
    config = {"pretrained": True, "encoder_name": str(marker)}
    if arch == "lite":
        config.update(TINY_LITE)
    path = _safetensors(tmp_path / "m.safetensors", lite_state,
                        {"architecture": arch, "config": config})
    with pytest.raises(CheckpointError, match="cannot ask for other weights"):
        resolve(path)
    for key in ("pretrained_encoder",):
        _safetensors(path, lite_state, {"architecture": "lite",
                                        "config": {**TINY_LITE, key: True}})
        with pytest.raises(CheckpointError, match=key):
            resolve(path)
    assert no_fetch == []


def test_huge_sizes_are_refused_before_allocating(tmp_path, monkeypatch):
    """``features: 300000`` in a 1 KB file: refused by the bounds; a size within bounds that
    the file does not hold: refused on the meta device, before the real build."""
    import s3od.hub as hub

    built: list[str] = []
    real_build = hub.build_model

    def spy(name, **config):
        built.append(name)
        return real_build(name, **config)

    monkeypatch.setattr(hub, "build_model", spy)
    small = {"w": torch.zeros(4)}
    path = _safetensors(tmp_path / "huge.safetensors", small,
                        {"architecture": "lite", "config": {"features": 300000}})
    assert path.stat().st_size < 1024
    with pytest.raises(CheckpointError, match=r"features=300000 is outside"):
        hub.resolve(path)
    _safetensors(path, small, {"architecture": "lite", "config": {"features": 4096}})
    resolved = hub.resolve(path)
    with pytest.raises(CheckpointError, match="nothing was allocated"):
        hub.build_from_checkpoint(resolved)
    assert built == []


@pytest.mark.parametrize(("meta", "match"), [
    ([1, 2, 3], "expected a JSON object, got list"),
    ("lite", "expected a JSON object, got str"),
    ({"architecture": ["lite"], "config": {}}, "'architecture' must be a string"),
    ({"architecture": "lite", "config": [1, 2]}, "'config' must be an object"),
    ({"architecture": "lite", "config": {}, "loader": "x"}, "unknown keys"),
    ({"architecture": "lite", "config": {"nonsense": 1}}, "unknown config key 'nonsense'"),
    ({"architecture": "lite", "config": {"features": "16"}}, "features must be an integer"),
    ({"architecture": "lite", "config": {"features": True}}, "features must be an integer"),
    ({"architecture": "lite", "config": {"encoder": "../../x"}}, "not one of"),
    ({"architecture": "lite", "config": {"image_size": 10**9}}, "image_size=.* is outside"),
    ({"architecture": "lite", "config": {"iou_hidden": {"a": 1}}}, "iou_hidden must be an integer"),
    ({"architecture": "lite", "config": {"iou_head": ["global"]}}, "unsupported value"),
    ({"architecture": "os.system", "config": {}}, "unknown architecture"),
    ({"architecture": "dpt_dinov3", "config": {"encoder_config": "../../../etc/x"}},
     "not a bundled config"),
    ({"architecture": "dpt_dinov3", "config": {"encoder_config": {"_name_or_path": "x/y"}}},
     "encoder_config has unknown keys"),
    ({"architecture": "dpt_dinov3", "config": {"layer_indices": [1] * 100}}, "at most"),
    ({"architecture": "dpt_dinov3", "config": {"encoder_config": {"layer_norm_eps": 1e400}}},
     "not a finite number"),
])
def test_malformed_metadata_is_a_checkpoint_error(tmp_path, lite_state, meta, match):
    from s3od.hub import resolve

    path = _safetensors(tmp_path / "m.safetensors", lite_state, meta)
    with pytest.raises(CheckpointError, match=match):
        resolve(path)


def test_not_json_metadata(tmp_path, lite_state):
    from safetensors.torch import save_file

    from s3od.hub import load_checkpoint

    path = tmp_path / "m.safetensors"
    save_file(lite_state, str(path), metadata={"s3od": "{not json"})
    with pytest.raises(CheckpointError, match="not JSON"):
        load_checkpoint(path)


def test_torch_file_and_sidecar_metadata_are_checked(tmp_path, lite_state):
    from s3od.hub import resolve

    pt = tmp_path / "m.pt"
    torch.save({"state_dict": lite_state, "architecture": {"x": 1}}, pt)
    with pytest.raises(CheckpointError, match="'architecture' must be a string"):
        resolve(pt)
    torch.save({"state_dict": [1, 2]}, pt)
    with pytest.raises(CheckpointError, match="not a mapping of tensors"):
        resolve(pt)
    folder = tmp_path / "bare"
    folder.mkdir()
    torch.save({"state_dict": lite_state}, folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(["lite"]))
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        resolve(folder)
    (folder / "config.json").write_text(json.dumps(
        {"architecture": "lite", "config": {**TINY_LITE, "pretrained": True}}))
    with pytest.raises(CheckpointError, match="cannot ask for other weights"):
        resolve(folder)


def test_good_metadata_still_loads(tmp_path, lite_state):
    """The checks do not refuse what ``save_checkpoint`` writes (with an input size)."""
    from s3od import BackgroundRemoval
    from s3od.hub import save_checkpoint

    path = save_checkpoint(lite_state, tmp_path / "ok.safetensors", "lite",
                           {**TINY_LITE, "image_size": 96})
    remover = BackgroundRemoval(path, device="cpu")
    assert remover.image_size == 96


def test_cli_reports_bad_metadata_without_traceback(tmp_path, lite_state):
    from typer.testing import CliRunner

    from s3od.cli import app

    path = _safetensors(tmp_path / "m.safetensors", lite_state,
                        {"architecture": "lite", "config": [1]})
    photo = REPO / "assets" / "samples" / "cat.jpg"
    out = CliRunner().invoke(app, ["remove", str(photo), "-o", str(tmp_path / "o.png"),
                                   "--model", str(path)])
    assert out.exit_code != 0
    assert "'config' must be an object" in out.output
    assert "Traceback" not in out.output and not isinstance(out.exception, TypeError)
