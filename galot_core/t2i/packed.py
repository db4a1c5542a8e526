"""Families whose conditioning has several parts (SDXL, FLUX): one packed row for TextOpt.

TextOpt moves one tensor per class; SDXL and FLUX condition on token embeddings *and* a pooled
vector, so their backends pack both into one row and unpack it (as views, so gradients reach the
packed row) with the layout of the unconditional encoding.
"""

from __future__ import annotations

from torch import Tensor

from galot_core.t2i.backend import DiffusersT2I
from galot_core.t2i.conditioning import Conditioning


class PackedT2I(DiffusersT2I):
    """A family whose conditioning has several parts (tokens, pooled vector): TextOpt moves them
    packed into one row, and the layout of the unconditional encoding unpacks them (SDXL, FLUX)."""

    _layout: tuple[tuple[int, int], int | None] | None = None

    def encode(self, prompts: list[str]) -> Tensor:
        """The packed optimised conditioning (B, 1, N) of ``prompts`` (TextOpt's variable)."""
        return self.encode_conditioning(prompts).pack()

    def unconditional(self) -> Conditioning:
        """The conditioning of the unconditional half of guidance: the encoding of ""."""
        return self.encode_conditioning([""])

    @property
    def uncond(self) -> Tensor:
        """The packed unconditional conditioning (1, 1, N); computing it also fixes the layout."""
        if self._uncond is None:
            empty = self.unconditional()
            self._layout = empty.layout()
            self._uncond = empty.pack()
        return self._uncond

    def unpack(self, packed: Tensor) -> Conditioning:
        """Tokens and pooled of a packed conditioning (views: gradients reach ``packed``)."""
        if self._layout is None:
            self.uncond  # noqa: B018 - computes the layout
        return Conditioning.unpack(packed, self._layout)
