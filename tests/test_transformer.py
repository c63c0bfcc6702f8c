import pytest
import torch

from multimodal.transformer import Transformer, TransformerConfig


def _model(**kw):
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(width=32, layers=3, heads=4, **kw))
    m.init_weights()
    return m.eval()


def _incremental(model, x, mask, prefix):
    """Feed ``x[:, :prefix]`` in one chunk, then one position at a time, through a KV cache."""
    cache = model.make_cache(x.shape[0], x.shape[1])
    outs = [model(x[:, :prefix], mask, cache, 0)]
    for t in range(prefix, x.shape[1]):
        outs.append(model(x[:, t : t + 1], mask, cache, t))
    return torch.cat(outs, 1)


def _sparse_masks(T):
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    row = causal & (i // 4 == j // 4)  # attend within a "row" of 4
    column = causal & ((i - j) % 4 == 0)
    window = causal & (i - j < 3)
    return [row | (j == 0), column, window]


@pytest.mark.parametrize("kind", ["causal", "explicit", "per_layer", "prefix"])
def test_kv_cache_matches_full_forward(kind):
    model = _model()
    T = 16
    x = torch.randn(2, T, 32)
    if kind == "causal":
        mask, prefix = "causal", 5
    elif kind == "explicit":
        mask, prefix = _sparse_masks(T)[2], 5
    elif kind == "per_layer":
        mask, prefix = _sparse_masks(T), 5
    else:  # prefix-LM: the first 6 positions see each other; fed as one chunk, the rest causal
        m = torch.ones(T, T, dtype=torch.bool).tril()
        m[:6, :6] = True
        mask, prefix = m, 6
    full = model(x, mask)
    torch.testing.assert_close(_incremental(model, x, mask, prefix), full, atol=1e-5, rtol=1e-5)


def test_no_mask_prefill_matches_and_sees_the_future():
    model = _model()
    model.init_weights(std=0.2)  # large weights so one position's influence is far above rounding
    x = torch.randn(1, 8, 32)
    full = model(x, None)
    cache = model.make_cache(1, 8)
    torch.testing.assert_close(model(x, None, cache, 0), full, atol=1e-6, rtol=1e-6)
    # without a mask the first position depends on the last one; with a causal mask it does not
    y = x.clone()
    y[:, -1] = 5 * torch.randn(32)
    assert (model(y, None)[:, 0] - full[:, 0]).abs().max() > 1e-3
    torch.testing.assert_close(model(y, "causal")[:, 0], model(x, "causal")[:, 0])


@pytest.mark.parametrize(
    "activation,reference",
    [
        ("gelu", lambda x: 0.5 * x * (1 + torch.erf(x / 2**0.5))),
        ("gelu_tanh", lambda x: 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))),
        ("quick_gelu", lambda x: x * torch.sigmoid(1.702 * x)),
    ],
)
def test_activations_are_the_named_functions(activation, reference):
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(_model(activation=activation).blocks[0].mlp.act(x), reference(x))


def test_activation_checkpointing_same_gradients():
    x = torch.randn(2, 8, 32)
    grads = []
    for ckpt in (False, True):
        model = _model(grad_checkpointing=ckpt).train()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(width=256, layers=8, heads=4))
    m.init_weights()
    fc = m.blocks[0].mlp.fc.weight.std().item()
    proj = m.blocks[0].mlp.proj.weight.std().item()
    assert abs(fc - 0.02) < 0.002
    assert abs(proj - 0.02 / 4) < 0.001  # 1/sqrt(2 * 8)
    assert m.blocks[0].attn.qkv.bias.abs().max() == 0


def test_bad_config_and_mask():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="activation"):
        TransformerConfig(activation="relu")
    model = _model()
    with pytest.raises(TypeError, match="boolean"):
        model(torch.randn(1, 4, 32), torch.ones(4, 4))
    cache = model.make_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache holds 4"):
        model(torch.randn(1, 5, 32), "causal", cache, 0)


def test_ragged_batch_per_row_positions_match_full_forward():
    """Rows of different lengths in one cache, decoded together with per-row positions (continuous batching),
    give each row's full causal forward; rows are written through ``narrow`` views and moved with ``copy_row``."""
    model = _model()
    lengths = [3, 7, 5]
    xs = [torch.randn(1, n + 4, 32) for n in lengths]
    cache = model.make_cache(4, 16)  # one spare row
    for row, (x, n) in enumerate(zip(xs, lengths)):  # prefill each prompt alone into its own row
        model(x[:, :n], "causal", [c.narrow(row, 1) for c in cache], 0)
    pos = torch.tensor(lengths)
    outs = []
    for step in range(4):  # then one token per row per step, all rows in one batch
        x = torch.cat([x[:, n + step : n + step + 1] for x, n in zip(xs, lengths)])
        outs.append(model(x, "causal", [c.narrow(0, 3) for c in cache], pos + step))
    got = torch.cat(outs, 1)  # [3, 4, C]
    for row, (x, n) in enumerate(zip(xs, lengths)):
        torch.testing.assert_close(got[row], model(x, "causal")[0, n:], atol=1e-5, rtol=1e-5)
    # moving a row (a finished request leaves, the last one takes its place) keeps its keys and values
    for c in cache:
        c.copy_row(2, 0)
    x = xs[2][:, lengths[2] + 3 :]  # feed row 2's last input again, now from row 0
    again = model(x, "causal", [c.narrow(0, 1) for c in cache], torch.tensor([lengths[2] + 3]))
    torch.testing.assert_close(again[0], got[2, 3:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="causal"):
        model(x, None, [c.narrow(0, 1) for c in cache], torch.tensor([1]))
