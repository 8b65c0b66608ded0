"""Concept attention and block-feature capture on a tiny FLUX built from configs (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from synth_sod.data_generation.concept_attention import (
    ConceptAttention,
    ConceptAttentionState,
    ConceptAttnProcessor,
    joint_minmax,
)
from synth_sod.data_generation.flux import FluxProbe, closest_resolution, resolve_steps
from synth_sod.data_generation.sharding import PipelineError
from tests.datagen_tiny import build_tiny_flux

PROMPT = "a photo of a dog on grass"


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return build_tiny_flux()


def stock(pipe, seed=3, width=64, height=48, steps=4):
    return pipe(prompt=PROMPT, width=width, height=height, num_inference_steps=steps,
                guidance_scale=3.5, output_type="np",
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def test_processor_leaves_generated_image_unchanged(pipe):
    before = stock(pipe)
    probe = FluxProbe(pipe, concept_layers=[0, 1], feature_blocks=[0, 1, 2, 0], feature_dim=8)
    try:
        result = probe.generate(PROMPT, ["dog", "background"], 64, 48, num_inference_steps=4,
                                seed=3, concept_steps=[0, 1, 2, 3])
        # the pipeline decoded the same latents: compare the float output too
        with_probe = stock(pipe)
    finally:
        probe.close()
    assert result.maps.num_scores == 4 * 2  # every step x both dual blocks contributed
    np.testing.assert_array_equal(with_probe, before)
    assert np.array_equal(np.asarray(result.images[0]),
                          (before * 255).round().astype(np.uint8))
    for block in pipe.transformer.transformer_blocks:
        assert not isinstance(block.attn.processor, ConceptAttnProcessor)
    np.testing.assert_array_equal(stock(pipe), before)


def test_map_shapes_and_normalisation(pipe):
    probe = FluxProbe(pipe, concept_layers=[1], feature_blocks=[2, 2, 1, 0], feature_dim=8)
    try:
        res = probe.generate(PROMPT, ["dog", "background"], 64, 48, num_inference_steps=3,
                             seed=1, concept_steps=[-2, -1])
        other = probe.generate(PROMPT, ["car", "background"], 64, 48, num_inference_steps=3,
                               seed=1, concept_steps=[-2, -1])
    finally:
        probe.close()
    h, w = 48 // 16, 64 // 16
    assert res.grid == (h, w)
    assert res.maps.probabilities.shape == (1, 2, h, w)
    assert res.maps.num_scores == 2
    torch.testing.assert_close(res.maps.probabilities.sum(1), torch.ones(1, h, w))
    assert (res.maps.probabilities >= 0).all()
    scaled = res.maps.scaled
    assert scaled.shape == (1, 2, h, w)
    assert scaled.min() == 0 and scaled.max() == 1  # one min-max over both maps
    teacher_maps = res.maps.as_teacher_input()
    assert set(teacher_maps) == {"category", "background"}
    assert teacher_maps["category"].shape == (1, h, w)
    assert not torch.allclose(res.maps.probabilities, other.maps.probabilities)
    assert [tuple(f.shape) for f in res.features] == [(1, h * w, 8)] * 4
    torch.testing.assert_close(res.features[0], res.features[1])  # same block twice


def test_features_are_group_means_of_the_block_output(pipe):
    captured = {}

    def grab(module, args, output):
        captured.setdefault("calls", []).append(output[1].detach().clone())

    handle = pipe.transformer.single_transformer_blocks[1].register_forward_hook(grab)
    probe = FluxProbe(pipe, concept_layers=[0], feature_blocks=[1], feature_dim=8)
    try:
        res = probe.generate(PROMPT, ["dog", "background"], 64, 64, num_inference_steps=3,
                             seed=5, feature_step=1, concept_steps=[0])
    finally:
        probe.close()
        handle.remove()
    raw = captured["calls"][1]  # image tokens of the second transformer call
    expected = raw.reshape(1, raw.shape[1], 8, 4).mean(-1)
    torch.testing.assert_close(res.features[0], expected)


def test_concept_stream_matches_masked_joint_attention(pipe):
    """Reference: run the *stock* block with the concepts appended to the text stream and an
    attention mask that lets concepts see only concepts + image, and nobody see the concepts.
    Image, text and concept outputs must equal the processor's."""
    torch.manual_seed(0)
    tr = pipe.transformer
    block = tr.transformer_blocks[0]
    b, n_img, n_txt, k, d = 1, 12, 5, 2, tr.inner_dim
    img, txt, con = torch.randn(b, n_img, d), torch.randn(b, n_txt, d), torch.randn(b, k, d)
    temb = torch.randn(b, d)
    img_ids = torch.randn(n_img, 3)
    with torch.no_grad():
        ref_txt_con, ref_img = block(img, torch.cat([txt, con], 1), temb,
                                     tr.pos_embed(torch.cat([torch.zeros(n_txt + k, 3),
                                                             img_ids])),
                                     {"attention_mask": _mask(n_txt, k, n_img)})
        state = ConceptAttentionState(tr, layers=[0])
        state.reset(["a", "b"], torch.zeros(1, k, 32), torch.zeros(1, 32), steps=[0])
        state.call_index, state.hidden, state.temb = 0, con.clone(), temb
        original = block.attn.processor
        block.attn.set_processor(ConceptAttnProcessor(state, 0, block, original))
        try:
            out_txt, out_img = block(img, txt, temb,
                                     tr.pos_embed(torch.cat([torch.zeros(n_txt, 3), img_ids])))
        finally:
            block.attn.set_processor(original)
    torch.testing.assert_close(out_img, ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_txt, ref_txt_con[:, :n_txt], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.hidden, ref_txt_con[:, n_txt:], atol=1e-5, rtol=1e-5)
    assert state.num_scores == 1 and state.score_sum.shape == (b, n_img, k)


def _mask(n_txt: int, k: int, n_img: int) -> torch.Tensor:
    s = n_txt + k + n_img
    allowed = torch.ones(s, s, dtype=torch.bool)
    con = slice(n_txt, n_txt + k)
    allowed[:, con] = False  # text and image never see concepts
    allowed[con, :] = False
    allowed[con, n_txt:] = True  # concepts see concepts + image, not text
    return allowed[None, None]


def test_invalid_layers_steps_and_blocks(pipe):
    with pytest.raises(ValueError, match="dual-stream blocks"):
        ConceptAttention(pipe.transformer, [0, 7])
    with pytest.raises(PipelineError, match="single-stream blocks"):
        FluxProbe(pipe, concept_layers=[0], feature_blocks=[9])
    with pytest.raises(PipelineError, match="does not divide"):
        FluxProbe(pipe, concept_layers=[0], feature_blocks=[0], feature_dim=7)
    for block in pipe.transformer.transformer_blocks:  # failed constructions left nothing behind
        assert not isinstance(block.attn.processor, ConceptAttnProcessor)
    assert resolve_steps([-3, -1, 0], 28) == [0, 25, 27]
    with pytest.raises(PipelineError, match="does not exist"):
        resolve_steps([28], 28)


def test_joint_minmax_and_resolution_table():
    maps = torch.tensor([[[[0.2, 0.4]], [[0.6, 0.8]]], [[[0.5, 0.5]], [[0.5, 0.5]]]])
    out = joint_minmax(maps)
    torch.testing.assert_close(out[0], torch.tensor([[[0.0, 1 / 3]], [[2 / 3, 1.0]]]))
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # constant -> zeros
    assert closest_resolution(1920, 1080) == (1344, 768)
    assert closest_resolution(480, 640) == (896, 1152)
    assert closest_resolution(500, 500) == (1024, 1024)
