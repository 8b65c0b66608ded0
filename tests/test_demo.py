"""The Gradio demo's pieces without a browser: views, colours, candidates, the model pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s3od.errors import ModelNotFoundError

pytest.importorskip("gradio", reason="the [demo] extra is not installed")

from s3od.predictor import RemovalResult
from s3od.serving.demo import (
    VIEWS,
    ModelPool,
    Prediction,
    ambiguity_text,
    build_demo,
    candidate_labels,
    parse_picker,
    render_view,
)


def handmade_result() -> RemovalResult:
    """A 4x6 image with two candidates: left half (IoU 0.9) and a disjoint right strip."""
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    left = np.zeros((4, 6), np.float32)
    left[:, :3] = 1.0
    right = np.zeros((4, 6), np.float32)
    right[:, 5] = 1.0
    masks = np.stack([right, left])
    from s3od import compose

    return RemovalResult(left, masks, np.array([0.2, 0.9], np.float32),
                         compose.cutout(rgb, left), rgb, best_index=1)


def test_views_composite_the_chosen_candidate():
    pred = Prediction(handmade_result(), "m")
    rgb = pred.result.image
    cut = np.asarray(render_view(pred, None, "transparent", None))
    assert cut.shape == (4, 6, 4)
    np.testing.assert_array_equal(cut[..., 3], [[255, 255, 255, 0, 0, 0]] * 4)
    np.testing.assert_array_equal(cut[..., :3], rgb)
    green = np.asarray(render_view(pred, 0, "green", None))
    np.testing.assert_array_equal(green[:, 5], rgb[:, 5])
    assert (green[:, :5] == (0, 177, 64)).all()
    custom = np.asarray(render_view(pred, 1, "custom colour", "rgba(255, 0, 128, 1)"))
    assert (custom[:, 3:] == (255, 0, 128)).all()
    white = np.asarray(render_view(pred, 1, "white", None))
    assert (white[:, 3:] == 255).all()
    mask = np.asarray(render_view(pred, 0, "mask", None))
    np.testing.assert_array_equal(mask, (pred.result.all_masks[0] * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="unknown view"):
        render_view(pred, 0, "sepia", None)
    assert len(VIEWS) == 5


def test_picker_formats():
    assert parse_picker("#00ff80") == (0, 255, 128)
    assert parse_picker("rgb(1, 2, 3)") == (1, 2, 3)
    assert parse_picker("rgba(10.4, 20.6, 30, 0.5)") == (10, 21, 30)
    assert parse_picker(None) == (255, 255, 255)
    with pytest.raises(ValueError):
        parse_picker("rgb(300, 0, 0)")


def test_candidates_and_ambiguity():
    result = handmade_result()
    assert candidate_labels(result) == [("#1 IoU 0.200", 0), ("#2 IoU 0.900 (best)", 1)]
    # The candidates do not overlap, but the head rates #2 far above #1: not ambiguous.
    assert result.ambiguous and result.assessment().verdict == "clear"
    assert "clearly prefers #2" in ambiguity_text(result)
    same = RemovalResult(result.all_masks[1], result.all_masks[[1, 1]], result.all_ious,
                         result.rgba_image, result.image, best_index=1)
    assert "agree" in ambiguity_text(same)


def test_ambiguity_follows_the_iou_head():
    result = handmade_result()

    def rated(ious):
        ious = np.asarray(ious, np.float32)
        best = int(np.argmax(ious))
        return RemovalResult(result.all_masks[best], result.all_masks, ious,
                             result.rgba_image, result.image, best)

    close = rated([0.88, 0.9])  # disjoint candidates rated alike: two readings of the photo
    assert close.assessment().verdict == "ambiguous" and close.assessment().rivals == [0]
    assert "**Ambiguous:** #2 and #1" in ambiguity_text(close)
    low = rated([0.2, 0.5])  # the head doubts its own pick
    assert low.assessment().verdict == "unsure"
    assert "only 0.50" in ambiguity_text(low)
    assert rated([0.2, 0.9]).assessment(margin=0.8).verdict == "ambiguous"


def test_model_pool_loads_once_and_evicts_oldest():
    loads: list[str] = []

    def loader(name: str):
        if name == "missing":
            raise ModelNotFoundError("no weights for missing")
        loads.append(name)
        return object()

    first = object()
    pool = ModelPool(loader, first, "start", keep=2)  # type: ignore[arg-type]
    assert pool.get("start") is first
    a = pool.get("a")
    assert pool.get("a") is a and loads == ["a"]
    pool.get("b")  # evicts "start", the least recently used
    assert pool.get("a") is a
    pool.get("start")
    assert loads == ["a", "b", "start"]
    with pytest.raises(ModelNotFoundError):
        pool.get("missing")


def test_build_demo_lists_registry_and_initial_model(tiny_remover):
    blocks = build_demo(tiny_remover, loader=lambda name: tiny_remover, initial_name="tiny")
    dropdowns = [c for c in blocks.blocks.values() if type(c).__name__ == "Dropdown"]
    assert len(dropdowns) == 1
    choices = [value for _, value in dropdowns[0].choices]
    assert choices[0] == "tiny" and "s3od-lite" in choices and "s3od" in choices
    assert dropdowns[0].value == "tiny"


def test_cli_demo_with_missing_model_fails_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "s3od.cli", "demo", "--model",
                           str(tmp_path / "nope.safetensors")], capture_output=True, timeout=180,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "cannot resolve model" in err and "Traceback" not in err


def _render_fn(blocks):
    return next(f.fn for f in blocks.fns.values() if f.name == "render")


@pytest.mark.parametrize("make_hash", [
    lambda evil: str(evil),                                  # absolute path
    lambda evil: "../" * 12 + str(evil).lstrip("/"),         # climbs out of the temp folder
    lambda evil: "..",
    lambda evil: "a/b\x00c",
    lambda evil: None,
])
def test_downloads_stay_in_the_demo_folder_whatever_the_session_hash(tiny_remover, tmp_path,
                                                                    make_hash):
    from types import SimpleNamespace

    blocks = build_demo(tiny_remover, loader=lambda name: tiny_remover, initial_name="tiny",
                        model_names=["tiny"])
    root = os.path.realpath(blocks.s3od_tempdir.name)
    evil = tmp_path / "evil"
    request = SimpleNamespace(session_hash=make_hash(evil))
    _, cut, mask = _render_fn(blocks)(Prediction(handmade_result(), "tiny"), 1, "white", None,
                                      request)
    for update in (cut, mask):
        path = os.path.realpath(update["value"])
        assert os.path.dirname(os.path.dirname(path)) == root, path
        assert len(os.path.basename(os.path.dirname(path))) == 32
    assert not evil.exists() and list(tmp_path.iterdir()) == []
    # the same session keeps its folder; another session gets another one
    _, again, _ = _render_fn(blocks)(Prediction(handmade_result(), "tiny"), 1, "white", None,
                                     request)
    assert again["value"] == cut["value"]
    _, other, _ = _render_fn(blocks)(Prediction(handmade_result(), "tiny"), 1, "white", None,
                                     SimpleNamespace(session_hash="someone-else"))
    assert os.path.dirname(other["value"]) != os.path.dirname(cut["value"])


DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"


def test_demo_requirements_install_this_checkout_with_the_demo_extra(tmp_path):
    """The seed's ``cd demo; pip install -r requirements.txt`` resolves to this package with
    Gradio (pip's own resolver, dry run, nothing installed or downloaded)."""
    pytest.importorskip("setuptools", reason="the editable build needs setuptools")
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
         "--no-build-isolation", "--quiet", "--report", str(report), "-r", "requirements.txt"],
        cwd=DEMO_DIR, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [item] = json.loads(report.read_text())["install"]
    assert item["metadata"]["name"] == "s3od" and item["requested_extras"] == ["demo"]
    assert Path(item["download_info"]["url"].removeprefix("file://")) == DEMO_DIR.parent
    demo_requires = [r for r in item["metadata"]["requires_dist"] if "extra == \"demo\"" in r]
    assert any(r.startswith("gradio") for r in demo_requires), demo_requires


def test_demo_app_script_starts_from_its_folder():
    proc = subprocess.run([sys.executable, "app.py", "--help"], cwd=DEMO_DIR,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--model" in proc.stdout and "--port" in proc.stdout
