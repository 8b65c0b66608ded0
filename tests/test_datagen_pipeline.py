"""Steps 3, 4, 5 and 7 end to end on a tiny FLUX (CPU, no download): files, shapes, metadata,
resume after an interruption, parquet readable by ``datasets``; plus the published commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("datasets")

from synth_sod.data_generation.features import extract_real_features
from synth_sod.data_generation.filtering import FilteringConfig, run_filtering
from synth_sod.data_generation.filters import HorizontalFlipConsistencyFilter
from synth_sod.data_generation.generate import GenerationConfig, run_generation, sample_seed
from synth_sod.data_generation.sharding import PipelineError, Shard
from tests.conftest import REPO, SAMPLES
from tests.datagen_tiny import TinyTeacher, build_tiny_flux, save_tiny_flux

PACKAGE = REPO / "src" / "synth_sod" / "data_generation"
TABLE = [[64, 64], [96, 64]]
CLASSES = ["goldfish", "tench"]


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return build_tiny_flux()


def gen_config(tmp: Path, **kw) -> GenerationConfig:
    base = dict(model_path=str(tmp / "flux"), teacher_checkpoint_path=str(tmp / "teacher"),
                save_path=str(tmp / "gen"), num_inference_steps=3, num_prompts=1,
                resolutions=TABLE, concept_layers=[0, 1], concept_steps=[-2, -1],
                feature_blocks=[0, 1, 2, 0], feature_dim=8, classes=CLASSES, dtype="float32",
                llm_backend="")
    base.update(kw)
    return GenerationConfig(**base)


def write_prompts(save: Path) -> dict[str, str]:
    prompts = {"goldfish": "a goldfish in a glass bowl", "tench": "a tench on a wooden table"}
    for folder, text in prompts.items():
        (save / folder).mkdir(parents=True, exist_ok=True)
        (save / folder / "prompts.txt").write_text(text + "\n")
    return prompts


class Interrupting(TinyTeacher):
    """Raises KeyboardInterrupt on the n-th call, like Ctrl-C or a preempted job."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def forward(self, *args):
        if len(self.calls) + 1 == self.at:
            raise KeyboardInterrupt
        return super().forward(*args)


@pytest.fixture(scope="module")
def generated(pipe, tmp_path_factory):
    """Two samples generated with an interruption after the first, then resumed."""
    tmp = tmp_path_factory.mktemp("gen")
    prompts = write_prompts(tmp / "gen")
    cfg = gen_config(tmp)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        run_generation(cfg, pipe=pipe, teacher=Interrupting(at=2))
    after_interrupt = sorted(p.name for p in (tmp / "gen").rglob("*") if p.is_file())
    torch.manual_seed(0)
    teacher = TinyTeacher()
    manifest = run_generation(cfg, pipe=pipe, teacher=teacher)
    return tmp, cfg, prompts, after_interrupt, manifest, teacher


def test_generation_files_metadata_and_resume(generated):
    tmp, cfg, prompts, after_interrupt, manifest, teacher = generated
    assert not [n for n in after_interrupt if n.endswith(".part")]
    assert sum(n.endswith(".json") and n[0].isdigit() for n in after_interrupt) == 1
    assert (manifest.done, manifest.skipped, manifest.failed) == (1, 1, [])
    assert len(teacher.calls) == 1  # only the missing sample was generated again
    for folder in CLASSES:
        base = tmp / "gen" / folder
        meta = json.loads((base / "metadata" / "0.json").read_text())
        image = Image.open(base / "images" / "0.jpg")
        mask = Image.open(base / "masks" / "0.png")
        assert meta["id"] == f"{folder}_0" and meta["category"] == folder
        assert meta["seed"] == sample_seed(cfg.seed, folder, 0)
        assert meta["caption"].startswith(prompts[folder].rstrip("."))
        assert meta["prompt"] == prompts[folder]
        assert [meta["width"], meta["height"]] in TABLE
        assert image.size == (meta["width"], meta["height"]) and image.mode == "RGB"
        assert mask.size == image.size and mask.mode == "L"
        assert meta["concept_maps_averaged"] == 2 * 2
        assert meta["model"] == "flux"
    call = teacher.calls[0]
    h, w = call["images"][2] // 16, call["images"][3] // 16
    assert call["features"] == [(1, h * w, 8)] * 4
    assert call["maps"] == {"category": (1, h, w), "background": (1, h, w)}
    files = sorted(str(p.relative_to(tmp / "gen")) for p in (tmp / "gen").rglob("*.jpg"))
    assert files == ["goldfish/images/0.jpg", "tench/images/0.jpg"]


