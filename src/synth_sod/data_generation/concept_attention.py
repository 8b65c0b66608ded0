"""Concept attention for diffusers' FLUX transformer, installed as attention processors.

Why: the teacher needs a coarse "where is the object" signal from the diffusion model itself.
ConceptAttention (Helbling et al., 2025) gets it by sending a few extra *concept* tokens (here
``[tag, "background"]``) through the dual-stream blocks as read-only observers and comparing
them with the image tokens in the attention *output* space. Nothing here forks diffusers: the
stock ``FluxTransformer2DModel`` keeps its blocks, and each dual-stream block's attention gets a
:class:`ConceptAttnProcessor` that computes exactly what the stock processor computes for the
image and text tokens, plus the concept stream on the side.

The maths, for dual-stream block ``l`` at denoising step ``t`` (per head, then heads merged)::

    c  ∈ R^{K×D}   concept residual stream, c⁰ = W_ctx · T5(concept)[first token]
    ĉ, g, β, γ, g' = AdaLN_text(c; τ_c)
    τ_c = time_text_embed(t, guidance, CLIP(" ".join(concepts)))
    q_c, k_c, v_c = RMSNorm(W^txt_q ĉ), RMSNorm(W^txt_k ĉ), W^txt_v ĉ      (text projections)
    k_x, v_x      = the image keys/values of the stock computation (RoPE applied; concept RoPE
                    ids are zero, i.e. no rotation)
    o_c = softmax(q_c [k_c; k_x]ᵀ / √d) [v_c; v_x]      concepts attend to concepts + image only
    o_x = the stock image attention output (image tokens never see the concepts)
    u_c = W^img_out o_c,  u_x = W^img_out o_x           both in the image output space
    s_{t,l} = softmax_K( u_x · (u_c / ‖u_c‖₂)ᵀ )  ∈ R^{N×K}
    c ← c + g ⊙ W^txt_out o_c;   c ← c + g' ⊙ FF_txt(LN(c)(1+γ) + β)   (flows to block l+1)

    P = mean over the configured (t, l) of s_{t,l}   →  P[n, :] sums to 1 over the K concepts
    map_k = P[:, k] reshaped to the token grid (H/16 × W/16); ``scaled`` = one min–max per image
    over all K maps together (what the published teacher was trained on).

Scores are accumulated on the fly (sum and count) instead of stacking every (t, l) output,
which is the same mean but needs memory for one N×K map instead of T·L·(N+K)·D vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class ConceptMaps:
    """Concept maps of a batch.

    Attributes:
        concepts: the K concept strings, e.g. ``["dog", "background"]``.
        probabilities: ``(B, K, h, w)`` float32; sums to 1 over K at every token.
        scaled: ``(B, K, h, w)`` float32 in [0, 1]; one min–max over all K maps of an image.
        num_scores: how many (step, block) score maps were averaged.
    """

    concepts: list[str]
    probabilities: torch.Tensor
    scaled: torch.Tensor
    num_scores: int

    def as_teacher_input(self) -> dict[str, torch.Tensor]:
        """``{"category": (B,h,w), "background": (B,h,w)}`` as the teacher consumes them."""
        return {"category": self.scaled[:, 0], "background": self.scaled[:, -1]}


def joint_minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each image's ``(K, h, w)`` stack to [0, 1] with one min and max; constant -> zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return out.view_as(maps)


class ConceptAttentionState:
    """What the processors of one transformer share during one pipeline call."""

    def __init__(self, transformer: torch.nn.Module, layers: Sequence[int]) -> None:
        self.transformer = transformer
        self.layers = set(int(i) for i in layers)
        self.steps: set[int] = set()
        self.concepts: list[str] = []
        self.concept_embeds: torch.Tensor | None = None
        self.pooled: torch.Tensor | None = None
        self.call_index = -1
        self.timestep: torch.Tensor | None = None
        self.guidance: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None
        self.temb: torch.Tensor | None = None
        self.score_sum: torch.Tensor | None = None
        self.num_scores = 0

    @property
    def enabled(self) -> bool:
        return self.concept_embeds is not None and self.call_index in self.steps

    def reset(self, concepts: list[str], concept_embeds: torch.Tensor, pooled: torch.Tensor,
              steps: Sequence[int]) -> None:
        self.concepts = list(concepts)
        self.concept_embeds, self.pooled = concept_embeds, pooled
        self.steps = set(int(s) for s in steps)
        self.call_index = -1
        self.hidden = self.temb = self.score_sum = None
        self.num_scores = 0

    def clear(self) -> None:
        self.concept_embeds = self.pooled = self.hidden = self.temb = self.score_sum = None

    def begin_forward(self, kwargs: dict[str, Any]) -> None:
        self.call_index += 1
        self.timestep = kwargs.get("timestep")
        self.guidance = kwargs.get("guidance")
        self.hidden = self.temb = None

    def start_stream(self, batch: int, dtype: torch.dtype) -> None:
        """Concept tokens and their conditioning vector for this forward pass (first block)."""
        tr = self.transformer
        assert self.concept_embeds is not None and self.pooled is not None
        embeds = self.concept_embeds.to(dtype)
        if embeds.shape[0] == 1 and batch > 1:
            embeds = embeds.expand(batch, -1, -1)
        pooled = self.pooled.to(dtype)
        if pooled.shape[0] == 1 and batch > 1:
            pooled = pooled.expand(batch, -1)
        self.hidden = tr.context_embedder(embeds)
        device = self.hidden.device
        timestep = self.timestep.to(device=device, dtype=dtype) * 1000
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if self.guidance is not None and getattr(tr.config, "guidance_embeds", False):
            guidance = self.guidance.to(device=device, dtype=dtype) * 1000
            self.temb = tr.time_text_embed(timestep, guidance, pooled.to(device))
        else:
            self.temb = tr.time_text_embed(timestep, pooled.to(device))

    def add_scores(self, concept_out: torch.Tensor, image_out: torch.Tensor) -> None:
        unit = F.normalize(concept_out.float(), dim=-1, eps=1e-8)
        scores = torch.einsum("bnd,bkd->bnk", image_out.float(), unit).softmax(dim=-1)
        self.score_sum = scores if self.score_sum is None else self.score_sum + scores
        self.num_scores += 1

    def maps(self, grid: tuple[int, int]) -> ConceptMaps:
        """Average the recorded scores into maps on the ``(h, w)`` token grid."""
        if self.score_sum is None or self.num_scores == 0:
            raise RuntimeError("no concept-attention scores were recorded: check that the "
                               "configured steps and layers exist in this run")
        probs = (self.score_sum / self.num_scores).permute(0, 2, 1)
        b, k, n = probs.shape
        if grid[0] * grid[1] != n:
            raise RuntimeError(f"token grid {grid} does not match {n} image tokens")
        probs = probs.reshape(b, k, *grid).cpu()
        return ConceptMaps(self.concepts, probs, joint_minmax(probs), self.num_scores)


def _project(linear_q, linear_k, linear_v, fused, x):
    if fused is not None:
        return fused(x).chunk(3, dim=-1)
    return linear_q(x), linear_k(x), linear_v(x)


class ConceptAttnProcessor:
    """Stock FLUX joint attention for image + text, plus the concept stream when enabled.

    With the state disabled (steps outside the configured ones) it hands over to the original
    processor, so those steps run exactly the stock code.
    """

    def __init__(self, state: ConceptAttentionState, block_index: int, block: torch.nn.Module,
                 original: Any) -> None:
        self.state = state
        self.block_index = block_index
        self.block = block
        self.original = original
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: Any = None) -> Any:
        state = self.state
        if not state.enabled or encoder_hidden_states is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask,
                                 image_rotary_emb)
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        fused = getattr(attn, "fused_projections", False)
        hd = attn.head_dim
        query, key, value = _project(attn.to_q, attn.to_k, attn.to_v,
                                     attn.to_qkv if fused else None, hidden_states)
        e_query, e_key, e_value = _project(attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                                           attn.to_added_qkv if fused else None,
                                           encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, hd)))
        key = attn.norm_k(key.unflatten(-1, (-1, hd)))
        value = value.unflatten(-1, (-1, hd))
        e_query = attn.norm_added_q(e_query.unflatten(-1, (-1, hd)))
        e_key = attn.norm_added_k(e_key.unflatten(-1, (-1, hd)))
        e_value = e_value.unflatten(-1, (-1, hd))
        query = torch.cat([e_query, query], dim=1)
        key = torch.cat([e_key, key], dim=1)
        value = torch.cat([e_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                    backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(query.dtype)
        txt_len = encoder_hidden_states.shape[1]
        txt_out, img_out = out.split_with_sizes([txt_len, out.shape[1] - txt_len], dim=1)
        img_out = attn.to_out[1](attn.to_out[0](img_out.contiguous()))
        txt_out = attn.to_add_out(txt_out.contiguous())

        self._concept_stream(attn, key[:, txt_len:], value[:, txt_len:], img_out, fused)
        return img_out, txt_out

    def _concept_stream(self, attn, img_key: torch.Tensor, img_value: torch.Tensor,
                        img_out: torch.Tensor, fused: bool) -> None:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        state, block, hd = self.state, self.block, attn.head_dim
        if state.hidden is None:
            state.start_stream(img_out.shape[0], img_out.dtype)
        c = state.hidden
        c_norm, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(c, emb=state.temb)
        c_query, c_key, c_value = _project(attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                                           attn.to_added_qkv if fused else None, c_norm)
        c_query = attn.norm_added_q(c_query.unflatten(-1, (-1, hd)))
        c_key = attn.norm_added_k(c_key.unflatten(-1, (-1, hd)))
        c_value = c_value.unflatten(-1, (-1, hd))
        c_out = dispatch_attention_fn(c_query, torch.cat([c_key, img_key], dim=1),
                                      torch.cat([c_value, img_value], dim=1),
                                      backend=self._attention_backend)
        c_out = c_out.flatten(2, 3).to(c_query.dtype)
        if self.block_index in state.layers:
            state.add_scores(attn.to_out[0](c_out), img_out)
        c = c + gate_msa.unsqueeze(1) * attn.to_add_out(c_out)
        c_ff = block.norm2_context(c) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        state.hidden = c + gate_mlp.unsqueeze(1) * block.ff_context(c_ff)


class ConceptAttention:
    """Install concept attention on a ``FluxTransformer2DModel``; remove it with :meth:`remove`.

    Args:
        transformer: the FLUX transformer (any size; only the dual-stream blocks are touched).
        layers: dual-stream block indices whose scores are averaged (published: 0–17 of 19).
            Every dual block still updates the concept stream, so block ``l`` sees the concepts
            as processed by blocks ``0..l-1``.
    """

    def __init__(self, transformer: torch.nn.Module, layers: Sequence[int]) -> None:
        blocks = transformer.transformer_blocks
        bad = [i for i in layers if not 0 <= int(i) < len(blocks)]
        if bad:
            raise ValueError(f"concept layers {bad} do not exist: the transformer has "
                             f"{len(blocks)} dual-stream blocks (0..{len(blocks) - 1})")
        self.transformer = transformer
        self.state = ConceptAttentionState(transformer, layers)
        self._originals = []
        for i, block in enumerate(blocks):
            original = block.attn.processor
            self._originals.append(original)
            block.attn.set_processor(ConceptAttnProcessor(self.state, i, block, original))
        self._hook = transformer.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, module, args, kwargs):
        self.state.begin_forward(kwargs)
        return None

    def remove(self) -> None:
        """Put the original processors back."""
        for block, original in zip(self.transformer.transformer_blocks, self._originals,
                                   strict=True):
            block.attn.set_processor(original)
        self._hook.remove()
        self.state.clear()

    def __enter__(self) -> ConceptAttention:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
