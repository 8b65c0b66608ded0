"""A tiny FLUX pipeline and a tiny teacher built from configs, fully offline (no download).

Same classes as FLUX.1-dev (FluxTransformer2DModel with guidance embeddings, AutoencoderKL with
a 16x token stride, CLIP and T5 encoders, FlowMatch scheduler with dynamic shifting), with
small numbers: 2 dual + 3 single blocks, width 32. Tokenizers are word-level ``tokenizers``
models written here, saved as ordinary fast tokenizers.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = """
a an the of on in with and at by photo picture dog cat car chair person bird tree grass
room street table red green blue white black small large object background sitting
standing running light sunny day night close up view wooden old new beach field sky horse
apple cup bottle flower garden city road house window water river mountain snow
""".split()  # noqa: SIM905
INNER = 32  # transformer width: 2 heads x 16


def _word_tokenizer(specials: list[str], template: str, eos: str, pad: str, max_len: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(s, vocab[s]) for s in specials if s in template])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token=eos,
                                   pad_token=pad, model_max_length=max_len), len(vocab)


def build_tiny_flux_components() -> dict:
    """Components keyed like ``FluxPipeline(**components)``, seeded for reproducibility."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, clip_vocab = _word_tokenizer(["<|startoftext|>", "<|endoftext|>", "<unk>"],
                                           "<|startoftext|> $A <|endoftext|>", "<|endoftext|>",
                                           "<|endoftext|>", 77)
    t5_tok, t5_vocab = _word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", "</s>", "<pad>",
                                       512)
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=clip_vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, projection_dim=32)).eval()
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(
        vocab_size=t5_vocab, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)).eval()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6)).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
        scaling_factor=1.5035).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return {"scheduler": scheduler, "vae": vae, "text_encoder": clip, "tokenizer": clip_tok,
            "text_encoder_2": t5, "tokenizer_2": t5_tok, "transformer": transformer}


def build_tiny_flux(img2img: bool = False):
    """An in-memory tiny ``FluxPipeline`` (or img2img) in float32 on CPU."""
    from diffusers import FluxImg2ImgPipeline, FluxPipeline

    cls = FluxImg2ImgPipeline if img2img else FluxPipeline
    pipe = cls(**build_tiny_flux_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_flux(folder: Path) -> Path:
    """Save the tiny pipeline in diffusers layout (what ``model_path`` points at)."""
    build_tiny_flux().save_pretrained(folder)
    return folder


class TinyTeacher(torch.nn.Module):
    """A small module with the FluxDPTSegmentation call signature, for pipeline tests.

    ``forward(images (B,3,H,W), transformer_features [4 x (B, N, C)], concept_maps
    {"category", "background"} (B,h,w)) -> {"pred_masks": (B,1,H,W), "pred_iou": (B,1)}``.
    """

    def __init__(self, feature_dim: int = 8, num_features: int = 4) -> None:
        super().__init__()
        self.num_features = num_features
        self.proj = torch.nn.Conv2d(feature_dim * num_features + 2 + 3, 1, 1)
        self.iou = torch.nn.Linear(1, 1)
        self.calls: list[dict] = []

    def forward(self, images, transformer_features, concept_maps):
        b, _, h, w = images.shape
        gh, gw = concept_maps["category"].shape[-2:]
        self.calls.append({"images": tuple(images.shape),
                           "features": [tuple(f.shape) for f in transformer_features],
                           "maps": {k: tuple(v.shape) for k, v in concept_maps.items()}})
        feats = [f.transpose(1, 2).reshape(b, -1, gh, gw) for f in transformer_features]
        maps = torch.stack([concept_maps["category"], concept_maps["background"]], 1)
        small = torch.nn.functional.interpolate(images, size=(gh, gw), mode="area")
        x = self.proj(torch.cat([*feats, maps, small], 1))
        logits = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear")
        return {"pred_masks": logits, "pred_iou": self.iou(logits.mean((2, 3)))}