def test_filtering_rejections_fail_cases_and_resume(generated, tmp_path):
    from s3od.imageio import load_image

    tmp = generated[0]
    calls = []
    truth = {}  # student answers keyed by image content: agree on goldfish, invert on tench
    for folder in CLASSES:
        rgb = load_image(tmp / "gen" / folder / "images" / "0.jpg")
        mask = np.asarray(Image.open(tmp / "gen" / folder / "masks" / "0.png")) / 255.0
        answer = mask if folder == "goldfish" else 1.0 - mask
        truth[rgb.tobytes()] = answer
        truth[np.ascontiguousarray(rgb[:, ::-1]).tobytes()] = answer[:, ::-1]

    def predictor(images):
        calls.append(len(images))
        return [truth[im.tobytes()] for im in images]

    flt = HorizontalFlipConsistencyFilter(predictor=predictor, iou_threshold=0.5)
    cfg = FilteringConfig(input_path=str(tmp / "gen"), output_path=str(tmp_path / "out"),
                          save_fail_cases=True)
    manifest = run_filtering(cfg, filters=[flt])
    out = tmp_path / "out"
    kept = sorted(p.stem for p in (out / "images").glob("*.jpg"))
    rejected = [json.loads(line) for line in
                (out / "rejections" / "shard-00000-of-00001.jsonl").read_text().splitlines()]
    assert kept == ["goldfish_0"]
    assert [r["id"] for r in rejected] == ["tench_0"]
    for r in rejected:
        assert r["filter"] == "flip_consistency" and r["score"] == 0.0
        assert (out / "fail_cases" / "flip_consistency" / f"{r['id']}.jpg").is_file()
    for sid in kept:
        meta = json.loads((out / "metadata" / f"{sid}.json").read_text())
        assert meta["id"] == sid and meta["caption"]
    assert manifest.done == 2
    again = run_filtering(cfg, filters=[flt])
    assert (again.done, again.skipped) == (0, 2) and len(calls) == 2


def test_export_parquet_read_by_datasets(generated, tmp_path):
    import datasets

    from synth_sod.data_generation.export import export_parquet

    tmp = generated[0]
    first = export_parquet(tmp / "gen", tmp_path / "ds", rows_per_file=1, shard=Shard(0, 2))
    second = export_parquet(tmp / "gen", tmp_path / "ds", rows_per_file=1, shard=Shard(1, 2))
    rerun = export_parquet(tmp / "gen", tmp_path / "ds", rows_per_file=1, shard=Shard(1, 2))
    assert (first.done, second.done, rerun.done, rerun.skipped) == (1, 1, 0, 1)
    files = sorted(str(p) for p in (tmp_path / "ds" / "data").glob("*.parquet"))
    assert [Path(f).name for f in files] == ["train-00000-of-00002.parquet",
                                             "train-00001-of-00002.parquet"]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.column_names == ["image", "mask", "caption", "category", "id"]
    assert sorted(ds["id"]) == ["goldfish_0", "tench_0"]
    for row in ds:
        folder = row["category"]
        meta = json.loads((tmp / "gen" / folder / "metadata" / "0.json").read_text())
        assert row["caption"] == meta["caption"]
        assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB"
        assert row["mask"].size == row["image"].size
        on_disk = np.asarray(Image.open(tmp / "gen" / folder / "masks" / "0.png"))
        np.testing.assert_array_equal(np.asarray(row["mask"]), on_disk)


