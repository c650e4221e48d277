"""UniPT (its generic module, UniPT paper Sec. 3): hand-computed vectors, the module against a loop
reference, masks, the tuner on every toy stack, options, save/load."""
import copy

import pytest
import torch
import torch.nn.functional as F

from _toy_stacks import (ToyCNNStack, ToyDecoderStack, ToyTokenStack, decoder_batch, image_batch,
                         token_batch)

from sherl_mm.registry import TUNERS
from sherl_mm.tuners import UniPT, UniPTModule, linear_attention, load_trainable, save_trainable
from sherl_mm.tuners.unipt import masked_mean


def make(kind, seed=0, **kw):
    torch.manual_seed(seed)
    if kind == 'tokens':
        return ToyTokenStack(**kw), token_batch()
    if kind == 'decoder':
        return ToyDecoderStack(**kw), decoder_batch()
    return ToyCNNStack(**kw), (image_batch(),)


# ---------------------------------------------------------------------------- hand-computed vectors
def test_t13_nonpositive_similarities_give_context():
    q = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    ctx = torch.tensor([[[-1.0, 0.0]]], dtype=torch.float64)
    merged, w = linear_attention(q, ctx)
    assert torch.equal(merged, ctx) and torch.equal(w, torch.ones(1, 1, 1, dtype=torch.float64))


def test_t13_padded_columns_get_zero_weight_and_rows_sum_to_one():
    g = torch.Generator().manual_seed(0)
    q = torch.rand(2, 5, 4, generator=g, dtype=torch.float64)
    ctx = torch.rand(2, 5, 4, generator=g, dtype=torch.float64)       # positive -> every similarity > 0
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 3:] = False
    _, w = linear_attention(q, ctx, valid, eps=1e-8, residual=False)
    assert torch.equal(w[1, :, 3:], torch.zeros(5, 2, dtype=torch.float64))
    assert torch.allclose(w.sum(-1), torch.ones(2, 5, dtype=torch.float64), atol=1e-7)
    _, w_res = linear_attention(q, ctx, valid, eps=1e-8)
    assert torch.allclose(w_res - w, torch.eye(5, dtype=torch.float64).expand(2, 5, 5), atol=1e-12)


def test_masked_mean():
    x = torch.arange(12.).reshape(1, 4, 3)
    valid = torch.tensor([[True, True, False, False]])
    assert torch.equal(masked_mean(x, valid), x[:, :2].mean(1))


# ---------------------------------------------------------------------------- module vs loop reference
def reference(m: UniPTModule, feats, valid):
    T = [down(h) for down, h in zip(m.downsample_layers, feats)]
    A = T[-1]
    B, K, d = A.shape
    out = torch.empty_like(A)
    for b in range(B):
        v = valid[b].to(A.dtype)
        a = (A[b] * v[:, None]).sum(0) / v.sum()
        mg, conf = [], []
        for Tj in T[:-1]:
            W = F.relu((A[b] @ Tj[b].T) * v[None, :])
            W = W / (W.abs().sum(-1, keepdim=True) + m.eps) + torch.eye(K, dtype=A.dtype)
            mg.append(W @ Tj[b])
            t = (Tj[b] * v[:, None]).sum(0) / v.sum()
            conf.append(m.gate_layer(a * t))
        pi = torch.softmax(torch.cat(conf), 0)
        out[b] = A[b] + m.projection_layer(sum(p * x for p, x in zip(pi, mg)))
    return m.upsample_layer(out)


def test_module_matches_reference():
    m = UniPTModule([6, 8, 8], 4, 10).double()
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 5, w, generator=g, dtype=torch.float64) for w in (6, 8, 8)]
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 4:] = False
    out = m(feats, valid)
    assert out.shape == (2, 5, 10)
    assert torch.allclose(out, reference(m, feats, valid), atol=1e-10)


def test_module_param_count():
    # N down-projections LN∘Linear, Proj LN∘Linear, gate Linear_{d→1}, Up Linear_{d→D_out}
    m = UniPTModule([768] * 13, 512, 1024)
    d = 512
    expect = 13 * (768 * d + d + 2 * d) + (d * d + d + 2 * d) + (d + 1) + (d * 1024 + 1024)
    assert sum(p.numel() for p in m.parameters()) == expect


# ---------------------------------------------------------------------------- tuner
@pytest.mark.parametrize('kind', ['tokens', 'decoder', 'cnn'])
@pytest.mark.parametrize('cfg', [dict(), dict(select_layers=[0, 2], use_input=False), dict(side_width=3),
                                 dict(out_channels=10, finalize_output=False), dict(finalize_output=False)])
