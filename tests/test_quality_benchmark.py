"""The quality benchmark's own logic: peer-file assembly and checks, ranking metrics, the split.

Fast and offline: synthetic chunks and IoU tables, no model runs. ``benchmarks/`` is not a
package, so its modules are loaded from their files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import numpy as np
import pytest

from tests.conftest import REPO, SHARED, needs_shared

BENCH = REPO / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # quality.py imports peers and common by name
    if name in sys.modules:  # quality.py imports peers by this name too
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peers():
    return _load("peers")


@pytest.fixture(scope="module")
def quality():
    return _load("quality")


def _chunked(data: bytes, size: int) -> tuple[dict, dict[str, bytes]]:
    """A resources.json-style entry for ``data`` cut into ``size``-byte chunks, and the chunks."""
    chunks, store, offset = [], {}, 0
    while offset < len(data):
        part = data[offset:offset + size]
        name = hashlib.sha256(part).hexdigest()
        store[name] = part
        chunks.append({"hash": name, "offsets": [offset, offset + len(part)]})
        offset += len(part)
    return {"/models/x": {"chunks": chunks, "size": len(data), "mime": "x"}}, store


# ----------------------------------------------------------------------------- peers


def test_assemble_chunks_in_listed_order(peers, tmp_path):
    data = bytes(range(256)) * 41 + b"tail"
    resources, store = _chunked(data, 1000)
    dest = tmp_path / "model.onnx"
    written = peers.assemble_chunks(resources, "/models/x", store.__getitem__, dest)
    assert written == len(data)
    assert dest.read_bytes() == data
    assert not (tmp_path / "model.onnx.part").exists()


def test_assemble_chunks_rejects_reordered_or_corrupt_chunks(peers, tmp_path):
    data = np.random.default_rng(0).bytes(5000)
    resources, store = _chunked(data, 1000)
    dest = tmp_path / "model.onnx"
    swapped = {"/models/x": dict(resources["/models/x"])}
    chunks = list(resources["/models/x"]["chunks"])
    chunks[0], chunks[1] = chunks[1], chunks[0]
    swapped["/models/x"]["chunks"] = chunks
    with pytest.raises(peers.PeerError, match="covers"):
        peers.assemble_chunks(swapped, "/models/x", store.__getitem__, dest)
    assert not dest.exists()

    first = chunks[1]["hash"]
    corrupt = dict(store)
    corrupt[first] = b"\0" + store[first][1:]
    with pytest.raises(peers.PeerError, match="does not match its hash"):
        peers.assemble_chunks(resources, "/models/x", corrupt.__getitem__, dest)
    assert not dest.exists() and not (tmp_path / "model.onnx.part").exists()

    short = {"/models/x": {**resources["/models/x"], "size": len(data) + 1}}
    with pytest.raises(peers.PeerError, match="listed size"):
        peers.assemble_chunks(short, "/models/x", store.__getitem__, dest)
    with pytest.raises(peers.PeerError, match="no entry"):
        peers.assemble_chunks(resources, "/models/y", store.__getitem__, dest)


def test_check_file_verifies_size_and_sha256(peers, tmp_path):
    data = b"peer model bytes"
    spec = peers.PeerFile("x", "x.onnx", "npm", "pkg@1", "/models/x", len(data),
                          hashlib.sha256(data).hexdigest(), "test")
    path = tmp_path / "x.onnx"
    with pytest.raises(peers.PeerError, match=r"peers\.py fetch"):
        peers.check_file(path, spec)
    path.write_bytes(data)
    peers.check_file(path, spec)
    path.write_bytes(data[:-1] + b"!")
    with pytest.raises(peers.PeerError, match="sha256"):
        peers.check_file(path, spec)
    path.write_bytes(data + b"!")
    with pytest.raises(peers.PeerError, match="bytes"):
        peers.check_file(path, spec)


def test_peer_path_names_the_fetch_step_when_missing(peers, tmp_path):
    with pytest.raises(peers.PeerError, match=r"peers\.py fetch --only isnet-small"):
        peers.peer_path("isnet-small", tmp_path)
    with pytest.raises(peers.PeerError, match="unknown"):
        peers.load_peer("isnet-large", tmp_path)


def test_every_peer_row_has_a_pinned_file(peers):
    assert set(peers.PEER_ROWS) == {"u2net", "u2net+flip", "u2netp", "isnet-medium",
                                    "isnet-small"}
    for row in peers.PEER_ROWS.values():
        spec = peers.PEER_FILES[row.file]
        assert len(spec.sha256) == 64 and spec.size > 1_000_000
    assert "AGPL" in peers.PEER_FILES["isnet-medium"].licence


def test_sample_bilinear_corner_anchored(peers):
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    assert np.array_equal(peers.sample_bilinear(image, 4, 4), image)
    # Halving reads every other pixel exactly (sample points at 0 and 2, no filtering).
    assert np.array_equal(peers.sample_bilinear(image, 2, 2), image[::2, ::2])
    # Doubling puts a blend half-way, rounded half up: (0 + 10) / 2 -> 5.
    up = peers.sample_bilinear(image, 8, 8)
    assert up[0, 1] == 5 and up[0, 0] == 0 and up[1, 0] == 20
    rgb = np.stack([image, image, image], axis=-1)
    assert peers.sample_bilinear(rgb, 3, 5).shape == (3, 5, 3)


# ----------------------------------------------------------------------------- ranking


def test_ranking_stats_on_a_worked_example(quality):
    iou = np.array([
        [0.90, 0.89, 0.50],   # differ (0.40); pick 1 is 0.01 below the best: near
        [0.60, 0.80, 0.70],   # differ (0.20); pick 0 is 0.20 below: not near
        [0.70, 0.71, 0.705],  # candidates agree (0.01): not counted among "differ"
        [0.30, 0.40, 0.20],   # differ (0.20); pick 1 is the best
    ])
    picked = np.array([1, 0, 2, 1])
    s = quality.ranking_stats(iou, picked)
    chosen = np.array([0.89, 0.60, 0.705, 0.40])
    best = np.array([0.90, 0.80, 0.71, 0.40])
    assert s["n"] == 4
    assert s["picked_iou"] == pytest.approx(chosen.mean())
    assert s["oracle_iou"] == pytest.approx(best.mean())
    assert s["regret"] == pytest.approx((best - chosen).mean())
    assert s["n_differ"] == 3 and s["share_differ"] == pytest.approx(0.75)
    assert s["n_near_on_differ"] == 2 and s["near_on_differ"] == pytest.approx(2 / 3)
    assert s["near_all"] == pytest.approx(3 / 4)
    assert s["picks_best"] == pytest.approx(1 / 4)
    assert s["fixed_iou"] == pytest.approx(iou.mean(axis=0).tolist())
    assert s["best_fixed"] == 1 and s["best_fixed_iou"] == pytest.approx(0.70)


def test_ranking_stats_thresholds_are_inclusive(quality):
    # Exactly 0.1 apart counts as differing; exactly 0.02 below the best counts as near.
    iou = np.array([[0.8, 0.7, 0.78]])
    s = quality.ranking_stats(iou, np.array([2]))
    assert s["n_differ"] == 1 and s["near_on_differ"] == 1.0
    s = quality.ranking_stats(np.array([[0.5, 0.5]]), np.array([0]))
    assert s["n_differ"] == 0 and np.isnan(s["near_on_differ"]) and s["regret"] == 0.0
    with pytest.raises(ValueError):
        quality.ranking_stats(np.zeros((2, 3)), np.zeros(3, dtype=int))


def test_spread_keeps_ends_and_order(quality):
    items = list(range(10))
    assert quality.spread(items, None) == items
    assert quality.spread(items, 20) == items
    assert quality.spread(items, 3) == [0, 4, 9] or quality.spread(items, 3) == [0, 5, 9]
    assert quality.spread(items, 1) == [0]
    assert quality.spread(items, 0) == []


@needs_shared
def test_dev_split_holds_both_parts(quality):
    images = quality.dev_split(SHARED)
    parts = {p: [im for im in images if im.part == p] for p in ("bsds", "davis")}
    assert len(parts["bsds"]) == 70
    assert len(parts["davis"]) >= 80
    sequences = {im.id.rsplit("_", 1)[0] for im in parts["davis"]}
    assert sequences == {"breakdance", "dance-twirl", "goat", "paragliding-launch"}
    assert len({im.key for im in images}) == len(images)
    assert all(im.image.is_file() and im.mask.is_file() for im in images)
    small = quality.dev_split(SHARED, limit=4)
    assert [im.part for im in small].count("davis") == 4
    assert {im.id.rsplit("_", 1)[0] for im in small if im.part == "davis"} == sequences