def test_training_hf_source_reads_the_export(generated, tmp_path):
    data = pytest.importorskip("synth_sod.model_training.data")
    from synth_sod.data_generation.export import export_parquet

    export_parquet(generated[0] / "gen", tmp_path / "ds")
    source = data.load_hf_source(str(tmp_path / "ds"))
    image, mask = source.load(0)
    assert image.ndim == 3 and mask.shape == image.shape[:2]


def test_features_on_real_images_with_resume(pipe, tmp_path):
    from diffusers import FluxImg2ImgPipeline

    img2img = FluxImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    root = tmp_path / "SAMPLES" / "images"
    root.mkdir(parents=True)
    paths = []
    for src in sorted(SAMPLES.glob("*.jpg"))[:2]:
        Image.open(src).convert("RGB").resize((80, 60)).save(root / src.name)
        paths.append(str(root / src.name))
    (tmp_path / "captions.json").write_text(json.dumps(
        [{"image_path": p, "caption": "a photo of an object"} for p in paths]))
    (tmp_path / "tags.json").write_text(json.dumps(
        [{"image_path": p, "tag": "cat"} for p in paths]))
    kwargs = dict(pipe=img2img, feature_blocks=[0, 1, 2, 2], concept_layers=[0, 1],
                  feature_dim=8, resolutions=[(64, 64), (96, 64), (64, 96)])
    manifest = extract_real_features(tmp_path / "captions.json", tmp_path / "tags.json",
                                     tmp_path / "feats", None, **kwargs)
    assert (manifest.done, manifest.failed) == (2, [])
    for p in paths:
        npz = np.load(tmp_path / "feats" / "features" / f"SAMPLES_{Path(p).stem}.npz")
        assert sorted(npz.files) == ["background", "category", "image_resolution", "layer_0",
                                     "layer_1", "layer_2", "layer_3"]
        assert npz["image_resolution"].tolist() == [64, 96]  # 80x60 -> closest 96x64 (W, H)
        assert npz["category"].shape == (4, 6) and npz["category"].dtype == np.float32
        assert npz["layer_0"].shape == (24, 8) and npz["layer_0"].dtype == np.float16
        both = np.stack([npz["category"], npz["background"]])
        assert both.min() == 0.0 and both.max() == 1.0
    record = manifest.items[0]
    assert record["processed_size"] == [96, 64] and record["original_size"] == [80, 60]
    again = extract_real_features(tmp_path / "captions.json", tmp_path / "tags.json",
                                  tmp_path / "feats", None, **kwargs)
    assert (again.done, again.skipped) == (0, 2)


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "S3OD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_published_generate_command_in_process(tmp_path, monkeypatch):
    """The README's generate flags through the CLI (in-process; the subprocess runs of every
    published script are in the slow test below), tiny FLUX and teacher loaded from disk."""
    from s3od.hub import save_checkpoint

    save_tiny_flux(tmp_path / "flux")
    save_checkpoint({"scale": torch.tensor(8.0), "bias": torch.tensor(0.0)},
                    tmp_path / "teacher.safetensors", "concept_map", {})
    write_prompts(tmp_path / "gen")
    cfg = {k: v for k, v in vars(gen_config(tmp_path)).items()}
    cfg.update(teacher_checkpoint_path=str(tmp_path / "teacher.safetensors"),
               classes=["goldfish"])
    import yaml

    (tmp_path / "generation_config.yaml").write_text(yaml.safe_dump(cfg))
    from typer.testing import CliRunner

    from synth_sod.data_generation.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("S3OD_NO_PROGRESS", "1")
    result = CliRunner().invoke(app, ["generate", "--config_path", "generation_config.yaml"])
    assert result.exit_code == 0, result.output[-2000:]
    assert (tmp_path / "gen" / "goldfish" / "metadata" / "0.json").is_file()
    assert "1 done" in result.output
    mask = np.asarray(Image.open(tmp_path / "gen" / "goldfish" / "masks" / "0.png"))
    assert mask.dtype == np.uint8 and mask.ndim == 2


