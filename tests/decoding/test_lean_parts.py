"""The pieces every lean forward shares (adaspec.models.lean: ops, rotary, cache) against the definitions they
stand for: transformers' RMSNorm and rotary frequencies bit for bit, the heads' training RMSNorm and rotary
(adaspec.drafters.common), the KV cache's growth and row moves, and attention's one-query shortcut."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

from adaspec.drafters.common import RMSNorm, apply_rope
from adaspec.models.lean.cache import KVCache
from adaspec.models.lean.ops import attend, rms_norm, rotate
from adaspec.models.lean.rotary import inv_freq, rotary_tables


def _randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rms_norm_is_transformers_llama_norm_and_the_heads_module_keeps_float64(dtype):
    x, weight = _randn(3, 16, dtype=dtype), _randn(16, dtype=dtype, seed=1)
    hf = LlamaRMSNorm(16, eps=1e-5).to(dtype)
    module = RMSNorm(16, eps=1e-5).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(weight)
        module.weight.copy_(weight)
        assert torch.equal(rms_norm(x, weight, 1e-5), hf(x))  # float32 inside, float64 too, as transformers
        y = module(x)
    assert y.dtype == dtype
    if dtype == torch.float64:  # the heads' module normalises in at least float32: float64 stays float64
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        assert torch.equal(y, weight * h)
    else:
        assert torch.equal(y, rms_norm(x, weight, 1e-5))


def test_inv_freq_is_transformers_default_rope():
    config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 5000.0}
    )
    assert torch.equal(inv_freq(5000.0, 16), LlamaRotaryEmbedding(config).inv_freq)


@pytest.mark.parametrize("rotary_dims", [16, 8])
def test_table_rotation_is_rotate_half_and_leaves_the_dims_past_the_rotary_ones(rotary_dims):
    head_dim, positions = 16, torch.tensor([0, 3, 7, 50])
    cos, sin, perm = rotary_tables(
        inv_freq(10000.0, rotary_dims), 1.0, 64, head_dim, torch.float32, torch.device("cpu")
    )
    x = _randn(4, 2, head_dim)  # [T, heads, head_dim]
    got = rotate(x, perm, cos[positions][:, None], sin[positions][:, None])
    part = x[..., :rotary_dims].permute(1, 0, 2)[None]  # apply_rope's [B, heads, T, rotary dims]
    want = apply_rope(part, positions, 10000.0)[0].permute(1, 0, 2)
    torch.testing.assert_close(got[..., :rotary_dims], want, rtol=0, atol=1e-6)
    assert torch.equal(got[..., rotary_dims:], x[..., rotary_dims:])


def test_kv_cache_grows_keeping_the_filled_rows_and_moves_kept_rows():
    cache = KVCache(2, 3, 4, torch.float32, torch.device("cpu"))
    cache.grow(5, 0)
    cache.data.copy_(torch.arange(cache.data.numel(), dtype=torch.float32).view_as(cache.data))
    old = cache.data.clone()
    cache.grow(9, 4)
    assert cache.capacity == 9 and cache.data.shape == (2, 2, 3, 9, 4)
    assert torch.equal(cache.data[:, :, :, :4], old[:, :, :, :4])
    for i in range(2):  # the per-layer views are views of the new buffer
        assert cache.keys4[i].data_ptr() == cache.data[i, 0].data_ptr()
        assert cache.values[i].data_ptr() == cache.data[i, 1].data_ptr()
        assert cache.kv[i].shape == (2, 3, 9, 4)
    cache.keep(1, torch.tensor([3, 2]))
    assert torch.equal(cache.data[:, :, :, 1:3], old[:, :, :, [3, 2]])
    assert torch.equal(cache.data[:, :, :, :1], old[:, :, :, :1])


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attend_one_query_shortcut_equals_the_general_path_and_masks_are_applied(kv_heads):
    keys, values = _randn(1, kv_heads, 10, 8, seed=1), _randn(1, kv_heads, 10, 8, seed=2)
    q, gqa = _randn(1, 4, 1, 8, seed=3), kv_heads != 4  # [T, heads, 1, hd]
    one = attend(q, keys, values, 7, None, False, None, gqa)
    general = attend(q, keys, values, 7, torch.ones(1, 7, dtype=torch.bool), False, None, gqa)
    assert one.shape == (1, 32)
    torch.testing.assert_close(one, general, rtol=0, atol=1e-6)
    hidden = torch.ones(1, 7, dtype=torch.bool)
    hidden[0, 2] = False  # a hidden row is as if it were not cached
    rows = torch.tensor([0, 1, 3, 4, 5, 6])
    want = F.scaled_dot_product_attention(q, keys[:, :, rows], values[:, :, rows], enable_gqa=gqa)
    torch.testing.assert_close(
        attend(q, keys, values, 7, hidden, False, None, gqa), want.reshape(1, -1), rtol=0, atol=1e-6
    )
