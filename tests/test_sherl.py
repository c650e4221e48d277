"""SHERL tuner: route, identity construction, gradient and memory audit, late
context, multi-point insertion, late PETL tuners, options, save/load."""
import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from _toy_stacks import (ToyCNNStack, ToyDecoderStack, ToyTokenStack, decoder_batch, image_batch,
                         token_batch)

from sherl_mm.registry import TUNERS
from sherl_mm.tuners import SHERL, build_tuned_stacks, load_trainable, save_trainable
from sherl_mm.tuners.mtsa import MTSA

ATOL = 1e-5


def make(kind, seed=0, **kw):
    torch.manual_seed(seed)
    if kind == 'tokens':
        return ToyTokenStack(**kw), token_batch()
    if kind == 'decoder':
        return ToyDecoderStack(**kw), decoder_batch()
    return ToyCNNStack(**kw), (image_batch(),)



def zero_up(m: MTSA, alpha=20.0):
    """U(e') ≡ 0 (zero up-projection + zero bias of the norm after it) and tanh(α/T) -> 1."""
    with torch.no_grad():
        for mod in m.up:
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                mod.weight.zero_()
                mod.bias.zero_()
            if isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d)):
                mod.bias.zero_()
        m.alpha.fill_(alpha)


# ---------------------------------------------------------------------------- forward / backward
@pytest.mark.parametrize('kind', ['tokens', 'decoder', 'cnn'])
@pytest.mark.parametrize('cfg', [dict(), dict(num_late_layers=0), dict(num_late_layers=2),
                                 dict(select_layers=[0, 2], use_input=False),
                                 dict(insert_layers=[2, 4]), dict(mtsa=dict(side_width=3))])
def test_forward_backward_every_stack(kind, cfg):
    stack, batch = make(kind)
    tuner = TUNERS.build(dict(type='SHERL', **cfg), default_args=dict(stack=stack)).train()
    out = tuner(*batch, return_intermediates=True)
    assert out.hidden.shape == stack(*batch).hidden.shape
    assert out.frozen is not None and out.side is not None and len(out.intermediates) == stack.num_layers
    out.hidden.square().mean().backward()
    for name, p in tuner.named_parameters():
        if p.requires_grad:
            assert name.startswith('mtsa.'), name
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    # only MTSA trains
    trainable = sum(p.numel() for p in tuner.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in tuner.mtsa.parameters())


def test_route_matches_manual_computation():
    stack, (ids, pad) = make('tokens')
    tuner = SHERL(stack, num_late_layers=1, select_layers=['input', 0, 1], mtsa=dict(alpha_init=0.3)).eval()
    out = tuner(ids, pad)
    h, ctx = stack.embed(ids, pad)
    states = [h]
    for i in range(3):
        h = stack.run_layer(i, h, ctx)
        states.append(h)
    # input, layer 0, layer 1, guidance = layer 2 (auto-added)
    assert tuner.selections == [['input', 0, 1, 2]]
    z = tuner.mtsa[0](states, h)
    expect = stack.finalize(stack.run_layer(3, z, ctx), ctx)
    assert torch.allclose(out.hidden, expect, atol=ATOL)
    assert torch.equal(out.frozen, h) and torch.allclose(out.side, z, atol=ATOL)


def test_default_selection_is_input_plus_all_early_layers():
    stack, _ = make('tokens', num_layers=6)
    assert SHERL(stack).selections == [['input', 0, 1, 2, 3, 4]]
    assert SHERL(stack, num_late_layers=0).selections == [['input', 0, 1, 2, 3, 4, 5]]
    assert SHERL(stack, select_layers=[0, 2], num_late_layers=2).selections == [[0, 2, 3]]
    assert SHERL(stack, select_layers=['input', -6]).selections == [['input', 0, 4]]


# ---------------------------------------------------------------------------- identity construction
@pytest.mark.parametrize('kind', ['tokens', 'decoder', 'cnn'])
@pytest.mark.parametrize('cfg', [dict(), dict(num_late_layers=0), dict(num_late_layers=2), dict(insert_layers=[1, 3]),
                                 dict(mtsa=dict(variant='vse_bert'))])