def test_shipped_config_placeholders_fail_cleanly(tmp_path):
    from typer.testing import CliRunner

    from synth_sod.data_generation.cli import app

    result = CliRunner().invoke(app, ["generate", "--config_path", "generation_config.yaml"])
    assert result.exit_code == 2
    assert "model_path" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["filter", "--config_path", "filtering_config.yaml",
                                      f"input_path={tmp_path / 'missing'}"])
    assert result.exit_code == 2 and "input folder not found" in result.output
    result = CliRunner().invoke(app, ["generate", "--config_path", "generation_config.yaml",
                                      "num_steps=3"])
    assert result.exit_code == 2 and "unknown setting" in result.output
    assert not Path("path").exists()


@pytest.mark.slow
def test_published_commands_verbatim_from_flux_finetune(tmp_path):
    """README steps 1, 2 and 4 as written, run from flux_finetune/ (captions/tags through an
    OpenAI-compatible server given by OPENAI_BASE_URL), then filter + export via python -m."""
    from s3od.hub import save_checkpoint
    from tests.datagen_server import ChatServer, text_of

    folder = PACKAGE / "flux_finetune"
    images = tmp_path / "DUTS-TR" / "images"
    images.mkdir(parents=True)
    for src in sorted(SAMPLES.glob("*.jpg"))[:2]:
        Image.open(src).convert("RGB").resize((72, 48)).save(images / src.name)
    save_tiny_flux(tmp_path / "flux")

    def answer(req):
        return "dog" if "main object" in text_of(req) else "A photo of a dog on grass."

    with ChatServer(answer) as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        try:
            for script, out in (("generate_captions.py", "captions.json"),
                                ("tag_data.py", "tags.json")):
                done = _run([script, "--image_dir", str(tmp_path / "DUTS-TR"), "--output_file",
                             str(tmp_path / out)], folder)
                assert done.returncode == 0, done.stderr[-2000:]
        finally:
            del os.environ["OPENAI_BASE_URL"]
    assert len(json.loads((tmp_path / "tags.json").read_text())) == 2
    done = _run(["feature_extraction.py", "--caption_file", str(tmp_path / "captions.json"),
                 "--tag_file", str(tmp_path / "tags.json"), "--save_folder",
                 str(tmp_path / "feats"), "--model_path", str(tmp_path / "flux"),
                 "--dtype", "float32", "--device", "cpu", "--feature-blocks", "0,1,2,2",
                 "--concept-layers", "0,1", "--feature-dim", "8"], folder)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "feats" / "features").glob("DUTS-TR_*.npz"))) == 2

    save_checkpoint({"scale": torch.tensor(8.0), "bias": torch.tensor(0.0)},
                    tmp_path / "teacher.safetensors", "concept_map", {})
    write_prompts(tmp_path / "gen")
    import yaml

    cfg = dict(vars(gen_config(tmp_path)))
    cfg.update(teacher_checkpoint_path=str(tmp_path / "teacher.safetensors"))
    (tmp_path / "generation_config.yaml").write_text(yaml.safe_dump(cfg))
    done = _run([str(folder / "generate_train_images.py"), "--config_path",
                 "generation_config.yaml", "--num-shards", "2", "--shard-index", "1"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.parent.parent.name for p in (tmp_path / "gen").glob("*/metadata/0.json")] == [
        "tench"]  # shard 1 of 2 owns the second class only
    (tmp_path / "filtering_config.yaml").write_text(yaml.safe_dump({
        "input_path": str(tmp_path / "gen"), "output_path": str(tmp_path / "flat"),
        "filters": [{"type": "flip_consistency", "model_path": "/missing/student.pt"}]}))
    done = _run([str(folder / "run_filtering.py"), "--config_path", "filtering_config.yaml"],
                tmp_path)
    assert done.returncode == 2 and "cannot load the consistency student" in done.stderr
    assert "Traceback" not in done.stderr
    done = _run(["-m", "synth_sod.data_generation.export", "--input_dir", str(tmp_path / "gen"),
                 "--output_dir", str(tmp_path / "ds")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "ds" / "data").glob("train-*.parquet"))) == 1


