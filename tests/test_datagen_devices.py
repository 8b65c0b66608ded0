"""Data-generation models on the right GPU under multi-process launches, checked on CPU.

torchrun/srun start one process per GPU; each used to load the filter student on ``cuda:0``
and spread its own Gemma over every GPU, and each VLM judge built its own copy. CUDA is faked
here (availability and count) and the model loaders are recorded, so only the placement
decisions run; nothing is moved to a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synth_sod.data_generation import llm
from synth_sod.data_generation.configs import load_mapping
from synth_sod.data_generation.devices import local_rank, rank_device
from synth_sod.data_generation.filters import Sample, build_filter


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)


def test_local_rank_from_torchrun_or_srun():
    assert local_rank({}) is None
    assert local_rank({"LOCAL_RANK": "3"}) == 3
    assert local_rank({"SLURM_LOCALID": "2"}) == 2
    assert local_rank({"LOCAL_RANK": "", "SLURM_LOCALID": "1"}) == 1


@pytest.mark.parametrize("requested,env,expected", [
    ("cuda", {"LOCAL_RANK": "2"}, "cuda:2"),
    (None, {"SLURM_LOCALID": "3"}, "cuda:3"),
    ("cuda", {"LOCAL_RANK": "6"}, "cuda:2"),     # 8 tasks, 4 visible GPUs
    ("cuda", {}, "cuda"),                        # one process: unchanged
    (None, {}, None),
    ("cuda:1", {"LOCAL_RANK": "2"}, "cuda:1"),   # an explicit index wins
    ("cpu", {"LOCAL_RANK": "2"}, "cpu"),
])
def test_rank_device(four_gpus, requested, env, expected):
    assert rank_device(requested, env) == expected


def test_rank_device_without_cuda_keeps_the_request(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("cuda", {"LOCAL_RANK": "1"}) == "cuda"
    assert rank_device(None, {"LOCAL_RANK": "1"}) is None


def _shipped_filters() -> list[dict]:
    return load_mapping("filtering_config.yaml")["filters"]


def test_flip_filter_student_goes_to_this_ranks_gpu(four_gpus, monkeypatch):
    import s3od

    devices = []

    class Recorder:
        def __init__(self, model, image_size=None, device=None, **_):
            devices.append(device)

        def predict_arrays(self, images):  # pragma: no cover - not called
            raise AssertionError

    monkeypatch.setattr(s3od, "BackgroundRemoval", Recorder)
    monkeypatch.setenv("LOCAL_RANK", "3")
    spec = next(f for f in _shipped_filters() if f["type"] == "flip_consistency")
    build_filter(spec).prepare()
    from synth_sod.data_generation.mining import student_predictor

    student_predictor("student.safetensors", None, None)
    assert devices == ["cuda:3", "cuda:3"]


class _Inputs(dict):
    def to(self, device):
        self.device = device
        return self


class FakeProcessor:
    def apply_chat_template(self, messages, **_):
        return _Inputs(input_ids=torch.zeros(1, 3, dtype=torch.long))

    def decode(self, tokens, skip_special_tokens=True):
        return ('{"has_salient_object": true, "covers_object": true, "is_clean_mask": true, '
                '"confidence": 0.9}')


class FakeVLM:
    device = torch.device("cpu")

    def eval(self):
        return self

    def generate(self, **_):
        return torch.zeros(1, 5, dtype=torch.long)


def test_vlm_judges_share_one_model_on_this_ranks_gpu(four_gpus, monkeypatch):
    import transformers

    loads = []

    def load_model(model_id, dtype=None, device_map=None):
        loads.append((model_id, device_map))
        return FakeVLM()

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained",
                        lambda *a, **k: FakeProcessor())
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", load_model)
    monkeypatch.setattr(llm, "_LOCAL_CLIENTS", {})
    monkeypatch.setenv("LOCAL_RANK", "1")
    judges = [build_filter(f) for f in _shipped_filters() if f["type"] != "flip_consistency"]
    assert {j.name for j in judges} == {"semantic_quality", "mask_artifacts"}
    for judge in judges:
        judge.prepare()
    assert judges[0].client is judges[1].client  # one copy of Gemma per process
    sample = Sample(None, None, "cat", "0")  # type: ignore[arg-type]
    sample.__dict__["image"] = np.zeros((32, 32, 3), np.uint8)
    sample.__dict__["mask"] = np.zeros((32, 32), np.uint8)
    assert all(j.check(sample).passed for j in judges)
    assert loads == [("google/gemma-3-4b-it", {"": "cuda:1"})]  # not "auto": all GPUs


def test_vlm_device_map_in_a_single_process(four_gpus, monkeypatch):
    assert llm.process_device_map() == {"": "cuda:0"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert llm.process_device_map() is None
    assert llm.TransformersVLMClient("m", device_map="auto").device_map == "auto"
