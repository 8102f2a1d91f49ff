"""Embedding inputs of the diversity strategies: float32 unit rows and blockwise nearest similarities.

Embeddings arrive as the loop holds them (numpy or torch, often float16, on any device); the maths runs
in float32 on the embeddings' own device, and no [N, N] (or [N, n_labeled]) matrix is ever held whole.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Elements of one similarity block (float32: 128 MiB). Bounds the temporary memory of every blockwise product.
BLOCK_ELEMENTS = 1 << 25


def unit_float32(x: Any, device: torch.device | None = None) -> torch.Tensor:
    """[n, d] float32 tensor with unit rows (float16 storage leaves norms ~1e-3 off 1; zero rows stay 0)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if device is not None:
        t = t.to(device)
    if t.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [n, d], got shape {tuple(t.shape)}")
    # One float32 copy, normalised in place: the caller's tensor is never modified, and a [N, d] temporary
    # more would double the peak (90K x 2048: 737 MB each).
    t = t.to(torch.float32, copy=True)
    norms = t.norm(dim=1, keepdim=True)
    if not torch.isfinite(norms).all():  # a NaN or inf anywhere in a row makes its norm one
        raise ValueError("embeddings contain NaN or inf")
    return t.div_(norms.clamp_min_(1e-12))


def rows_per_block(columns: int) -> int:
    """Rows of a [rows, columns] block within BLOCK_ELEMENTS."""
    return max(1, BLOCK_ELEMENTS // max(1, columns))


def nearest_similarity(x: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """max_j <x_i, refs_j> for every row of x ([n] float32; -inf where refs has no rows), blockwise."""
    best = torch.full((len(x),), -torch.inf, dtype=torch.float32, device=x.device)
    if len(refs) == 0 or len(x) == 0:
        return best
    ref_block = min(len(refs), 4096)
    row_block = rows_per_block(ref_block)
    for r in range(0, len(refs), ref_block):
        chunk = refs[r : r + ref_block].T
        for i in range(0, len(x), row_block):
            part = (x[i : i + row_block] @ chunk).amax(dim=1)
            torch.maximum(best[i : i + row_block], part, out=best[i : i + row_block])
    return best
