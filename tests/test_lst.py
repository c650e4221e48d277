"""LST (Sung et al., NeurIPS 2022): the ladder gate, route, side layers per stack type,
side memory, drop_layers, gradient audit, options, save/load."""
import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from _toy_stacks import (ToyCNNStack, ToyDecoderStack, ToyTokenStack, decoder_batch, image_batch,
                         token_batch)

from sherl_mm.registry import TUNERS
from sherl_mm.tuners import LST, load_trainable, lst_gate, save_trainable


def make(kind, seed=0, **kw):
    torch.manual_seed(seed)
    if kind == 'tokens':
        return ToyTokenStack(**kw), token_batch()
    if kind == 'decoder':
        return ToyDecoderStack(**kw), decoder_batch()
    return ToyCNNStack(**kw), (image_batch(),)


# ---------------------------------------------------------------------------- the ladder gate
def test_t12_gate():
    assert lst_gate(torch.zeros(1), 0.1).item() == 0.5
    assert lst_gate(torch.tensor([10.0]), 0.1).item() == pytest.approx(1.0)
    stack, (ids, pad) = make('tokens')
    tuner = LST(stack, side_width=4, dropout=0.0).eval()
    assert all(tuner.gate(i).item() == 0.5 for i in tuner.kept)
    # alpha -> +inf keeps the side state: the backbone no longer reaches the side network
    with torch.no_grad():
        for p in tuner.side_gates.values():
            p.fill_(100.0)
    out = tuner(ids, pad).hidden
    with torch.no_grad():
        for lin in tuner.side_downsamples.values():
            lin.weight.add_(1.0)
    assert torch.allclose(tuner(ids, pad).hidden, out, atol=1e-6)


# ---------------------------------------------------------------------------- route
def test_route_matches_manual_computation():
    stack, (ids, pad) = make('tokens')
    tuner = LST(stack, side_width=4, drop_layers=[1], dropout=0.0, alpha_init=0.05).eval()
    assert tuner.kept == [0, 2, 3] and tuner.side_layer == 'encoder'
    h, ctx = stack.embed(ids, pad)
    side = tuner.side_first_downsample(h)
    for i in range(4):
        h = stack.run_layer(i, h, ctx)
        if i == 1:
            continue
        g = torch.sigmoid(tuner.side_gates[str(i)] / 0.1)
        side = g * side + (1 - g) * tuner.side_downsamples[str(i)](h)
        side = tuner.side_layers[str(i)](side, src_key_padding_mask=pad)
    out = tuner(ids, pad)
    up = tuner.side_final_upsample(tuner.side_final_norm(side))
    assert torch.allclose(out.hidden, stack.finalize(up, ctx), atol=1e-6)
    assert torch.allclose(out.side, side, atol=1e-6) and torch.equal(out.frozen, h)


@pytest.mark.parametrize('kind, side_layer', [('tokens', 'encoder'), ('decoder', 'decoder'), ('cnn', 'conv')])
@pytest.mark.parametrize('cfg', [dict(), dict(drop_layers=[0, 2]), dict(reduction=4, num_heads=1),
                                 dict(out_channels=10, bias=False, finalize_output=False), dict(final_norm=False)])
def test_forward_backward_every_stack(kind, side_layer, cfg):
    if kind == 'cnn' and 'num_heads' in cfg:
        cfg = dict(reduction=4)
    stack, batch = make(kind)
    tuner = TUNERS.build(dict(type='LST', **cfg), default_args=dict(stack=stack)).train()
    assert tuner.side_layer == side_layer
    out = tuner(*batch, return_intermediates=True)
    assert out.side.shape[1 if kind == 'cnn' else -1] == tuner.side_width
    assert len(out.intermediates) == stack.num_layers
    out.hidden.square().mean().backward()
    for name, p in tuner.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
        elif name.startswith(('side_layers', 'side_downsamples', 'side_gates', 'side_first', 'side_final')):
            assert p.grad is not None, name


def test_decoder_side_memory():
    stack, (qpos, memory, mask) = make('decoder')
    tuner = LST(stack, side_width=4, dropout=0.0).eval()
    base = tuner(qpos, memory, mask).hidden                  # memory_down(frozen context memory)
    via_late = tuner(qpos, memory, mask, late_context=dict(memory=memory)).hidden
    assert torch.allclose(base, via_late, atol=1e-6)
    other = tuner(qpos, memory, mask, late_context=dict(memory=torch.randn_like(memory))).hidden
    assert not torch.allclose(base, other, atol=1e-4)
    side_mem = tuner.memory_down(memory)
    direct = tuner(qpos, memory, mask, late_context=dict(side_memory=side_mem)).hidden
    assert torch.allclose(base, direct, atol=1e-6)
    # padded memory positions are masked out
    mem2 = memory.clone()
    mem2[mask] += 5.0
    assert torch.allclose(tuner(qpos, mem2, mask, late_context=dict(memory=mem2)).hidden, base, atol=1e-5)
    with pytest.raises(ValueError, match='side_memory must have width'):
        tuner(qpos, memory, mask, late_context=dict(side_memory=memory))


def test_backbone_runs_without_graph():
    stack, (ids, pad) = make('tokens', num_layers=3)
    saved = []
    tuner = LST(stack, side_width=4).train()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = tuner(ids, pad)
    n3 = len(saved)
    assert out.frozen.grad_fn is None
    out.hidden.sum().backward()
    assert all(p.grad is None for p in tuner.stack.parameters())
    # every saved tensor belongs to the side network: dropping all ladders but one leaves far fewer
    saved.clear()
    stack6, _ = make('tokens', num_layers=6)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        LST(stack6, side_width=4, drop_layers=[0, 1, 2]).train()(ids, pad)
    assert len(saved) == n3     # 3 kept side layers either way; the 3 extra frozen layers save nothing


