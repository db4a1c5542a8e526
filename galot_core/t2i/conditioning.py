"""What a prompt becomes before it reaches the denoiser, per model family, and what TextOpt moves.

Stable Diffusion 1/2 conditions on one tensor of token embeddings. Newer families add parts:

==========  ======================================  =====================================  ===================
family      tokens (B, L, D)                        pooled (B, P)                          ids (not optimised)
==========  ======================================  =====================================  ===================
SD 1/2      CLIP (or BERT) last hidden state        —                                      —
SDXL        CLIP-L ‖ CLIP-G penultimate states      CLIP-G projected EOS embedding         (time ids: sizes)
FLUX.1      T5-XXL last hidden state                CLIP-L pooled output                   text position ids
SD3/3.5     [CLIP-L ‖ CLIP-G penultimate, zero-     CLIP-L ‖ CLIP-G projected EOS          —
            padded to 4096] then T5-XXL states
FLUX.2      Qwen3 layers 9, 18, 27 stacked along    —                                      text position ids
[klein]     features (512 tokens, 3·D wide)
Z-Image     Qwen3 penultimate states of the         —                                      —
            prompt's own tokens (zero rows after)
==========  ======================================  =====================================  ===================

**TextOpt optimises tokens and pooled together**, as one vector per class inside one L2 ball
‖s − s*‖₂ ≤ ε (ε relative to the joint norm ‖s*‖ with ``gal.epsilon_relative``). Why both: in
SDXL and FLUX the pooled vector is a second, global channel of the same prompt (it modulates
every block through the timestep embedding / AdaLN), so leaving it at s* would let the prompt
keep part of its meaning fixed while the tokens move, and the informative direction may lie in
either. Why one ball: Eq. 2 constrains "the condition", and a joint ball keeps ε's meaning (a
fraction of the prompt's embedding) the same for every family. The token part dominates the
norm (77·2048 numbers against 1280 in SDXL; 512·4096 against 768 in FLUX), so the pooled part
moves about as far, relative to its own norm, as the tokens do. The ids (positions, image
sizes) are not a function of the prompt and stay fixed. In SD3 the zero padding of the CLIP
states is optimised too: the transformer reads those features, so they are part of the
condition. FLUX.2 and Z-Image condition on one sequence of Qwen3 states, so tokens are
everything TextOpt moves; Z-Image's zero rows after a shorter prompt are padding, cut off
before the transformer, so they get no gradient and stay zero (``galot_core/t2i/zimage.py``).

TextOpt (``galot_core/textopt.py``) works on plain tensors, so a conditioning travels as its
*packed* optimised parts: SD's tokens tensor unchanged (B, L, D), or tokens and pooled
flattened and concatenated into (B, 1, L·D + P). One row per class either way, which is what
TextOpt's per-row projection expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Conditioning:
    """One batch of prompt conditioning; ``tokens`` and ``pooled`` are the optimised parts."""

    tokens: Tensor
    """(B, L, D) token embeddings (cross-attention / joint-attention context)."""
    pooled: Tensor | None = None
    """(B, P) pooled prompt embedding, or ``None`` (SD 1/2)."""
    ids: Tensor | None = None
    """Position ids of the text tokens (FLUX's ``txt_ids``); fixed, not optimised."""

    def pack(self) -> Tensor:
        """The optimised parts as one tensor with one row per prompt (see the module docstring)."""
        if self.pooled is None:
            return self.tokens
        return torch.cat([self.tokens.flatten(1), self.pooled.flatten(1)], dim=1).unsqueeze(1)

    def layout(self) -> tuple[tuple[int, int], int | None]:
        """((L, D), P): what :meth:`unpack` needs to split a packed tensor again."""
        return (self.tokens.shape[1], self.tokens.shape[2]), None if self.pooled is None else self.pooled.shape[1]

    @staticmethod
    def unpack(packed: Tensor, layout: tuple[tuple[int, int], int | None], ids: Tensor | None = None) -> Conditioning:
        """The inverse of :meth:`pack` for ``layout``; the parts are views, so gradients reach ``packed``."""
        (length, dim), pooled_dim = layout
        if pooled_dim is None:
            if packed.shape[1:] != (length, dim):
                raise ValueError(f"conditioning has shape {tuple(packed.shape)}, expected (B, {length}, {dim})")
            return Conditioning(packed, None, ids)
        size = length * dim + pooled_dim
        if packed.dim() != 3 or packed.shape[1:] != (1, size):
            raise ValueError(f"packed conditioning has shape {tuple(packed.shape)}, expected (B, 1, {size}) "
                             f"= {length}x{dim} token embeddings + {pooled_dim} pooled")
        flat = packed[:, 0]
        return Conditioning(flat[:, :length * dim].reshape(-1, length, dim), flat[:, length * dim:], ids)