def test_forward_backward_every_stack(kind, cfg):
    if kind == 'cnn' and 'out_channels' in cfg:
        cfg = dict(out_channels=5, finalize_output=False)
    stack, batch = make(kind)
    tuner = TUNERS.build(dict(type='UniPT', **cfg), default_args=dict(stack=stack)).train()
    out = tuner(*batch, return_intermediates=True)
    frozen = stack(*batch).hidden
    expect = list(frozen.shape)
    expect[1 if kind == 'cnn' else -1] = cfg.get('out_channels', expect[1 if kind == 'cnn' else -1])
    assert list(out.hidden.shape) == expect
    assert out.frozen.grad_fn is None and len(out.intermediates) == stack.num_layers
    out.hidden.square().mean().backward()
    for name, p in tuner.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
        if p.requires_grad:
            assert name.startswith('unipt.'), name


def test_selection_and_anchor():
    stack, (ids, pad) = make('tokens', num_layers=5)
    assert UniPT(stack).selection == ['input', 0, 1, 2, 3, 4]
    assert UniPT(stack, select_layers=[1, 3]).selection == [1, 3, 4]
    tuner = UniPT(stack, select_layers=['input', 1]).eval()
    h, ctx = stack.embed(ids, pad)
    states = {'input': h}
    for i in range(5):
        h = stack.run_layer(i, h, ctx)
        states[i] = h
    expect = tuner.unipt([states['input'], states[1], states[4]], ~pad)
    # The tuned stack ends with the stack's own output stage.
    assert torch.allclose(tuner(ids, pad).hidden, stack.finalize(expect, ctx), atol=1e-6)


def test_padding_does_not_leak():
    stack, (ids, pad) = make('tokens')
    tuner = UniPT(stack).eval()
    out = tuner(ids, pad).hidden
    ids2 = ids.clone()
    ids2[pad] = (ids2[pad] + 7) % 50
    out2 = tuner(ids2, pad).hidden
    assert torch.allclose(out[~pad], out2[~pad], atol=1e-6)
    assert not torch.allclose(out[pad], out2[pad], atol=1e-4)


def test_mask_key_missing_means_all_valid():
    stack, (ids, pad) = make('tokens')
    tuner = UniPT(stack, mask_key=None).eval()
    assert tuner(ids, pad).hidden.shape == (2, 7, 16)
    absent = UniPT(stack, mask_key='no_such_key').eval()     # a key the context lacks: every token counts
    absent.unipt.load_state_dict(tuner.unipt.state_dict())
    assert torch.equal(absent(ids, pad).hidden, tuner(ids, pad).hidden)


def test_wrong_mask_shape():
    stack, (ids, pad) = make('tokens')

    class Odd(ToyTokenStack):
        def embed(self, input_ids, key_padding_mask=None):
            h, ctx = super().embed(input_ids, key_padding_mask)
            return h, {'key_padding_mask': ctx['key_padding_mask'][:, :3]}

        def run_layer(self, index, hidden, context):
            return self.layers[index](hidden)

    with pytest.raises(ValueError, match='padding mask'):
        UniPT(Odd())(ids, pad)


@pytest.mark.parametrize('cfg, err, match', [
    (dict(select_layers=[0, 9]), IndexError, 'select_layers'),
    (dict(select_layers=[3], use_input=False), ValueError, 'besides the anchor'),
    (dict(side_width=4, reduction=2), ValueError, 'not both'),
    (dict(select_layers=['embed']), ValueError, "'input'"),
    (dict(reduction=0), ValueError, r'UniPT: reduction=0: must be a number > 0'),
    (dict(reduction=17), ValueError, r'UniPT: reduction=17 leaves 16 // 17 = 0 channels'),
    (dict(mask_keys='pad'), ValueError, r"UniPT: mask_keys: unknown option; did you mean 'mask_key'\?"),
])
def test_bad_options(cfg, err, match):
    stack, _ = make('tokens')
    with pytest.raises(err, match=match):
        UniPT(stack, **cfg)


@pytest.mark.parametrize('kind', ['tokens', 'cnn'])
def test_save_load_round_trip(tmp_path, kind):
    stack, batch = make(kind)
    tuner = UniPT(copy.deepcopy(stack))
    with torch.no_grad():
        for p in tuner.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    tuner.eval()
    ref = tuner(*batch).hidden
    path = str(tmp_path / 'unipt.safetensors')
    save_trainable(tuner, path, tuner.tuner_cfg)
    fresh = UniPT(copy.deepcopy(stack))
    load_trainable(fresh, path)
    assert torch.equal(fresh.eval()(*batch).hidden, ref)
