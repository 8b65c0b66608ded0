"""Hub-style sources without network: local parquet through `datasets`, DINOv3 `from_pretrained`."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lightning")
import torch


def test_parquet_dataset_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from synth_sod.model_training.data import MaskDataset, load_source, split_source

    rows = {"image": [], "mask": [], "caption": [], "category": [], "id": []}
    for i in range(6):
        img = np.full((24, 32, 3), 20 * i, np.uint8)
        mask = np.zeros((24, 32), np.uint8)
        mask[4:20, 8:24] = 255
        rows["image"].append(Image.fromarray(img))
        rows["mask"].append(Image.fromarray(mask))
        rows["caption"].append(f"thing {i}")
        rows["category"].append("thing")
        rows["id"].append(f"thing_{i}")
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(),
                                  "caption": datasets.Value("string"),
                                  "category": datasets.Value("string"),
                                  "id": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(rows, features=features)
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))

    source = load_source({"hf": str(tmp_path / "pq"), "name": "s3od_dataset",
                          "cache_dir": str(tmp_path / "cache")})
    assert len(source) == 6 and source.key(2) == "s3od_dataset/thing_2"
    image, mask = source.load(3)
    assert image.shape == (24, 32, 3) and mask.shape == (24, 32) and image[0, 0, 0] == 60
    train, val = split_source(source, 0.34, seed=42)
    assert len(train) == 4 and len(val) == 2
    item = MaskDataset([train], 32, "synthetic")[0]
    assert item["images"].shape == (3, 32, 32) and float(item["masks"].max()) <= 1.0


def test_pretrained_dinov3_loads_with_from_pretrained(tmp_path):
    """The real loading path (DINOv3ViTModel.from_pretrained) against a local folder."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from synth_sod.model_training.models import build_training_model

    enc = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
           "num_attention_heads": 2, "num_register_tokens": 4, "patch_size": 16}
    torch.manual_seed(1)
    source = DINOv3ViTModel(DINOv3ViTConfig(**enc))
    source.save_pretrained(tmp_path / "hub_copy")
    model = build_training_model({
        "architecture": "dpt_dinov3", "pretrained": True,
        "encoder_name": str(tmp_path / "hub_copy"),
        "params": {"encoder_config": enc, "layer_indices": [1, 2, 3, 4], "features": 16,
                   "out_channels": [8, 16, 32, 32], "num_masks": 3},
    })
    def flat(sd):  # transformers >= 5.4 nests blocks under "model."
        return {k.replace("model.layer.", "layer."): v for k, v in sd.items()}

    want, got = flat(source.state_dict()), flat(model.encoder.state_dict())
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got)
