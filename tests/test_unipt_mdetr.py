"""UniPT's MDETR form (UniPT, CVPR 2024; docs/tuners.md): the tuner pair
against a per-sample reference of the formulas, hand-computed vectors on its
pieces, the authors' 481,666 parameters (tuners and the paper-size config),
the tiny grounding model's forward/backward with a gradient audit and its four
head outputs, errors."""
import os
import os.path as osp
import sys

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

sys.path.insert(0, os.path.dirname(__file__))
import _tiny_grounding as T  # noqa: E402

import sherl_mm  # noqa: E402
from sherl_mm.backbones.detr import DetrDecoderStack, DetrEncoderStack  # noqa: E402
from sherl_mm.registry import MODELS, TUNERS  # noqa: E402
from sherl_mm.tuners import UniPTMDETR  # noqa: E402
from sherl_mm.tuners.unipt import merge_by_confidence  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TUNER = dict(type='UniPTMDETR', reduction=2, eps=1e-7,
             per_stack=dict(encoder=dict(role='encoder'), decoder=dict(role='decoder')))
ENC_SIDE = ('anchor_down', 'downsamples', 'projection', 'gate')
DEC_SIDE = ENC_SIDE + ('crossers', 'upsample')


def stacks(dim=16, num_layers=6, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    kw = dict(num_layers=num_layers, embed_dims=dim, num_heads=2, feedforward_channels=32, dropout=0.0)
    return DetrEncoderStack(**kw).to(dtype), DetrDecoderStack(**kw).to(dtype)


def pair(dim=16, num_layers=6, seed=0, dtype=torch.float64, **kw):
    enc, dec = stacks(dim, num_layers, seed, dtype)
    return (UniPTMDETR(enc, role='encoder', **kw).to(dtype).eval(),
            UniPTMDETR(dec, role='decoder', **kw).to(dtype).eval())


def batch(dim=16, tokens=7, queries=4, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(2, tokens, dim, generator=g, dtype=dtype)
    pos = torch.randn(2, tokens, dim, generator=g, dtype=dtype)
    mask = torch.zeros(2, tokens, dtype=torch.bool)
    mask[1, tokens - 3:] = True                                  # sample 1: 3 padded tokens
    query_pos = torch.randn(queries, dim, generator=g, dtype=dtype)
    return src, pos, mask, query_pos


def run(enc, dec, src, pos, mask, query_pos):
    e = enc(src, pos, mask)
    d = dec(query_pos, e.frozen, pos, mask, late_context=dict(memory=e.hidden))
    return e, d


# ---------------------------------------------------------------------------- per-sample reference of the formulas
def _lin_att(q, c, v, eps, residual):
    """``l1norm_row(ReLU((q cᵀ) ⊙ v_cols)) (+ I)`` applied to ``c``, one sample."""
    w = F.relu((q @ c.T) * v[None, :].to(q.dtype))
    w = w / (w.abs().sum(-1, keepdim=True) + eps)
    if residual:
        w = w + torch.eye(w.shape[0], dtype=w.dtype)
    return w @ c


def _mean(x, v):
    v = v.to(x.dtype)
    return (x * v[:, None]).sum(0) / v.sum()


def _fuse(m, A, Ts, v):
    a = _mean(A, v)
    mg = [_lin_att(A, Tj, v, m.eps, True) for Tj in Ts]
    pi = torch.softmax(torch.cat([m.gate(a * _mean(Tj, v)) for Tj in Ts]), 0)
    return A + m.projection(sum(p * x for p, x in zip(pi, mg)))


def _frozen_states(stack, *inputs):
    h, ctx = stack.embed(*inputs)
    states = [h]                                               # [input, out_0, ..., out_{n-1}]
    for i in range(stack.num_layers):
        h = stack.run_layer(i, h, ctx)
        states.append(h)
    return states


def reference(enc, dec, src, pos, mask, query_pos):
    """``(side_img_memory, [hs_0, hs_1, hs_2, hs_3])`` written from the formulas of the module docstring."""
    with torch.no_grad():
        es = _frozen_states(enc.stack, src, pos, mask)
        ds = _frozen_states(dec.stack, query_pos, es[-1], pos, mask)
        normed = dec.stack.post_norm(ds[-1])
        memory, hs = [], []
        for b in range(src.shape[0]):
            v = ~mask[b]
            A = enc.anchor_down(es[-1][b])
            Ts = [down(es[k][b]) for down, k in zip(enc.downsamples, (1, 3, 5))]
            mem = _fuse(enc, A, Ts, v)
            memory.append(mem)
            q = torch.ones(query_pos.shape[0], dtype=torch.bool)  # no query padding
            A = dec.anchor_down(normed[b])
            Ts = []
            for down, crosser, k in zip(dec.downsamples, dec.crossers, (1, 3, 5)):
                t = down(ds[k][b])                                 # un-normed decoder output
                Ts.append(t + crosser(_lin_att(t, mem, v, dec.eps, False)))
            hs.append([dec.upsample(x) for x in Ts + [_fuse(dec, A, Ts, q)]])
    return torch.stack(memory), [torch.stack([h[i] for h in hs]) for i in range(4)]


def _perturb(enc, dec):
    """Random side biases and a non-trivial frozen decoder norm, so that no
    term hides behind a zero and normed / un-normed decoder outputs differ."""
    with torch.no_grad():
        for p in list(enc.parameters()) + list(dec.parameters()):
            if p.requires_grad and p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
        dec.stack.post_norm.weight.uniform_(0.5, 2.0)
        dec.stack.post_norm.bias.normal_(0.0, 0.5)


def test_pair_matches_the_formulas_of_section_3_2():
    enc, dec = pair()
    _perturb(enc, dec)
    inputs = batch()
    with torch.no_grad():
        e, d = run(enc, dec, *inputs)
    memory, hs = reference(enc, dec, *inputs)
    assert e.hidden.shape == (2, 7, 8) and d.hidden.shape == (2, 4, 16) and len(d.aux) == 3
    torch.testing.assert_close(e.hidden, memory, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(torch.stack(d.aux + [d.hidden]), torch.stack(hs), atol=1e-10, rtol=1e-10)
    # frozen: the plain encoder output, the normed plain decoder output
    with torch.no_grad():
        plain_enc = enc.stack(*inputs[:3]).hidden
        plain_dec = dec.stack(inputs[3], plain_enc, inputs[1], inputs[2]).hidden
    torch.testing.assert_close(e.frozen, plain_enc)
    torch.testing.assert_close(d.frozen, plain_dec)
    assert d.side.shape == (2, 4, 8)


def test_decoder_intermediates_are_not_normed_and_frozen_route_has_no_graph():
    enc, dec = pair(dtype=torch.float32)
    _perturb(enc, dec)
    enc.train()
    dec.train()
    src, pos, mask, qp = batch(dtype=torch.float32)
    e = enc(src, pos, mask, return_intermediates=True)
    d = dec(qp, e.frozen, pos, mask, late_context=dict(memory=e.hidden), return_intermediates=True)
    assert len(e.intermediates) == len(d.intermediates) == 6
    for x in [e.frozen, d.frozen, *e.intermediates, *d.intermediates]:
        assert not x.requires_grad and x.grad_fn is None
    torch.testing.assert_close(d.frozen, dec.stack.post_norm(d.intermediates[-1]))
    assert not torch.allclose(d.intermediates[0], dec.stack.post_norm(d.intermediates[0]))
    assert e.hidden.requires_grad and d.hidden.requires_grad and all(a.requires_grad for a in d.aux)


# ---------------------------------------------------------------------------- hand-computed vectors on the pieces
def test_t13_decoder_memory_read_masks_padding_and_rows_sum_to_one():
    _, dec = pair()
    g = torch.Generator().manual_seed(3)
    t = torch.rand(2, 4, 8, generator=g, dtype=torch.float64)
    mem = torch.rand(2, 6, 8, generator=g, dtype=torch.float64)            # positive: every similarity > 0
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    r, w = dec.read_memory(t, mem, valid)
    assert torch.equal(w[1, :, 4:], torch.zeros(4, 2, dtype=torch.float64))   # padded columns: weight 0
    # no +I: rows sum to Σ/(Σ+ε) ≈ 1, and R is a convex mix of the valid memory tokens
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, dtype=torch.float64), atol=1e-6)
    torch.testing.assert_close(r, w @ mem)
    # non-positive similarities: nothing is read (the residual-free counterpart of "merged = context")
    r0, w0 = dec.read_memory(t, -mem, valid)
    assert torch.equal(r0, torch.zeros_like(r0)) and torch.equal(w0, torch.zeros_like(w0))


def test_t13_nonpositive_similarities_merge_to_the_targets():
    """With ``A Tᵀ <= 0`` every ``Mg_j = T_j`` (the +I residual), so the
    aggregate is ``Σ_j softmax_j(gate(a ⊙ t_j)) T_j``."""
    enc, _ = pair()
    g = torch.Generator().manual_seed(4)
    anchor = torch.rand(2, 5, 8, generator=g, dtype=torch.float64)
    targets = [-torch.rand(2, 5, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 3:] = False
    out = merge_by_confidence(anchor, targets, enc.gate, valid, enc.eps)
    v = valid.to(anchor.dtype)[..., None]
    a = (anchor * v).sum(1) / v.sum(1)
    pi = torch.softmax(torch.cat([enc.gate(a * (t * v).sum(1) / v.sum(1)) for t in targets], 1), 1)
    expect = sum(pi[:, j, None, None] * targets[j] for j in range(3))
    torch.testing.assert_close(out, expect, atol=1e-12, rtol=1e-12)


def test_padding_does_not_leak():
    """Padded encoder tokens and padded side-memory tokens get weight 0 everywhere."""
    enc, dec = pair()
    src, pos, mask, qp = batch()
    with torch.no_grad():
        e, d = run(enc, dec, src, pos, mask, qp)
        src2 = src.clone()
        src2[mask] += 5.0
        e2, d2 = run(enc, dec, src2, pos, mask, qp)
        torch.testing.assert_close(e2.hidden[~mask], e.hidden[~mask], atol=1e-10, rtol=1e-10)
        assert not torch.allclose(e2.hidden[mask], e.hidden[mask])
        torch.testing.assert_close(d2.hidden, d.hidden, atol=1e-10, rtol=1e-10)
        memory = e.hidden.clone()
        memory[mask] = 100.0
        d3 = dec(qp, e.frozen, pos, mask, late_context=dict(memory=memory))
        torch.testing.assert_close(torch.stack(d3.aux + [d3.hidden]), torch.stack(d.aux + [d.hidden]),
                                   atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------------- parameter counts and init
def side_count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_t14_tuner_pair_at_mdetr_sizes_and_init():
    enc, dec = pair(dim=256, dtype=torch.float32)
    assert enc.side_width == dec.side_width == 128
    # encoder: down0 + 3 downs (LN∘Linear 256→128), Proj (128→256→128, LN), gate
    encoder = 4 * (256 * 128 + 128 + 256) + (128 * 256 + 256 + 256 * 128 + 128 + 256) + 129
    decoder = encoder + 3 * (128 * 128 + 128 + 256) + (128 * 256 + 256 + 512)
    assert (side_count(enc), side_count(dec)) == (encoder, decoder) == (198_913, 282_753)
    assert side_count(enc) + side_count(dec) == 481_666
    assert {n.split('.')[0] for n, p in enc.named_parameters() if p.requires_grad} == set(ENC_SIDE)
    assert {n.split('.')[0] for n, p in dec.named_parameters() if p.requires_grad} == set(DEC_SIDE)
    # xavier-uniform on every side matrix (bound sqrt(6 / (fan_in + fan_out))), beyond PyTorch's default
    # bound 1/sqrt(fan_in); biases keep the default; LayerNorms start at (1, 0)
    for name, p in list(enc.named_parameters()) + list(dec.named_parameters()):
        if name.startswith('stack.'):
            continue
        if p.dim() > 1:
            fan_out, fan_in = p.shape
            assert p.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5 + 1e-7, name
            if min(fan_in, fan_out) > 1:
                assert p.abs().max() > 1.0 / fan_in ** 0.5, name
    assert torch.equal(dec.upsample[2].weight, torch.ones(256)) and torch.equal(dec.upsample[2].bias, torch.zeros(256))
    lin = enc.anchor_down[0]
    assert lin.bias.abs().max() <= 1.0 / 256 ** 0.5


def test_paper_size_config_trainable_count():
    """configs/unipt_mdetr_refcoco.py at its own sizes (ResNet-101, RoBERTa-base
    from a config with random weights): 481,666 side + 231,300 head parameters."""
    from test_grounding_model import PAPER_TEXT
    sherl_mm.register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'unipt_mdetr_refcoco.py'))
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
    cfg.model.text_encoder = dict(type='HFEncoderStack', config=PAPER_TEXT, tokenizer=T.minilm_tokenizer_dir())
    cfg.model.mdetr_checkpoint = None
    model = MODELS.build(cfg.model.to_dict())
    assert all(type(model.stacks[n]) is UniPTMDETR for n in ('encoder', 'decoder'))
    side = {n: side_count(model.stacks[n]) for n in ('encoder', 'decoder')}
    assert side == dict(encoder=198_913, decoder=282_753)
    assert sum(side.values()) == 481_666
    assert side_count(model.head) == sum(p.numel() for p in model.head.parameters()) == 231_300
    assert side_count(model) == 481_666 + 231_300
    assert not any('.stack.' in n for n, p in model.named_parameters() if p.requires_grad)


# ---------------------------------------------------------------------------- the tiny grounding model
def tiny(tuner=TUNER, num_layers=6):
    kw = dict(embed_dims=T.D, num_heads=4, feedforward_channels=64, num_layers=num_layers)
    torch.manual_seed(0)
    return T.build_tiny(tuner, encoder=dict(type='DetrEncoderStack', **kw),
                        decoder=dict(type='DetrDecoderStack', **kw))


def test_tiny_model_forward_backward_gradient_audit_and_four_head_outputs():
    model = tiny().train()
    inputs, samples = T.make_batch(model)
    seen = []
    handle = model.head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        res = model.forward_transformer(inputs, samples)
    finally:
        handle.remove()
    enc, dec = res['encoder'], res['decoder']
    assert enc.hidden.shape[-1] == T.D // 2 and dec.hidden.shape[-1] == T.D
    # the heads see the three auxiliary side states first, then the final output
    assert len(seen) == len(res['outputs']) == 4
    for got, expect in zip(seen, dec.aux + [dec.hidden]):
        assert got is expect
    # the contrastive-align tokens come from the frozen encoder's text part
    num_text = res['tokenized']['input_ids'].shape[1]
    proj = model.head.contrastive_align_projection_text(enc.frozen[:, -num_text:])
    torch.testing.assert_close(res['outputs'][-1]['proj_tokens'], F.normalize(proj, dim=-1))

    targets = model.build_targets(samples, res['tokenized'])
    losses = model.head.loss(res['outputs'], targets)
    names = ('loss_ce', 'loss_bbox', 'loss_giou', 'loss_contrastive_align')
    assert set(losses) == {f'{p}{n}' for p in ('', 'd0.', 'd1.', 'd2.') for n in names}
    assert all(torch.isfinite(v) for v in losses.values())

    # auxiliary output i is up(T_i): its loss alone trains decoder down/crosser i (and the encoder side);
    # the other side states get zero gradients (the slices of the stacked head inputs it does not read)
    sum(v for k, v in losses.items() if k.startswith('d1.')).backward(retain_graph=True)
    decoder = model.stacks['decoder']

    def untouched(module):
        return all(p.grad is None or not p.grad.any() for p in module.parameters())
    assert not untouched(decoder.downsamples[1]) and not untouched(decoder.crossers[1])
    assert all(untouched(m) for m in (decoder.downsamples[0], decoder.downsamples[2], decoder.crossers[0],
                                      decoder.crossers[2], decoder.anchor_down, decoder.gate, decoder.projection))
    assert all(p.grad is not None and p.grad.any() for p in model.stacks['encoder'].parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)

    sum(losses.values()).backward()
    trainable = set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable.add(name)
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    prefixes = {n.split('.')[0] if n.startswith('head.') else '.'.join(n.split('.')[:3]) for n in trainable}
    assert prefixes == {'head'} | {f'stacks.encoder.{m}' for m in ENC_SIDE} | {f'stacks.decoder.{m}' for m in DEC_SIDE}
    # everything pre-trained is frozen: stacks, input projection, resizer, queries
    assert not any(n.startswith(('stacks.image.', 'stacks.text.', 'input_proj.', 'resizer.', 'query_embed.'))
                   or '.stack.' in n for n in trainable)


def test_tiny_model_eval_predicts_from_the_final_output():
    model = tiny().eval()
    inputs, samples = T.make_batch(model)
    with torch.no_grad():
        res = model.forward_transformer(inputs, samples)
        out = model.predict(inputs, samples)
    assert len(res['outputs']) == 1 and res['outputs'][0]['boxes'].shape == (2, 5, 4)
    assert len(out) == 2 and out[0].pred_instances.bboxes.shape == (5, 4)


# ---------------------------------------------------------------------------- errors
def test_fewer_than_six_layers_is_refused():
    enc, _ = stacks(num_layers=5)
    with pytest.raises(ValueError, match='at least 6 layers'):
        UniPTMDETR(enc, role='encoder')
    with pytest.raises(ValueError, match='at least 6 layers'):
        tiny(num_layers=3)


def test_wrong_widths_are_refused():
    class Uneven(DetrEncoderStack):
        @property
        def widths(self):
            return [self.embed_dims] * (self.num_layers - 1) + [self.embed_dims // 2]

    torch.manual_seed(0)
    with pytest.raises(ValueError, match='one width'):
        UniPTMDETR(Uneven(num_layers=6, embed_dims=16, num_heads=2, feedforward_channels=32), role='encoder')
    # the decoder side needs the encoder side memory at its own width d
    enc, dec = pair()
    src, pos, mask, qp = batch()
    with torch.no_grad():
        frozen = enc(src, pos, mask).frozen
        with pytest.raises(ValueError, match='side_width'):
            dec(qp, frozen, pos, mask, late_context=dict(memory=frozen))       # width D, not d
        with pytest.raises(ValueError, match='late_context'):
            dec(qp, frozen, pos, mask)
    _, dec_narrow = pair(side_width=4)
    with torch.no_grad(), pytest.raises(ValueError, match='side_width'):
        run(enc, dec_narrow, src, pos, mask, qp)


@pytest.mark.parametrize('kw, match', [
    (dict(), r"UniPTMDETR: role=None: must be 'encoder' or 'decoder'; in a model config give it per stack"),
    (dict(role='enc'), r"UniPTMDETR: role='enc': must be one of \['encoder', 'decoder'\]"),
    (dict(role='encoder', side_width=8, reduction=2), 'not both'),
    (dict(role='encoder', feature_indices=[1, 1]), 'distinct'),
    (dict(role='encoder', feature_indices=['input', 3]), 'distinct integers'),
    (dict(role='encoder', feature_indices=[6]), 'at least 7 layers'),
])
def test_bad_options(kw, match):
    enc, _ = stacks()
    with pytest.raises(ValueError, match=match):
        TUNERS.build(dict(type='UniPTMDETR', **kw), default_args=dict(stack=enc))
