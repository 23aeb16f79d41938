"""GPT backbone (pre-LN, causal self-attention) with a batched, forkable KV cache.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``; when flash-attn is installed,
the tensors are on a GPU in fp16/bf16 and ``backend`` allows it, ``flash_attn_func`` is used instead (its
causal mask is bottom-right aligned from flash-attn 2.1 on, which is what cached decoding needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # optional GPU extra
    from flash_attn import flash_attn_func  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001  (missing or broken install: fall back to SDPA)
    flash_attn_func = None


@dataclass
class KVCache:
    """Keys and values of every layer: ``k``, ``v`` (layers, B, heads, max_tokens, head_dim), valid up to
    ``length`` tokens (the same for every row). ``fork`` gathers rows into a new cache; decoding appends in
    place."""

    k: Tensor
    v: Tensor
    length: int = 0

    @classmethod
    def empty(cls, num_layers: int, batch: int, num_heads: int, max_tokens: int, head_dim: int,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> KVCache:
        shape = (num_layers, batch, num_heads, max_tokens, head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_tokens(self) -> int:
        return self.k.shape[3]

    def fork(self, index: Tensor, out: KVCache | None = None) -> KVCache:
        """A cache whose row i is a copy of row ``index[i]`` of this one (rows may repeat): a new one, or ``out``
        (a preallocated cache of ``len(index)`` rows, written in place, its length set; fixed addresses for CUDA
        graphs)."""
        if out is None:
            k = self.k.new_empty((self.k.shape[0], len(index), *self.k.shape[2:]))
            out = KVCache(k, torch.empty_like(k))
        elif out.k.shape[1] != len(index) or out.k.shape[2:] != self.k.shape[2:] or out.k.dtype != self.k.dtype:
            raise ValueError(f"fork into a cache of shape {tuple(out.k.shape)} {out.k.dtype}: expected "
                             f"{len(index)} rows like {tuple(self.k.shape)} {self.k.dtype}")
        n = self.length
        out.k[:, :, :, :n] = self.k[:, index, :, :n]
        out.v[:, :, :, :n] = self.v[:, index, :, :n]
        out.length = n
        return out

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, heads, T, head_dim) new keys/values after the first ``length`` tokens of ``layer`` and
        return the views over all ``length + T`` tokens. ``length`` moves on in ``advance``."""
        end = self.length + k.shape[2]
        if end > self.max_tokens:
            raise ValueError(f"KV cache overflow: {end} tokens > max_tokens {self.max_tokens}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens


class SelfAttention(nn.Module):
    """Multi-head causal self-attention; separate query/key/value projections (official names).

    ``backend``: auto (flash-attn when usable, else SDPA) | sdpa | flash | manual (explicit softmax).
    """

    def __init__(self, embed_dim: int, num_heads: int, attn_pdrop: float, resid_pdrop: float,
                 backend: str = "auto"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.key = nn.Linear(embed_dim, embed_dim)
        self.query = nn.Linear(embed_dim, embed_dim)
        self.value = nn.Linear(embed_dim, embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.attn_pdrop = attn_pdrop
        self.resid_drop = nn.Dropout(resid_pdrop)
        self.backend = backend

    def _use_flash(self, q: Tensor) -> bool:
        return (self.backend in ("auto", "flash") and flash_attn_func is not None and q.is_cuda
                and q.dtype in (torch.float16, torch.bfloat16))

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, E = x.shape
        h = self.num_heads
        q = self.query(x).view(B, T, h, E // h).transpose(1, 2)  # (B, h, T, d)
        k = self.key(x).view(B, T, h, E // h).transpose(1, 2)
        v = self.value(x).view(B, T, h, E // h).transpose(1, 2)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.write(layer, k, v)  # (B, h, start+T, d)
            k, v = k.to(q.dtype), v.to(q.dtype)
        dropout = self.attn_pdrop if self.training else 0.0
        if self.backend == "manual":  # explicit softmax(QK^T/sqrt(d)) as the official fallback; a baseline
            allowed = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
            att = F.dropout(att.masked_fill(~allowed, float("-inf")).softmax(-1), dropout, self.training)
            y = att @ v
        elif self._use_flash(q):
            y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout,
                                causal=True).transpose(1, 2)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=T > 1)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # T new queries after `start` cached tokens: query i sees keys 0..start+i
            allowed = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, E)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, embed_dim: int, num_heads: int, attn_pdrop: float, resid_pdrop: float,
                 backend: str = "auto"):
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dim)
        self.ln2 = nn.LayerNorm(embed_dim)
        self.attn = SelfAttention(embed_dim, num_heads, attn_pdrop, resid_pdrop, backend)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.GELU(), nn.Linear(4 * embed_dim, embed_dim),
                                 nn.Dropout(resid_pdrop))

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A stack of blocks and a final LayerNorm (``blocks.{i}``, ``ln_f`` as in the official model)."""

    def __init__(self, num_layers: int, embed_dim: int, num_heads: int, attn_pdrop: float, resid_pdrop: float,
                 backend: str = "auto"):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, attn_pdrop, resid_pdrop, backend) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.ln_f(x)
