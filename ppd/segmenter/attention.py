"""CPU decoder attention: SAM2's mask-decoder attention computed as two matmuls."""

from __future__ import annotations

import torch

#: Largest attention-score tensor (elements) :func:`use_matmul_attention` layers build;
#: larger calls (many prompt sets on 1024-px models) use the fused kernel.
MATMUL_ATTENTION_MAX_SCORES = 1 << 25
_MATMUL_ATTENTION: dict[str, type] = {}  # the class, built on first use


def _matmul_attention_class() -> type:
    """The subclass of SAM2's decoder ``Attention`` that :func:`use_matmul_attention` installs
    (built on first use: importing sam2 initialises Hydra, which stays behind the model
    factory)."""
    if "cls" in _MATMUL_ATTENTION:
        return _MATMUL_ATTENTION["cls"]
    from sam2.modeling.sam.transformer import Attention

    class MatmulAttention(Attention):
        """SAM2's mask-decoder attention with ``softmax(q k^T / sqrt(d)) v`` as two matmuls
        (same weights, same result up to float rounding)."""

        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            n_scores = q.shape[0] * self.num_heads * q.shape[1] * k.shape[1]
            if (self.training and self.dropout_p > 0) or n_scores > MATMUL_ATTENTION_MAX_SCORES:
                return super().forward(q, k, v)  # the fused kernel never holds all scores
            q = self._separate_heads(self.q_proj(q), self.num_heads)
            k = self._separate_heads(self.k_proj(k), self.num_heads)
            v = self._separate_heads(self.v_proj(v), self.num_heads)
            attn = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1)).softmax(dim=-1)
            return self.out_proj(self._recombine_heads(torch.matmul(attn, v)))

    _MATMUL_ATTENTION["cls"] = MatmulAttention
    return MatmulAttention


def use_matmul_attention(mask_decoder: torch.nn.Module, on: bool = True) -> int:
    """Make the attention layers of SAM2's mask decoder compute attention as two matmuls
    instead of ``F.scaled_dot_product_attention`` (``on=False``: back to SAM2's own);
    returns how many layers changed.

    Why: on CPU, PyTorch's fused attention kernel is slow for the decoder's shapes (8 heads
    of 4 to 8 channels over a few prompt tokens and the image tokens). Measured on the
    2-core CI-class CPU, bundled model, 2 threads (``python docs/experiments/decoder_attention_timing.py``,
    medians of 35 alternating rounds): a decoder call of 16 prompt sets on 16 images
    18.2 -> 16.2 ms, 16 calls of one set 47.7 -> 42.7 ms; masks identical, scores within
    1e-6; refine 2-4 ms faster with identical outputs. The official architectures keep
    SAM2's results within the parity tests' tolerances (tests/core/test_segmenter.py). Only
    plain ``Attention`` layers change (not subclasses such as the memory attention's
    ``RoPEAttention``); the class is swapped in place, so weights, state dict and module
    names stay those of SAM2. :class:`~ppd.segmenter.Segmenter` turns it on for CPU models and off on
    CUDA, where the fused kernel is the faster one.
    """
    from sam2.modeling.sam.transformer import Attention

    cls = _matmul_attention_class()
    old, new = (Attention, cls) if on else (cls, Attention)
    n = 0
    for module in mask_decoder.modules():
        if type(module) is old:
            module.__class__ = new
            n += 1
    return n