def test_t7_identity_construction_reproduces_frozen_stack(kind, cfg):
    if kind == 'cnn' and 'variant' in cfg.get('mtsa', {}):
        pytest.skip('token variant')
    stack, batch = make(kind)
    frozen = stack.eval()(*batch).hidden
    tuner = SHERL(stack, **cfg)
    for m in tuner.mtsa:
        zero_up(m)
    tuner.eval()
    out = tuner(*batch)
    assert torch.allclose(out.hidden, frozen, atol=1e-6)
    # at init (alpha = 0) the late layers see only U(e'): not the frozen output
    fresh = SHERL(copy.deepcopy(stack), **cfg).eval()
    assert not torch.allclose(fresh(*batch).hidden, frozen, atol=1e-3)


@pytest.mark.parametrize('kind', ['tokens', 'decoder', 'cnn'])
@pytest.mark.parametrize('variant', [None, 't5'])
def test_zero_up_option_starts_at_the_frozen_stack_and_still_learns(kind, variant):
    """mtsa=dict(zero_up=True, alpha_init=...) is the identity construction (U(e') = 0, gate ≈ 1) at init:
    the tuned stack reproduces the frozen one, and U gets a gradient."""
    if kind == 'cnn' and variant:
        pytest.skip('token variant')
    stack, batch = make(kind)
    frozen = stack.eval()(*batch).hidden
    mtsa = dict(zero_up=True, alpha_init=2.0, **(dict(variant=variant) if variant else {}))
    if kind == 'cnn':
        with pytest.raises(ValueError, match='zero_up=True is for the token variants'):
            SHERL(stack, mtsa=mtsa)
        return
    tuner = SHERL(stack, mtsa=mtsa).eval()
    out = tuner(*batch)
    assert torch.allclose(out.hidden, frozen, atol=1e-5)
    out.hidden.square().sum().backward()
    last = [m for m in tuner.mtsa[0].up if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d))][-1]
    assert last.weight.grad.abs().sum() > 0


def test_t7_alpha_zero_output_independent_of_x_last_path():
    stack, (ids, pad) = make('tokens')
    tuner = SHERL(stack).eval()
    m = tuner.mtsa[0]
    h, ctx = stack.embed(ids, pad)
    states = [h]
    for i in range(3):
        h = stack.run_layer(i, h, ctx)
        states.append(h)
    assert torch.equal(m(states, h), m(states, torch.randn_like(h)))


# ---------------------------------------------------------------------------- gradient / memory audit
def count_saved(tuner, batch):
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = tuner(*batch)
    return len(saved), sum(saved), out


@pytest.mark.parametrize('kind', ['tokens', 'decoder'])
def test_i3_saved_tensors_do_not_grow_with_early_layers(kind):
    counts = []
    for n in (3, 5, 9):
        stack, batch = make(kind, num_layers=n)
        tuner = SHERL(stack, select_layers=['input', 0], num_late_layers=1).train()
        count, numel, out = count_saved(tuner, batch)
        out.hidden.sum().backward()
        assert all(p.grad is None for p in tuner.stack.parameters())
        counts.append((count, numel))
    assert counts[0] == counts[1] == counts[2], counts
    # the same stack with its early layers NOT under no_grad but a trainable input would save per layer
    stack, batch = make(kind, num_layers=9)
    plain = count_saved(SHERL(stack).train(), batch)[0]   # default selection: input + 7 early layers
    assert plain > counts[0][0]      # more selected sets -> more saved inputs of the down-projections only


