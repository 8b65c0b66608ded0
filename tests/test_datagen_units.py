"""Sharding, classes, prompt parsing, enhancer, mining schedule, filters and configs."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from synth_sod.data_generation.captions import clean_tag, image_id
from synth_sod.data_generation.configs import load_mapping
from synth_sod.data_generation.filters import HorizontalFlipConsistencyFilter, build_filter
from synth_sod.data_generation.filters.base import Sample
from synth_sod.data_generation.mining import difficulty, image_scores, new_sample_count
from synth_sod.data_generation.prompts import (
    PromptEnhancer,
    load_class_weights,
    load_classes,
    parse_prompt_list,
)
from synth_sod.data_generation.sharding import (
    PipelineError,
    Shard,
    resolve_shard,
    shard_bounds,
    take_shard,
)
from tests.conftest import needs_shared, shared_pairs


def test_shards_cover_every_item_once():
    items = list(range(1100))
    for count in (1, 7, 12, 64):
        parts = [take_shard(items, Shard(i, count)) for i in range(count)]
        assert [x for p in parts for x in p] == items  # the published split dropped 1092-1099
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    weights = [100] * 10 + [1] * 90
    parts = [take_shard(list(range(100)), Shard(i, 4), weights) for i in range(4)]
    assert [x for p in parts for x in p] == list(range(100))
    loads = [sum(weights[i] for i in p) for p in parts]
    assert max(loads) < 2 * min(loads)  # balanced by work, not by count
    assert shard_bounds(3, Shard(4, 5)) == (3, 3)  # more shards than items: empty, no error


@pytest.mark.parametrize(("env", "expected"), [
    ({}, (0, 1, "default")),
    ({"WORLD_SIZE": "8", "RANK": "3"}, (3, 8, "torchrun")),
    ({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10",
      "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4, "slurm-array")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "16"}, (5, 16, "slurm-tasks")),
])
def test_shard_from_launcher_variables(env, expected):
    s = resolve_shard(env=env)
    assert (s.index, s.count, s.source) == expected


def test_shard_flags_win_and_bad_values_fail():
    assert resolve_shard(4, 1, env={"WORLD_SIZE": "8", "RANK": "3"}) == Shard(1, 4, "flags")
    assert resolve_shard(env={"SLURM_ARRAY_TASK_ID": "2"}, max_tasks=12).count == 12
    with pytest.raises(PipelineError, match="outside"):
        resolve_shard(4, 4, env={})
    with pytest.raises(PipelineError, match="how many shards"):
        resolve_shard(env={"SLURM_ARRAY_TASK_ID": "2"})
    with pytest.raises(PipelineError, match="not an integer"):
        resolve_shard(env={"WORLD_SIZE": "x"})


def test_class_file_and_names():
    classes = load_classes()
    assert len(classes) == 1100
    assert [c.index for c in classes] == list(range(1100))
    folders = [c.folder for c in classes]
    assert len(set(folders)) == 1100  # published naming merged the two cranes and maillots
    by_index = {c.index: c for c in classes}
    assert (by_index[134].folder, by_index[517].folder) == ("crane", "crane_517")
    assert by_index[2].folder == "great_white_shark" and by_index[2].tag == "great white shark"
    assert all(c.tag and c.folder and "'" not in c.folder for c in classes)


def test_class_weights_from_mining_output(tmp_path):
    path = tmp_path / "w.json"
    path.write_text('{"new_samples": {"tench": 55, "goldfish": 20}, "category_scores": {}}')
    assert load_class_weights(path) == {"tench": 55, "goldfish": 20}
    path.write_text('{"tench": "many"}')
    with pytest.raises(PipelineError, match="integers"):
        load_class_weights(path)


@pytest.mark.parametrize("answer", [
    '["a red car on a road", "two cars parked"]',
    "Sure!\n```python\n['a red car on a road', 'two cars parked']\n```",
    "1. a red car on a road\n2. two cars parked",
])
def test_prompt_answers_are_parsed_without_eval(answer):
    assert parse_prompt_list(answer) == ["a red car on a road", "two cars parked"]


def test_prompt_parser_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    answer = f"[__import__('pathlib').Path({str(marker)!r}).touch()]"
    parse_prompt_list(answer)
    assert not marker.exists()


def test_enhancer_is_reproducible_per_seed():
    enhancer = PromptEnhancer()
    a = [enhancer("a dog.", random.Random(s)) for s in range(200)]
    b = [enhancer("a dog.", random.Random(s)) for s in range(200)]
    assert a == b
    assert all(p.startswith("a dog") for p in a)
    enhanced = sum(p != "a dog." for p in a) / len(a)
    # P(no term) = 0.7 * 0.75 * 0.8 * 0.75 = 0.315
    assert 0.55 < enhanced < 0.8


def test_mining_schedule_endpoints_and_monotonic():
    assert difficulty(0.97) == 0.1 and difficulty(0.8) == pytest.approx(0.7)
    assert difficulty(0.0) == pytest.approx(1.0)
    counts = [new_sample_count(s / 100) for s in range(0, 101)]
    assert counts == sorted(counts, reverse=True)  # harder categories get more samples
    assert counts[0] == round(20 + 80 / (1 + np.exp(-4)))
    assert counts[-1] == round(20 + 80 / (1 + np.exp(3.2)))


def test_mining_scores_reward_flip_equivariant_students():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 5:25] = 255
    good = image_scores(lambda ims: [mask / 255.0, mask[:, ::-1] / 255.0], image, mask)
    lazy = image_scores(lambda ims: [mask / 255.0, mask / 255.0], image, mask)
    assert good["score"] == pytest.approx(1.0, abs=1e-6)
    assert lazy["s_flip"] < 0.6 and lazy["score"] < good["score"]


def test_image_ids_and_tags():
    assert image_id("/d/DUTS-TR/images/sun_1.jpg") == "DUTS-TR_sun_1"
    assert image_id("/d/misc/x.png").startswith("hash_") and image_id("/d/misc/x.png").endswith(
        "_x")
    assert clean_tag("A Sports-Car.") == "a sports"
    assert clean_tag("dog\n") == "dog"


def test_filter_specs_from_published_and_new_configs():
    published = build_filter({"_target_": "data_generation.filters.HorizontalFlipConsistencyFilter",
                              "name": "flip_consistency", "model_path": "x.ckpt",
                              "iou_threshold": 0.6, "device": "cuda"})
    assert isinstance(published, HorizontalFlipConsistencyFilter)
    assert published.iou_threshold == 0.6  # the config key the published class rejected
    assert build_filter({"type": "flip_consistency", "model_path": "m", "threshold": 0.75}
                        ).iou_threshold == 0.75
    judge = build_filter({"_target_": "data_generation.filters.GemmaSemanticFilter",
                          "confidence_threshold": 0.8})
    assert judge.name == "semantic_quality" and judge.confidence_threshold == 0.8
    with pytest.raises(PipelineError, match="unknown setting"):
        build_filter({"type": "mask_artifacts", "treshold": 0.5})
    with pytest.raises(PipelineError, match="unknown filter"):
        build_filter({"type": "sharpness"})
    shipped = load_mapping("filtering_config.yaml")
    assert [build_filter(f).name for f in shipped["filters"]] == [
        "flip_consistency", "semantic_quality", "mask_artifacts"]  # models load lazily


def test_config_overrides_and_errors(tmp_path):
    data = load_mapping("filtering_config.yaml", ["input_path=/x", "filters.0.iou_threshold=0.9"])
    assert data["input_path"] == "/x" and data["filters"][0]["iou_threshold"] == 0.9
    with pytest.raises(PipelineError, match="key=value"):
        load_mapping("filtering_config.yaml", ["oops"])
    with pytest.raises(PipelineError, match="not found"):
        load_mapping(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_mapping(bad)


def _oracle(lookup):
    def predict(images):
        return [lookup[im.tobytes()] for im in images]
    return predict


@needs_shared
def test_flip_consistency_on_real_images():
    """Real photos and masks from ../shared/data: a student that reproduces the ground truth
    passes; one that misses the object, or ignores the flip, is rejected with the reason."""
    from s3od.imageio import load_image
    from synth_sod.data_generation.filters.base import iou

    pairs = shared_pairs("sod-bsds300", limit=3) + shared_pairs("davis2016", limit=2)
    assert pairs, "no shared pairs found"
    for img_path, mask_path in pairs:
        sample = Sample(img_path, mask_path, "real", img_path.stem)
        rgb, gt = sample.image, sample.mask / 255.0
        flipped = np.ascontiguousarray(rgb[:, ::-1]).tobytes()
        exact = HorizontalFlipConsistencyFilter(
            predictor=_oracle({rgb.tobytes(): gt, flipped: gt[:, ::-1]}))
        result = exact.check(sample)
        assert result.passed and result.score == pytest.approx(1.0), img_path.name

        shifted = np.roll(gt, gt.shape[1] // 3, axis=1)
        missing = HorizontalFlipConsistencyFilter(
            predictor=_oracle({rgb.tobytes(): shifted, flipped: shifted[:, ::-1]}))
        result = missing.check(sample)
        expected = iou(shifted > 0.5, sample.mask > 128)
        assert result.score == pytest.approx(expected)
        assert result.passed == (expected >= 0.7)
        if not result.passed:
            assert "student IoU" in result.reason

        unflipped = HorizontalFlipConsistencyFilter(  # answers the flipped image unflipped
            predictor=_oracle({rgb.tobytes(): gt, flipped: gt}))
        result = unflipped.check(sample)
        mirror_iou = iou(gt[:, ::-1] > 0.5, gt > 0.5)
        assert result.details["consistency"] == pytest.approx(mirror_iou)
        assert result.passed == (mirror_iou >= 0.8)
        assert load_image(img_path).shape[:2] == sample.mask.shape


@needs_shared
def test_flip_consistency_with_an_s3od_student(tiny_lite_checkpoint):
    """The real student path (BackgroundRemoval on a checkpoint) on a real image."""
    img_path, mask_path = shared_pairs("sod-bsds300", limit=1)[0]
    flt = HorizontalFlipConsistencyFilter(model_path=str(tiny_lite_checkpoint), image_size=128,
                                          device="cpu", iou_threshold=0.0,
                                          consistency_threshold=0.0)
    result = flt.check(Sample(img_path, mask_path, "real", img_path.stem))
    assert result.passed
    assert 0.0 <= result.details["iou"] <= 1.0 and 0.0 <= result.details["consistency"] <= 1.0
    with pytest.raises(PipelineError, match="cannot load the consistency student"):
        HorizontalFlipConsistencyFilter(model_path="/no/such/model.pt").check(
            Sample(img_path, mask_path, "real", img_path.stem))


def test_mining_writes_class_weights_after_all_shards(tmp_path):
    from PIL import Image

    from synth_sod.data_generation.mining import mine_categories

    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    truth = {}
    for cat in ("easy", "hard"):
        for i in range(3):
            rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            mask = np.zeros((24, 32), np.uint8)
            mask[4:20, 3 + i:15 + i] = 255
            Image.fromarray(rgb).save(root / "images" / f"{cat}_{i}.png")
            Image.fromarray(mask).save(root / "masks" / f"{cat}_{i}.png")
            good = mask / 255.0
            answer = good if cat == "easy" else np.roll(good, 10, axis=1)
            truth[rgb.tobytes()] = answer
            truth[np.ascontiguousarray(rgb[:, ::-1]).tobytes()] = answer[:, ::-1]

    def predictor(images):
        return [truth[im.tobytes()] for im in images]

    out = tmp_path / "results"
    assert mine_categories(root, predictor, out, max_val_samples=2, shard=Shard(0, 2)) is None
    weights = mine_categories(root, predictor, out, max_val_samples=2, shard=Shard(1, 2))
    assert weights is not None
    counts = load_class_weights(weights)
    # a perfect category gets 20 + 80 / (1 + e^3.2) = 23.1 -> 23 (published schedule)
    assert set(counts) == {"easy", "hard"} and counts["hard"] > counts["easy"] == 23
    report = json.loads(next(out.glob("_eval_results_*.json")).read_text())
    assert report["unstable_categories"][0] == "hard"
    assert sum(len(v) for v in report["category_sample_scores"].values()) == 4  # 2 per category