TINY_TEACHER = {"encoder_config": {"hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 4, "num_attention_heads": 2,
                                   "num_register_tokens": 4, "patch_size": 16},
                "layer_indices": [1, 2, 3, 4], "features": 16, "out_channels": [8, 16, 32, 32],
                "num_masks": 1, "flux_feature_dims": [8, 8, 8, 8]}


def test_flux_teacher_checkpoint_drives_generation(pipe, tmp_path):
    """The training package's FluxDPTSegmentation, saved as it exports it, loaded by path."""
    flux_teacher = pytest.importorskip("synth_sod.model_training.flux_teacher")
    from s3od.hub import save_checkpoint
    from synth_sod.data_generation.teacher import load_teacher

    torch.manual_seed(0)
    model = flux_teacher.FluxDPTSegmentation(**TINY_TEACHER).eval()
    path = save_checkpoint(model.state_dict(), tmp_path / "teacher.safetensors", "flux_teacher",
                           TINY_TEACHER)
    loaded = load_teacher(path)
    assert isinstance(loaded, flux_teacher.FluxDPTSegmentation)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    write_prompts(tmp_path / "gen")
    cfg = gen_config(tmp_path, teacher_checkpoint_path=str(path), classes=["tench"])
    manifest = run_generation(cfg, pipe=pipe)
    assert (manifest.done, manifest.failed) == (1, [])
    image = Image.open(tmp_path / "gen" / "tench" / "images" / "0.jpg")
    mask = np.asarray(Image.open(tmp_path / "gen" / "tench" / "masks" / "0.png"))
    assert mask.shape == (image.height, image.width)
    save_checkpoint(model.state_dict(), tmp_path / "lite.safetensors", "lite", {})
    with pytest.raises(PipelineError, match="not a mask teacher"):
        load_teacher(tmp_path / "lite.safetensors")
    with pytest.raises(PipelineError, match="not found"):
        load_teacher(tmp_path / "missing.safetensors")


def test_real_image_features_feed_the_teacher_dataset(pipe, tmp_path):
    """Step 3's npz files are what the training package's FluxFeatureDataset reads."""
    data = pytest.importorskip("synth_sod.model_training.data")
    from diffusers import FluxImg2ImgPipeline

    img2img = FluxImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    root = tmp_path / "DUTS-TR"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    paths = []
    for src in sorted(SAMPLES.glob("*.jpg"))[:2]:
        Image.open(src).convert("RGB").resize((70, 50)).save(root / "images" / src.name)
        Image.fromarray(np.full((50, 70), 255, np.uint8)).save(root / "masks" / f"{src.stem}.png")
        paths.append(str(root / "images" / src.name))
    for kind, value in (("caption", "a photo"), ("tag", "cat")):
        (tmp_path / f"{kind}s.json").write_text(json.dumps(
            [{"image_path": p, kind: value} for p in paths]))
    extract_real_features(tmp_path / "captions.json", tmp_path / "tags.json", tmp_path / "feats",
                          None, pipe=img2img, feature_blocks=[0, 1, 2, 2], concept_layers=[0],
                          feature_dim=8, resolutions=[(96, 64), (64, 96)])
    ds = data.FluxFeatureDataset([data.scan_folder(root)], tmp_path / "feats")
    assert len(ds) == 2
    item = ds[0]
    assert tuple(item["images"].shape) == (3, 64, 96)
    assert [tuple(f.shape) for f in item["transformer_features"]] == [(24, 8)] * 4
    assert tuple(item["concept_maps"]["category"].shape) == (4, 6)


# ------------------------------------------------ hostile samples in filter and export (issue 22)


def _ids(cases, category: str = "hostile") -> set[str]:
    from synth_sod.data_generation.sharding import readable_text

    return {readable_text(f"{category}_{os.fsdecode(c.stem)}") for c in cases}