def test_backbone_runs_without_graph_with_a_graph_input():
    """A decoder memory that requires grad would make the frozen decoder layers record a graph
    (and save activations per layer) if the backbone did not run under torch.no_grad()."""
    counts = []
    for n in (3, 6, 9):
        stack, (qpos, memory, mask) = make('decoder', num_layers=n)
        memory = memory.clone().requires_grad_(True)
        tuner = LST(stack, side_width=4, dropout=0.0, drop_layers=list(range(n - 3))).train()   # 3 kept
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = tuner(qpos, memory, mask)
        assert out.frozen.grad_fn is None
        out.hidden.pow(3).sum().backward()
        assert all(p.grad is None for p in tuner.stack.parameters())
        assert memory.grad is not None        # through memory_down and the side decoder layers only
        counts.append((len(saved), sum(saved)))
    assert counts[0] == counts[1] == counts[2], counts


def test_mdetr_template_param_count():
    from sherl_mm.backbones.detr import DetrDecoderStack, DetrEncoderStack
    enc = LST(DetrEncoderStack(), reduction=8, feedforward_channels=256)
    dec = LST(DetrDecoderStack(), reduction=8, feedforward_channels=256)
    assert enc.side_layer == 'encoder' and dec.side_layer == 'decoder'
    n_enc = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    n_dec = sum(p.numel() for p in dec.parameters() if p.requires_grad)
    assert (n_enc, n_dec) == (192_230, 226_182)      # ~0.42M trainable per stack


@pytest.mark.parametrize('kind, cfg, err, match', [
    ('tokens', dict(drop_layers=[0, 1, 2, 3]), ValueError, 'drops every layer'),
    ('tokens', dict(drop_layers=[4]), IndexError, 'drop_layers'),
    ('tokens', dict(side_layer='conv'), ValueError, 'does not fit'),
    ('cnn', dict(side_layer='encoder'), ValueError, 'does not fit'),
    ('tokens', dict(side_layer='mlp'), ValueError, r"LST: side_layer='mlp': must be one of"),
    ('tokens', dict(reduction=0), ValueError, r'LST: reduction=0: must be a number > 0'),
    ('tokens', dict(reduction=32), ValueError, r'LST: reduction=32 leaves 16 // 32 = 0 channels'),
    ('tokens', dict(side_width=4, reduction=2), ValueError, 'not both'),
    ('tokens', dict(dropuot=0.1), ValueError, r"LST: dropuot: unknown option; did you mean 'dropout'\?"),
    ('tokens', dict(side_width=6, num_heads=4), ValueError, 'divisible'),
])
def test_bad_options(kind, cfg, err, match):
    stack, _ = make(kind)
    with pytest.raises(err, match=match):
        LST(stack, **cfg)


def test_out_channels_must_match_the_output_stage():
    from sherl_mm.tuners.layers import check_output_width
    stack, batch = make('tokens')
    # the stack's output stage (a LayerNorm over 16 channels) cannot take a 10-wide side output
    with pytest.raises(ValueError, match=r'LST: out_channels=10 differs .* width 16.*set finalize_output=False'):
        LST(stack, side_width=4, out_channels=10)
    assert LST(stack, side_width=4, out_channels=10, finalize_output=False)(*batch).hidden.shape[-1] == 10
    assert check_output_width('UniPT', 16, 16, True) == 16 and check_output_width('UniPT', None, 16, True) == 16
    with pytest.raises(ValueError, match=r'UniPT: out_channels=8 .*finalize_output=False'):
        check_output_width('UniPT', 8, 16, True)


def test_decoder_memory_width_mismatch_names_memory_width():
    stack, (qpos, memory, mask) = make('decoder')
    tuner = LST(stack, side_width=4)                   # memory_down expects the input width, 16
    wide = torch.randn(memory.shape[0], memory.shape[1], 12)
    with pytest.raises(ValueError, match=r'memory width 12 != memory_width 16; set memory_width or pass side_memory'):
        tuner(qpos, memory, mask, late_context=dict(memory=wide))
    ok = LST(copy.deepcopy(stack), side_width=4, memory_width=12)
    assert ok(qpos, memory, mask, late_context=dict(memory=wide)).hidden.shape[-1] == 16


def test_decoder_without_memory():
    stack, batch = make('tokens')
    tuner = LST(stack, side_layer='decoder', side_width=4)
    with pytest.raises(ValueError, match='needs a memory'):
        tuner(*batch)


@pytest.mark.parametrize('kind', ['tokens', 'decoder', 'cnn'])
def test_save_load_round_trip(tmp_path, kind):
    stack, batch = make(kind)
    tuner = LST(copy.deepcopy(stack), reduction=4)
    with torch.no_grad():
        for p in tuner.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    tuner.train()
    tuner(*batch)                   # a training forward moves the conv side layers' BatchNorm statistics
    tuner.eval()
    ref = tuner(*batch).hidden
    path = str(tmp_path / 'lst.safetensors')
    save_trainable(tuner, path, tuner.tuner_cfg)
    fresh = LST(copy.deepcopy(stack), reduction=4)
    load_trainable(fresh, path)
    assert torch.equal(fresh.eval()(*batch).hidden, ref)
    saved = load_file(path)
    assert not any(k.startswith('stack.') for k in saved)          # frozen backbone tensors stay out
    if kind == 'cnn':
        bn = tuner.side_layers['0'].bn
        assert bn.running_mean.abs().sum() > 0 and bn.num_batches_tracked.item() == 1
        assert torch.equal(saved['side_layers.0.bn.running_var'], bn.running_var)
        assert torch.equal(fresh.side_layers['0'].bn.running_mean, bn.running_mean)
    assert isinstance(fresh.side_layers['0'], (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Module))