def test_i3_saved_tensors_do_not_grow_with_a_graph_input():
    """With a stack input that requires grad (the cross-attention memory, e.g. a trainable encoder's
    output), frozen early layers WOULD record a graph and save activations unless they run under
    torch.no_grad(): without it the count grows with the number of early layers."""
    counts = []
    for n in (3, 5, 9):
        stack, (qpos, memory, mask) = make('decoder', num_layers=n)
        memory = memory.clone().requires_grad_(True)
        tuner = SHERL(stack, select_layers=['input', 0], num_late_layers=1).train()
        count, numel, out = count_saved(tuner, (qpos, memory, mask))
        # a random projection: the plain sum of a LayerNorm output has zero gradient
        (out.hidden * torch.randn(out.hidden.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
        assert all(p.grad is None for p in tuner.stack.parameters())
        # the memory's gradient comes through the late layer's cross-attention only
        assert memory.grad is not None and memory.grad.abs().sum() > 0
        counts.append((count, numel))
    assert counts[0] == counts[1] == counts[2], counts


def test_i3_frozen_params_have_no_grad_and_early_route_has_no_graph():
    stack, (ids, pad) = make('tokens')
    tuner = SHERL(stack).train()
    out = tuner(ids, pad)
    assert out.frozen.grad_fn is None and not out.frozen.requires_grad
    out.hidden.sum().backward()
    frozen = [n for n, p in tuner.named_parameters() if not p.requires_grad]
    assert frozen and all(dict(tuner.named_parameters())[n].grad is None for n in frozen)


# ---------------------------------------------------------------------------- late_context
def test_late_context_reaches_only_late_layers():
    stack, (qpos, memory, mask) = make('decoder')
    tuner = SHERL(stack, num_late_layers=1, mtsa=dict(alpha_init=0.2)).eval()
    side_memory = torch.randn_like(memory)
    out = tuner(qpos, memory, mask, late_context=dict(memory=side_memory))
    h, ctx = stack.embed(qpos, memory, mask)
    states = [h]
    for i in range(3):
        h = stack.run_layer(i, h, ctx)
        states.append(h)
    z = tuner.mtsa[0](states, h)
    late = {**ctx, 'memory': side_memory}
    assert torch.allclose(out.hidden, stack.finalize(stack.run_layer(3, z, late), late), atol=ATOL)
    assert not torch.allclose(out.hidden, tuner(qpos, memory, mask).hidden, atol=1e-4)


def test_mdetr_encoder_decoder_wiring_identity():
    """MDETR's wiring (encoder: no late layer; decoder: the last layer attends to the
    encoder MTSA output) reproduces the frozen pair under the identity construction."""
    torch.manual_seed(0)
    enc_stack, dec_stack = ToyTokenStack(num_layers=6), ToyDecoderStack(num_layers=6)
    ids, pad = token_batch()
    qpos = torch.randn(5, 16)
    enc_frozen = enc_stack(ids, pad).hidden
    enc_raw = enc_stack.embed(ids, pad)[0]
    for layer in range(6):
        enc_raw = enc_stack.run_layer(layer, enc_raw, {'key_padding_mask': pad})
    dec_frozen = dec_stack(qpos, enc_raw, pad).hidden
    enc = SHERL(enc_stack, select_layers=[0, 1, 3, 5], num_late_layers=0)
    dec = SHERL(dec_stack, select_layers=[0, 2, 3, 4], num_late_layers=1)
    assert enc.selections == [[0, 1, 3, 5]] and dec.selections == [[0, 2, 3, 4]]
    for m in (*enc.mtsa, *dec.mtsa):
        zero_up(m)
    enc.eval(), dec.eval()
    e = enc(ids, pad)
    assert torch.allclose(e.frozen, enc_raw, atol=1e-6) and torch.allclose(e.side, enc_raw, atol=1e-6)
    assert torch.allclose(enc_stack.finalize(e.side, {}), enc_frozen, atol=1e-6)
    d = dec(qpos, e.frozen, pad, late_context=dict(memory=e.side))
    assert torch.allclose(d.hidden, dec_frozen, atol=1e-5)


def test_t14_sherl_mdetr_trainable_count():
    from sherl_mm.backbones.detr import DetrDecoderStack, DetrEncoderStack
    stacks = dict(encoder=DetrEncoderStack(), decoder=DetrDecoderStack())
    tuned = build_tuned_stacks(stacks, dict(type='SHERL', mtsa=dict(reduction=2), per_stack=dict(
        encoder=dict(select_layers=[0, 1, 3, 5], num_late_layers=0),
        decoder=dict(select_layers=[0, 2, 3, 4], num_late_layers=1))), default_targets=('encoder', 'decoder'))
    counts = {k: sum(p.numel() for p in v.parameters() if p.requires_grad) for k, v in tuned.items()}
    assert counts == dict(encoder=232_450, decoder=232_450)
    # + MDETR heads 65,792 + 132,612 + 32,896 = 231,300 -> 696,200 (the authors' MDETR SHERL; paper: 0.7M)
    assert sum(counts.values()) + 231_300 == 696_200
    src = torch.randn(2, 7, 256)
    pos = torch.randn(2, 7, 256)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    tuned.train()
    e = tuned['encoder'](src, pos, mask)
    d = tuned['decoder'](torch.randn(4, 256), e.frozen, pos, mask, late_context=dict(memory=e.hidden))
    (d.hidden.sum() + d.side.sum()).backward()
    assert all(p.grad is None for v in tuned.values() for p in v.stack.parameters())
    assert all(p.grad is not None for v in tuned.values() for p in v.mtsa.parameters())


# ---------------------------------------------------------------------------- output_norm (T5 final_side_layer_norm)
@pytest.mark.parametrize('kind', ['t5', 'layernorm'])
def test_output_norm_replaces_the_frozen_final_norm(kind):
    from sherl_mm.backbones.detr import DetrDecoderStack
    torch.manual_seed(0)
    stack = DetrDecoderStack(num_layers=3, embed_dims=16, num_heads=2, feedforward_channels=32)
    assert stack.output_stage == 'norm'
    tuner = SHERL(stack, output_norm=kind, mtsa=dict(alpha_init=0.2)).train()
    qpos, memory = torch.randn(4, 16), torch.randn(2, 6, 16)
    out = tuner(qpos, memory)
    out.hidden.sum().backward()
    new = dict(tuner.output_norm.named_parameters())
    assert sorted(new) == (['weight'] if kind == 't5' else ['bias', 'weight'])
    assert all(p.requires_grad and p.grad is not None for p in new.values())
    assert all(p.grad is None for p in stack.post_norm.parameters())      # the frozen final norm is not run
    tuner.eval()
    out = tuner(qpos, memory)
    h = stack.run_layer(2, out.side, stack.embed(qpos, memory)[1])        # the late layer on the MTSA output
    if kind == 't5':
        expect = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    else:
        expect = torch.nn.functional.layer_norm(h, (16,), eps=1e-5)
    assert torch.allclose(out.hidden, expect, atol=1e-5)
    assert tuner.tuner_cfg['output_norm'] == kind


def test_output_norm_on_a_stack_without_output_stage():
    from sherl_mm.backbones.detr import DetrEncoderStack
    stack = DetrEncoderStack(num_layers=3, embed_dims=16, num_heads=2, feedforward_channels=32)
    assert stack.output_stage == 'identity'
    tuner = SHERL(stack, num_late_layers=0, output_norm='layernorm', output_dropout=0.0).eval()
    out = tuner(torch.randn(2, 5, 16))
    assert torch.allclose(out.hidden, torch.nn.functional.layer_norm(out.side, (16,)), atol=1e-6)


OUTPUT_STAGES = {'bert': 'identity', 't5_encoder': 'norm', 't5_decoder': 'norm', 'clip_text': 'other',
                 'clip_vision': 'other', 'resnet': 'identity', 'efficientnet': 'other', 'generic': 'norm',
                 'detr_encoder': 'identity', 'detr_decoder': 'norm'}


@pytest.mark.parametrize('name', sorted(OUTPUT_STAGES))
def test_output_stage_of_every_wrapper(name):
    from _backbone_factories import make_stack
    stack = make_stack(name)
    assert stack.output_stage == OUTPUT_STAGES[name]
    if stack.layout == 'tokens' and OUTPUT_STAGES[name] != 'other':
        tuner = SHERL(stack, output_norm='t5')
        assert sum(p.numel() for p in tuner.output_norm.parameters()) == stack.widths[-1]
    else:
        with pytest.raises(ValueError, match='output_norm'):
            SHERL(stack, output_norm='t5')


# ---------------------------------------------------------------------------- multi-point insertion
def test_insert_layers_multi_point():
    stack, (ids, pad) = make('tokens', num_layers=6)
    tuner = SHERL(stack, insert_layers=[3, 5]).train()
    assert len(tuner.mtsa) == 2 and tuner.late_layers == [3, 4, 5]
    assert tuner.selections == [['input', 0, 1, 2], ['input', 0, 1, 2, 3, 4]]
    out = tuner(ids, pad)
    out.hidden.sum().backward()
    assert all(p.grad is not None for p in tuner.mtsa.parameters())


# ---------------------------------------------------------------------------- late PETL tuners
def test_late_tuner_lora():
    stack, (ids, pad) = make('tokens')
    base = SHERL(copy.deepcopy(stack), mtsa=dict(alpha_init=0.3)).eval()
    tuner = SHERL(stack, mtsa=dict(alpha_init=0.3), late_tuner=dict(type='LoRA', rank=2)).eval()
    tuner.mtsa.load_state_dict(base.mtsa.state_dict())
    assert tuner.late_targeted == ['layers.3.self_attn']
    lora = [n for n, p in tuner.named_parameters() if p.requires_grad and 'lora' in n]
    assert lora and all(n.startswith('stack.layers.3.') for n in lora)
    assert torch.allclose(tuner(ids, pad).hidden, base(ids, pad).hidden, atol=1e-6)   # B = 0 at init
    tuner.train()
    tuner(ids, pad).hidden.sum().backward()
    params = dict(tuner.named_parameters())
    assert all(params[n].grad is not None for n in lora)
    assert all(p.grad is None for n, p in params.items() if not p.requires_grad)


@pytest.mark.parametrize('cfg', [dict(type='Adapter', dim=4), dict(type='Adapter', dim=4, placement='parallel'),
                                 dict(type='Adapter', reduction=4, target_modules=['linear2'])])
def test_late_tuner_adapter(cfg):
    stack, (ids, pad) = make('tokens')
    tuner = SHERL(stack, num_late_layers=2, late_tuner=cfg).train()
    extra = [n for n, p in tuner.named_parameters() if p.requires_grad and not n.startswith('mtsa.')]
    assert extra
    tuner(ids, pad).hidden.sum().backward()
    params = dict(tuner.named_parameters())
    assert all(params[n].grad is not None for n in extra)


def test_late_tuner_adapter_on_cnn():
    stack, batch = make('cnn')
    tuner = SHERL(stack, late_tuner=dict(type='Adapter', dim=3)).train()
    tuner(*batch).hidden.sum().backward()
    assert tuner.late_adapters['3'].up_weight.grad is not None


# ---------------------------------------------------------------------------- options and errors
@pytest.mark.parametrize('kind, cfg, err, match', [
    ('tokens', dict(num_late_layers=4), ValueError, 'num_late_layers must be < 4'),
    ('tokens', dict(num_late_layers=-1), ValueError, r'SHERL: num_late_layers=-1: must be an integer >= 0'),
    ('tokens', dict(select_layers=[0, 7]), IndexError, 'select_layers: layer index 7'),
    ('tokens', dict(select_layers=[0, 3]), ValueError, 'not before the insertion point'),
    ('tokens', dict(select_layers=['inputs']), ValueError, "'input'"),
    ('tokens', dict(select_layers=[2], use_input=False), ValueError, 'only its guidance'),
    ('tokens', dict(mtsa=dict(variant='cnn')), ValueError, 'needs a feature-map stack'),
    ('tokens', dict(mtsa=dict(down='cnn')), ValueError, 'needs a feature-map stack'),
    ('cnn', dict(mtsa=dict(variant='t5')), ValueError, "variant='cnn'"),
    ('tokens', dict(mtsa=dict(in_channels=32)), ValueError, 'set from the stack'),
    ('tokens', dict(mtsa=dict(reduction=2, side_width=4)), ValueError, 'not both'),
    ('tokens', dict(mtsa=dict(variant='bert')), ValueError, r"SHERL: mtsa\.variant='bert': must be one of"),
    ('tokens', dict(insert_layers=[0, 2]), IndexError, 'insert_layers'),
    ('tokens', dict(insert_layers=[5]), IndexError, 'insert_layers'),
    ('tokens', dict(insert_layers=[2], num_late_layers=1), ValueError, 'not both'),
    ('tokens', dict(late_tuner=dict(type='BitFit')), ValueError, "'LoRA' or 'Adapter'"),
    ('tokens', dict(num_late_layers=0, late_tuner=dict(type='LoRA')), ValueError, 'at least one late layer'),
    ('tokens', dict(late_tuner=dict(type='LoRA', target_modules=['nothing'])), ValueError, 'matched no module'),
    ('tokens', dict(output_norm='rms'), ValueError, r"SHERL: output_norm='rms': must be one of"),
    ('tokens', dict(output_norm='t5'), ValueError, "output_norm='t5' replaces the output stage"),
    ('cnn', dict(output_norm='layernorm'), ValueError, "output_norm='layernorm' normalises tokens"),
    # option values and names, validated once by SHERLOptions / MTSAConfig / the late tuner's config
    ('tokens', dict(mtsa=dict(reduction=-2)), ValueError, r'SHERL: mtsa\.reduction=-2: must be a number > 0'),
    ('tokens', dict(mtsa=dict(reduction=0)), ValueError, r'SHERL: mtsa\.reduction=0: must be a number > 0'),
    ('tokens', dict(mtsa=dict(reduction=1000)), ValueError,
     r'SHERL: mtsa\.reduction=1000 leaves 16 // 1000 = 0 channels .*valid: 0 < reduction <= 16'),
    ('tokens', dict(num_late_layer=1), ValueError,
     r"SHERL: num_late_layer: unknown option; did you mean 'num_late_layers'\? Valid options: \["),
    ('tokens', dict(mtsa=dict(reduktion=2)), ValueError, r"SHERL: mtsa\.reduktion: unknown option; did you mean "
                                                         r"'reduction'\?"),
    ('tokens', dict(late_tuner=dict(type='Adapter', reduction=0)), ValueError,
     r'SHERL: late_tuner\.reduction=0: must be a number > 0'),
    ('tokens', dict(late_tuner=dict(type='LoRA', rnak=2)), ValueError,
     r"SHERL: late_tuner\.rnak: unknown option; did you mean 'rank'\?"),
    ('tokens', dict(late_tuner=dict(type='LoRA', rank=0)), ValueError, r'SHERL: late_tuner\.rank=0: must be an integer'),
    ('tokens', dict(select_layers=['input', 0], use_input=False), ValueError,
     r"SHERL: use_input=False but select_layers contains 'input'"),
    ('tokens', dict(output_dropout=1.5), ValueError, r'SHERL: output_dropout=1\.5: must be a number >= 0 and < 1'),
])
def test_bad_options(kind, cfg, err, match):
    stack, _ = make(kind)
    with pytest.raises(err, match=match):
        SHERL(stack, **cfg)


def test_widths_mismatch_in_stack():
    class Broken(ToyTokenStack):
        @property
        def widths(self):
            return [16, 16]

    with pytest.raises(ValueError, match='lists 2 widths for 4 layers'):
        SHERL(Broken())


# ---------------------------------------------------------------------------- save / load
@pytest.mark.parametrize('kind', ['tokens', 'cnn'])
def test_save_load_trainable_round_trip(tmp_path, kind):
    stack, batch = make(kind)
    cfg = dict(late_tuner=dict(type='LoRA', rank=2) if kind == 'tokens' else dict(type='Adapter', dim=3))
    tuner = SHERL(copy.deepcopy(stack), **cfg)
    with torch.no_grad():
        for p in tuner.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    tuner.train()
    tuner(*batch)                   # moves the side BatchNorm running stats (CNN)
    tuner.eval()
    ref = tuner(*batch).hidden
    path = str(tmp_path / 'sherl.safetensors')
    save_trainable(tuner, path, tuner.tuner_cfg)
    fresh = SHERL(copy.deepcopy(stack), **cfg)
    load_trainable(fresh, path)     # the file holds the side BN running statistics too (CNN)
    fresh.eval()
    assert torch.equal(fresh(*batch).hidden, ref)
    saved = set(load_file(path))
    assert not any(k.startswith('stack.') and '.lora.' not in k for k in saved), saved   # no frozen stack tensor
    if kind == 'cnn':
        assert {'mtsa.0.downs.0.bn.running_mean', 'mtsa.0.up.1.running_var'} <= saved
        assert torch.equal(fresh.mtsa[0].up[1].running_mean, tuner.mtsa[0].up[1].running_mean)
        assert tuner.stack.stem_norm.running_mean.abs().sum() == 0      # the stack's own BN stayed frozen
