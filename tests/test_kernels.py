"""The compiled step's attention op (kernels.py, attention_kernel.cpp) computes what scaled_dot_product_attention
does, and the copy that uses it shares the core's weights."""

import pytest
import torch
import torch.nn.functional as F

from kanade_stream.modules.attention import Attention
from kanade_stream.modules.transformer import Transformer
from kanade_stream.streaming.kernels import attention, load_kernels, with_kernel_attention


@pytest.mark.parametrize("heads,queries,keys,dim", [(6, 2, 108, 64), (4, 1, 33, 64), (4, 4, 102, 64), (2, 8, 7, 16),
                                                    (3, 3, 10, 12), (1, 1, 1, 8)])
def test_attention_op_matches_sdpa(heads, queries, keys, dim):
    # a streaming step's shapes (few queries over a KV ring), key counts that are no multiple of the kernel's
    # four-key blocks, a head size that is no multiple of 8 (its plain loops); with a mask that hides some keys
    # and leaves one query no key at all (zeros, as scaled_dot_product_attention gives), and without a mask
    kind = load_kernels()
    assert kind == "C++" or kind.startswith("Python (")
    torch.manual_seed(queries * keys + dim)
    q, k, v = (torch.randn(2, heads, t, dim) for t in (queries, keys, keys))
    mask = torch.rand(queries, keys) > 0.3
    mask[:, 0] = True
    mask[-1] = False
    for m in (mask, None):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=dim ** -0.5)
        expected = expected.transpose(1, 2).flatten(2)
        got = torch.ops.kanade_stream.attention(q, k, v, m, dim ** -0.5)  # the C++ kernel where it built
        assert got.shape == (2, queries, heads * dim)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(attention(q, k, v, m, dim ** -0.5), expected, rtol=0, atol=0)
    assert torch.equal(torch.ops.kanade_stream.attention(q, k, v, mask, dim ** -0.5)[:, -1], torch.zeros(2, heads * dim))
    # strided inputs (a step's queries are a transposed view)
    q_view = torch.randn(2, queries, heads, dim).transpose(1, 2)
    torch.testing.assert_close(torch.ops.kanade_stream.attention(q_view, k, v, mask, 0.3),
                               attention(q_view, k, v, mask, 0.3), rtol=1e-5, atol=1e-6)


def test_kernel_attention_copy_shares_weights_and_streams_the_same():
    torch.manual_seed(0)
    model = Transformer(64, 2, 4, causal_past=8).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    kernel_model = with_kernel_attention(model)
    # the copy's attention layers are new objects of a kernel class; every tensor is the original's
    assert kernel_model is not model and all(type(m) is Attention for m in model.modules() if isinstance(m, Attention))
    attentions = [m for m in kernel_model.modules() if isinstance(m, Attention)]
    assert len(attentions) == 2 and all(type(m) is not Attention for m in attentions)
    assert all(a is b for a, b in zip(kernel_model.parameters(), model.parameters()))
    x = torch.randn(1, 10, 64)
    state, kernel_state = model.init_state(1), kernel_model.init_state(1)
    with torch.inference_mode():
        for piece in x.split([1, 3, 2, 4], dim=1):
            expected, state = model.step(piece, state)
            got, kernel_state = kernel_model.step(piece, kernel_state)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