def test_filter_reports_broken_samples_and_never_passes_a_non_number(tmp_path):
    from synth_sod.data_generation.filters import build_filter
    from tests.hostile_corpus import sample_cases, write_samples

    cases = sample_cases()
    write_samples(tmp_path / "gen", cases)
    cfg = FilteringConfig(input_path=str(tmp_path / "gen"), output_path=str(tmp_path / "out"))
    flt = build_filter({"type": "teacher_agreement", "min_agreement": 0.5})
    manifest = run_filtering(cfg, filters=[flt])
    out = tmp_path / "out"
    failed = {f["id"] for f in manifest.failed}
    unknown = _ids(c for c in cases if not c.known)
    assert failed - unknown == _ids(c for c in cases if c.known and not c.valid)
    assert all("\n" not in f["error"] for f in manifest.failed)
    kept = {p.stem for p in (out / "metadata").glob("*.json")}
    assert kept - unknown == _ids(c for c in cases if c.known and c.valid and c.agrees)
    rejected = {json.loads(line)["id"] for line in
                (out / "rejections" / "shard-00000-of-00001.jsonl").read_text().splitlines()}
    assert rejected - unknown == _ids(c for c in cases if c.known and c.valid and not c.agrees)
    assert failed | kept | rejected == _ids(cases)  # every sample has one fate
    assert not (failed & kept or failed & rejected or kept & rejected)
    assert "hostile_agreement-true" in rejected  # a bool is not a number


def test_export_writes_only_rows_that_training_reads(tmp_path):
    """Broken, odd and fuzzed samples: every row written decodes in the training source with
    equal image and mask sizes; every other sample is reported by id; exit 1, no traceback."""
    data = pytest.importorskip("synth_sod.model_training.data")
    from typer.testing import CliRunner

    from synth_sod.data_generation.cli import app
    from synth_sod.data_generation.export import export_parquet
    from tests.hostile_corpus import fuzz_samples, sample_cases, write_samples

    cases, fuzzed = sample_cases(), fuzz_samples(40)
    write_samples(tmp_path / "gen", cases + fuzzed)
    manifest = export_parquet(tmp_path / "gen", tmp_path / "ds", rows_per_file=64)
    failed = {f["id"] for f in manifest.failed}
    assert _ids(c for c in cases if c.known and not c.valid) <= failed
    source = data.load_hf_source(str(tmp_path / "ds"))
    exported = {source.key(i).rsplit("/", 1)[-1] for i in range(len(source))}
    assert exported == _ids(cases + fuzzed) - failed
    assert _ids(c for c in cases if c.known and c.valid) <= exported
    assert failed & _ids(fuzzed) and exported & _ids(fuzzed)  # the fuzzer hits both ways
    for i in range(len(source)):
        image, mask = source.load(i)
        assert image.shape[:2] == mask.shape and image.ndim == 3
    result = CliRunner().invoke(app, ["export", "--input-dir", str(tmp_path / "gen"),
                                      "--output-dir", str(tmp_path / "ds2")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{len(failed)} failed" in " ".join(result.output.split())


def test_filter_and_export_name_the_files_they_leave_out(tmp_path, caplog):
    """Not a silent drop: files outside the suffix list, images without a mask and two images
    sharing a stem are named in a warning and in the filter manifest."""
    from synth_sod.data_generation.export import collect_rows
    from synth_sod.data_generation.filters import build_filter
    from tests.hostile_corpus import sample_cases, write_samples

    folder = write_samples(tmp_path / "gen", sample_cases()[:2])
    (folder / "images" / "scan.tif").write_bytes(b"II*\x00")
    (folder / "images" / "lonely.jpg").write_bytes((folder / "images" / "good-jpg.jpg")
                                                   .read_bytes())
    (folder / "images" / "good-png.webp").write_bytes(b"RIFF")
    cfg = FilteringConfig(input_path=str(tmp_path / "gen"), output_path=str(tmp_path / "out"))
    with caplog.at_level("WARNING"):
        manifest = run_filtering(cfg, filters=[build_filter({"type": "teacher_agreement"})])
        rows = collect_rows(tmp_path / "gen")
    note = manifest.settings["not_samples"]
    for expected in ("scan.tif", "lonely.jpg", "sharing a stem"):
        assert expected in note
        assert expected in caplog.text
    assert [r.id for r in rows] == ["hostile_good-jpg"]
