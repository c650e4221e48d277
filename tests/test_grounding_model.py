"""MDETR-like grounding model: DETR stacks, positive map, matching, losses,
predict format, tuner wiring and gradient audit, MDETR checkpoint key map."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData
from torch import nn

import _tiny_grounding as T
from sherl_mm.backbones.detr import DetrDecoderStack, DetrEncoderStack
from sherl_mm.models.grounding import (MDETRHead, SoftTokenCost, char_to_token, create_positive_map,
                                       load_mdetr_checkpoint, mdetr_key_map, span_token_mask, tokenize)
from sherl_mm.models.grounding.checkpoint import convert_mdetr_state_dict, read_mdetr_state_dict
from sherl_mm.registry import TUNERS

REGISTERED_TUNERS = T.import_all_tuners()


def require_tuner(name: str) -> None:
    # Not a skip: every tuner these tests name is part of the project.
    assert name in TUNERS.module_dict, (f'tuner {name!r} is not registered (sherl_mm/tuners/ lacks it); '
                                        f'registered: {sorted(TUNERS.module_dict)}')


# --------------------------------------------------------------------------
# A re-implementation of MDETR's post-norm layers with MDETR's parameter names
# (models/transformer.py), sequence-first, used as the reference.
# --------------------------------------------------------------------------
class RefEncoderLayer(nn.Module):
    def __init__(self, d, h, ff, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, h, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, src, key_padding_mask, pos):
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, value=src, key_padding_mask=key_padding_mask)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class RefDecoderLayer(nn.Module):
    def __init__(self, d, h, ff, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, h, dropout=dropout)
        self.cross_attn_image = nn.MultiheadAttention(d, h, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm3, self.norm4 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, tgt, memory, memory_key_padding_mask, pos, query_pos):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, k, value=tgt)[0])
        tgt2 = self.cross_attn_image(query=tgt + query_pos, key=memory + pos, value=memory,
                                     key_padding_mask=memory_key_padding_mask)[0]
        tgt = self.norm3(tgt + tgt2)
        return self.norm4(tgt + self.linear2(F.relu(self.linear1(tgt))))


def _randomize(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _mdetr_transformer_state(d, h, ff, n_enc, n_dec):
    enc = nn.ModuleList(RefEncoderLayer(d, h, ff) for _ in range(n_enc))
    dec = nn.ModuleList(RefDecoderLayer(d, h, ff) for _ in range(n_dec))
    dec_norm = nn.LayerNorm(d)
    for i, m in enumerate((enc, dec, dec_norm)):
        _randomize(m, seed=i + 1)
    state = {}
    state.update({f'transformer.encoder.layers.{k}': v for k, v in enc.state_dict().items()})
    state.update({f'transformer.decoder.layers.{k}': v for k, v in dec.state_dict().items()})
    state.update({f'transformer.decoder.norm.{k}': v for k, v in dec_norm.state_dict().items()})
    return state, enc.eval(), dec.eval(), dec_norm.eval()


def _load_stack(stack, part, state):
    own = {}
    for k, v in state.items():
        new = mdetr_key_map(k)
        if new is not None and new.startswith(f'stacks.{part}.stack.'):
            own[new[len(f'stacks.{part}.stack.'):]] = v
    result = stack.load_state_dict(own, strict=False)
    return result


def test_detr_stacks_reproduce_mdetr_layers():
    d, h, ff = 32, 4, 64
    state, ref_enc, ref_dec, ref_norm = _mdetr_transformer_state(d, h, ff, 2, 2)
    enc = DetrEncoderStack(num_layers=2, embed_dims=d, num_heads=h, feedforward_channels=ff).eval()
    dec = DetrDecoderStack(num_layers=2, embed_dims=d, num_heads=h, feedforward_channels=ff).eval()
    r = _load_stack(enc, 'encoder', state)
    assert not r.missing_keys and not r.unexpected_keys
    r = _load_stack(dec, 'decoder', state)
    assert not r.missing_keys and not r.unexpected_keys

    B, S, Q = 2, 7, 3
    src, pos = torch.randn(B, S, d), torch.randn(B, S, d)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[1, -2:] = True
    with torch.no_grad():
        out = enc(src, pos, mask).hidden
        ref = src.transpose(0, 1)
        for layer in ref_enc:
            ref = layer(ref, mask, pos.transpose(0, 1))
        torch.testing.assert_close(out, ref.transpose(0, 1), atol=1e-5, rtol=1e-5)

        query = torch.randn(Q, d)
        res = dec(query, out, pos, mask)
        tgt = torch.zeros(Q, B, d)
        qpos = query[:, None].expand(Q, B, d)
        for layer in ref_dec:
            tgt = layer(tgt, ref, mask, pos.transpose(0, 1), qpos)
        torch.testing.assert_close(res.hidden, ref_norm(tgt).transpose(0, 1), atol=1e-5, rtol=1e-5)

        # late_context: the last layer attends to another memory (SHERL)
        other = torch.randn(B, S, d)
        hidden, ctx = dec.embed(query, out, pos, mask)
        hidden = dec.run_layer(0, hidden, ctx)
        hidden = dec.finalize(dec.run_layer(1, hidden, {**ctx, 'memory': other}), ctx)
        tgt = ref_dec[0](torch.zeros(Q, B, d), ref, mask, pos.transpose(0, 1), qpos)
        tgt = ref_norm(ref_dec[1](tgt, other.transpose(0, 1), mask, pos.transpose(0, 1), qpos))
        torch.testing.assert_close(hidden, tgt.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_detr_stack_defaults_are_mdetr_sizes():
    enc, dec = DetrEncoderStack(), DetrDecoderStack()
    assert enc.num_layers == dec.num_layers == 6 and enc.widths == [256] * 6
    layer = dec.layers[0]
    assert layer.self_attn.attn.num_heads == 8 and layer.ffn.layers[0][0].out_features == 2048
    assert layer.self_attn.attn.dropout == 0.1 and layer.ffn.layers[0][2].p == 0.1
    assert layer.self_attn.dropout_layer.p == 0.1  # residual dropout (MDETR dropout1)
    # MDETR's transformer sizes: 6 x 1,315,072 (encoder), 6 x 1,578,752 + 512 (decoder + norm)
    assert sum(p.numel() for p in enc.parameters()) == 6 * 1_315_072
    assert sum(p.numel() for p in dec.parameters()) == 6 * 1_578_752 + 512


def test_decoder_memory_pos_none_is_zero_not_query_pos():
    dec = DetrDecoderStack(num_layers=1, embed_dims=16, num_heads=2, feedforward_channels=32).eval()
    query, memory = torch.randn(4, 16), torch.randn(2, 4, 16)  # Q == S on purpose
    with torch.no_grad():
        a = dec(query, memory, None, None).hidden
        b = dec(query, memory, torch.zeros_like(memory), None).hidden
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------
# positive map
# --------------------------------------------------------------------------
def test_positive_map_from_char_spans():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(T.minilm_tokenizer_dir())
    text = 'the red car on the left'
    enc = tokenize(tok, [text, 'a dog'], max_length=31)
    offsets = enc['offsets'][0]
    ref = tok([text, 'a dog'], padding='longest')
    for c in range(len(text)):
        assert char_to_token(offsets, c) == ref.char_to_token(0, c)
    # 'red car' -> tokens 2, 3 ([CLS] the red car ...); ' red' (starting on a space) as well
    pmap = create_positive_map(offsets, [[[4, 11]], [[3, 7]], [[0, 3], [19, 23]]], width=32)
    assert pmap.shape == (3, 32)
    torch.testing.assert_close(pmap[0, :5], torch.tensor([0, 0, 0.5, 0.5, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(pmap[1, :4], torch.tensor([0, 0, 1.0, 0]), atol=1e-5, rtol=0)
    assert torch.nonzero(pmap[2]).flatten().tolist() == [1, 6]
    torch.testing.assert_close(pmap.sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    mask = span_token_mask(offsets, [[[4, 11]]], width=len(offsets))
    assert mask.dtype == torch.bool and mask[0].nonzero().flatten().tolist() == [2, 3]


# --------------------------------------------------------------------------
# match cost and losses on a hand-made case
# --------------------------------------------------------------------------
def test_soft_token_cost():
    logits = torch.randn(5, 8)
    pmap = torch.zeros(2, 8)
    pmap[0, 1:3] = 0.5
    pmap[1, 4] = 1
    cost = SoftTokenCost(weight=1.5)(InstanceData(scores=logits), InstanceData(positive_maps=pmap))
    expected = -1.5 * torch.einsum('qt,gt->qg', logits.softmax(-1), pmap)
    torch.testing.assert_close(cost, expected)


def _hand_case():
    torch.manual_seed(3)
    B, Q, T_, Lt, C = 2, 4, 8, 5, 6
    head = MDETRHead(embed_dims=16, num_tokens=T_, contrastive_dim=C)
    logits = torch.randn(B, Q, T_)
    boxes = torch.rand(B, Q, 4) * 0.3 + 0.2
    # image 0: one GT at query 2 exactly, tokens 1-2; image 1: two GTs
    img_shapes = [(40, 50), (30, 60)]
    gts = [torch.tensor([[10., 8., 30., 24.]]), torch.tensor([[0., 0., 30., 15.], [12., 6., 48., 27.]])]
    pmaps = [torch.zeros(1, T_), torch.zeros(2, T_)]
    pmaps[0][0, 1:3] = 0.5
    pmaps[1][0, 3] = 1
    pmaps[1][1, 1:4] = 1 / 3
    token_masks = [p[:, :Lt] > 0 for p in pmaps]
    h, w = img_shapes[0]
    g = gts[0][0]
    boxes[0, 2] = torch.tensor([(g[0] + g[2]) / 2 / w, (g[1] + g[3]) / 2 / h, (g[2] - g[0]) / w, (g[3] - g[1]) / h])
    logits[0, 2, 1:3] += 5
    out = dict(logits=logits, boxes=boxes,
               proj_queries=F.normalize(torch.randn(B, Q, C), dim=-1),
               proj_tokens=F.normalize(torch.randn(B, Lt, C), dim=-1))
    targets = [dict(bboxes=gts[b], positive_map=pmaps[b], token_mask=token_masks[b], img_shape=img_shapes[b])
               for b in range(B)]
    return head, out, targets


def _giou(a, b):
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(ix2 - ix1, 0) * max(iy2 - iy1, 0)
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    union = area(a) + area(b) - inter
    cx1, cy1, cx2, cy2 = min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
    hull = (cx2 - cx1) * (cy2 - cy1)
    return inter / union - (hull - union) / hull


def test_losses_match_hand_computation():
    head, out, targets = _hand_case()
    indices = head.match(out, targets)
    assert indices[0][0].tolist() == [2] and indices[0][1].tolist() == [0]

    # brute-force Hungarian on MDETR's cost, image 1
    import itertools
    b = 1
    h, w = targets[b]['img_shape']
    prob = out['logits'][b].softmax(-1)
    gt = targets[b]['bboxes']
    gt_cxcywh = torch.stack([(gt[:, 0] + gt[:, 2]) / 2 / w, (gt[:, 1] + gt[:, 3]) / 2 / h,
                             (gt[:, 2] - gt[:, 0]) / w, (gt[:, 3] - gt[:, 1]) / h], 1)

    def to_xyxy(c):
        return [float(c[0] - c[2] / 2), float(c[1] - c[3] / 2), float(c[0] + c[2] / 2), float(c[1] + c[3] / 2)]

    def cost(q, j):
        return (-(prob[q] * targets[b]['positive_map'][j]).sum() * 1
                + 5 * (out['boxes'][b, q] - gt_cxcywh[j]).abs().sum()
                - 2 * _giou(to_xyxy(out['boxes'][b, q]), to_xyxy(gt_cxcywh[j])))

    best = min(itertools.permutations(range(4), 2), key=lambda qs: sum(float(cost(q, j)) for j, q in enumerate(qs)))
    got = dict(zip(indices[1][1].tolist(), indices[1][0].tolist()))
    assert [got[0], got[1]] == list(best)

    num_boxes = 3.0
    losses = head.loss_single(out, targets, num_boxes, indices)
    # hand computation, term by term
    ce = 0.0
    l1 = 0.0
    giou = 0.0
    for bb in range(2):
        hh, ww = targets[bb]['img_shape']
        matched = dict(zip(indices[bb][0].tolist(), indices[bb][1].tolist()))
        logp = out['logits'][bb].log_softmax(-1)
        for q in range(4):
            if q in matched:
                ce += -(logp[q] * targets[bb]['positive_map'][matched[q]]).sum()
                g = targets[bb]['bboxes'][matched[q]]
                gc = torch.tensor([(g[0] + g[2]) / 2 / ww, (g[1] + g[3]) / 2 / hh, (g[2] - g[0]) / ww,
                                   (g[3] - g[1]) / hh])
                l1 += (out['boxes'][bb, q] - gc).abs().sum()
                giou += 1 - _giou(to_xyxy(out['boxes'][bb, q]), to_xyxy(gc))
            else:
                ce += -0.1 * logp[q, -1]
    torch.testing.assert_close(losses['loss_ce'], ce / num_boxes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses['loss_bbox'], l1 / num_boxes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses['loss_giou'], torch.tensor(float(giou / num_boxes)), atol=1e-5, rtol=1e-5)

    # contrastive align, MDETR's formula written out per box and per token
    logits = out['proj_queries'] @ out['proj_tokens'].transpose(1, 2) / 0.07
    total = 0.0
    for bb in range(2):
        pos = torch.zeros(4, 5, dtype=torch.bool)
        for q, j in zip(indices[bb][0].tolist(), indices[bb][1].tolist()):
            pos[q] = targets[bb]['token_mask'][j]
        for q in range(4):
            if pos[q].any():
                total += -logits[bb, q][pos[q]].mean() + logits[bb, q].logsumexp(0)
        for t in range(5):
            if pos[:, t].any():
                total += -logits[bb, :, t][pos[:, t]].mean() + logits[bb, :, t].logsumexp(0)
    torch.testing.assert_close(losses['loss_contrastive_align'], total / 2 / num_boxes, atol=1e-4, rtol=1e-4)

    weighted = head.loss([out, out], targets)
    assert set(weighted) == {'loss_ce', 'loss_bbox', 'loss_giou', 'loss_contrastive_align',
                             'd0.loss_ce', 'd0.loss_bbox', 'd0.loss_giou', 'd0.loss_contrastive_align'}
    torch.testing.assert_close(weighted['loss_bbox'], 5 * l1 / num_boxes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weighted['d0.loss_giou'], torch.tensor(float(2 * giou / num_boxes)),
                               atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------
# the whole tiny model with tuners
# --------------------------------------------------------------------------
def _grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


def _loss_backward(model, seed=0):
    inputs, samples = T.make_batch(model, seed=seed)
    model.train()
    losses = model(inputs, samples, mode='loss')
    for k, v in losses.items():
        assert torch.isfinite(v), k
    sum(losses.values()).backward()
    return losses


def test_sherl_forward_backward_and_gradient_audit():
    require_tuner('SHERL')
    model = T.build_tiny(T.TINY_SHERL)
    losses = _loss_backward(model)
    # one auxiliary output: the decoder's MTSA output
    assert {k for k in losses if k.startswith('d')} == {'d0.loss_ce', 'd0.loss_bbox', 'd0.loss_giou',
                                                        'd0.loss_contrastive_align'}
    for name, p in model.named_parameters():
        if name.startswith(('stacks.image.', 'stacks.text.', 'input_proj.', 'resizer.', 'query_embed.')) or \
                '.stack.' in name:
            assert not p.requires_grad and p.grad is None, name
        else:  # MTSA modules and heads
            assert p.requires_grad, name
            assert p.grad is not None, name
    side = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith('head.')]
    assert any(n.startswith('stacks.encoder.') for n in side) and any(n.startswith('stacks.decoder.') for n in side)


def test_sherl_on_the_text_encoder_trains_through_the_frozen_transformer():
    """The demo's placement (configs/demo/sherl_text_mdetr_demo.py): MTSA over
    the text stack's embedding and early layers, its last layer late. The
    transformer stays frozen but keeps a graph, so the loss reaches the text
    MTSA; nothing frozen gets a gradient, and the decoder has no MTSA output
    for the auxiliary loss, so its intermediate layers supply them."""
    require_tuner('SHERL')
    model = T.build_tiny(dict(type='SHERL', targets=['text']))
    losses = _loss_backward(model)
    assert {k.split('.')[0] for k in losses if k.startswith('d')} == {'d0', 'd1'}   # 3 decoder layers
    side = []
    for name, p in model.named_parameters():
        if name.startswith(('stacks.text.mtsa.', 'head.')):
            assert p.requires_grad and p.grad is not None, name
            side += [name] if name.startswith('stacks.text.') else []
        else:
            assert not p.requires_grad and p.grad is None, name
    # every down-projection of the text MTSA (embedding output, layer 0 = the guidance) gets a gradient
    downs = [n for n in side if '.downs.' in n and n.endswith('.0.weight')]
    assert len(downs) == 2
    params = dict(model.named_parameters())
    assert all(params[n].grad.abs().sum() > 0 for n in downs)


def test_sherl_late_layer_uses_encoder_side_memory_and_frozen_text_memory():
    require_tuner('SHERL')
    model = T.build_tiny(T.TINY_SHERL).eval()
    inputs, samples = T.make_batch(model)
    with torch.no_grad():
        res = model.forward_transformer(inputs, samples)
    enc = res['encoder']
    assert enc.frozen is not None and not torch.allclose(enc.frozen, enc.hidden)
    # the contrastive-align tokens come from the frozen encoder's text part
    num_text = res['tokenized']['input_ids'].shape[1]
    proj = model.head.contrastive_align_projection_text(enc.frozen[:, -num_text:])
    torch.testing.assert_close(res['outputs'][-1]['proj_tokens'], F.normalize(proj, dim=-1))
    # early decoder layers attend to the frozen memory, the late one to the MTSA output
    calls = []
    dec_stack = model.stacks['decoder'].stack
    orig = dec_stack.run_layer

    def spy(index, hidden, context):
        calls.append((index, context['memory']))
        return orig(index, hidden, context)

    dec_stack.run_layer = spy
    with torch.no_grad():
        res = model.forward_transformer(inputs, samples)
    dec_stack.run_layer = orig
    enc = res['encoder']
    mem = {i: m for i, m in calls}
    assert sorted(mem) == [0, 1, 2]
    torch.testing.assert_close(mem[0], enc.frozen)
    torch.testing.assert_close(mem[1], enc.frozen)
    torch.testing.assert_close(mem[2], enc.hidden)


def test_sherl_with_identity_mtsa_reproduces_the_frozen_model():
    """Zero up-projection (Linear and LN affine) and α = 10 in both
    MTSA blocks make SHERL's route equal the plain frozen model, in eval mode."""
    require_tuner('SHERL')
    sherl = T.build_tiny(T.TINY_SHERL).eval()
    plain = T.build_tiny(dict(type='FullFineTune')).eval()
    missing, unexpected = plain.load_state_dict(sherl.state_dict(), strict=False)
    assert missing == [] and all('.mtsa.' in k for k in unexpected)
    with torch.no_grad():
        for name in ('encoder', 'decoder'):
            for block in sherl.stacks[name].mtsa:
                for m in block.up:
                    if isinstance(m, (nn.Linear, nn.LayerNorm)):
                        m.weight.zero_()
                        m.bias.zero_()
                block.alpha.fill_(10.0)
    inputs, samples = T.make_batch(sherl)
    with torch.no_grad():
        a = sherl.forward_transformer(inputs, samples)
        b = plain.forward_transformer(inputs, samples)
    torch.testing.assert_close(a['encoder'].hidden, b['encoder'].hidden, atol=1e-5, rtol=1e-5)
    for key in ('logits', 'boxes', 'proj_queries', 'proj_tokens'):
        torch.testing.assert_close(a['outputs'][-1][key], b['outputs'][-1][key], atol=1e-5, rtol=1e-5)
    # the decoder MTSA output is then the (un-normed) output of the layer before the late one
    torch.testing.assert_close(a['decoder'].side, a['decoder'].frozen)


@pytest.mark.parametrize('tuner', [dict(type='FullFineTune'), dict(type='LoRA', rank=4)])
def test_plain_route_tuners_forward_backward(tuner):
    require_tuner(tuner['type'])
    model = T.build_tiny(tuner)
    losses = _loss_backward(model)
    # aux losses on every intermediate decoder layer (3 layers -> 2 aux)
    assert 'd1.loss_ce' in losses and 'd2.loss_ce' not in losses
    grads = _grads(model)
    for name, p in model.named_parameters():
        if p.requires_grad and not name.endswith(('token_type_embeddings.weight',)):
            assert grads[name] is not None, name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if tuner['type'] == 'FullFineTune':
        assert {'input_proj.weight', 'resizer.fc.weight', 'query_embed.weight'} <= trainable
        assert any(n.startswith('stacks.image.') for n in trainable)
        assert any(n.startswith('stacks.text.') for n in trainable)
    else:
        assert not any(n.startswith(('stacks.image.', 'stacks.text.', 'input_proj.', 'resizer.', 'query_embed.'))
                       for n in trainable)
        assert all(n.startswith('head.') or 'lora' in n for n in trainable), trainable


LORA = dict(type='LoRA', rank=4)


def test_predict_format_sorting_and_rescale():
    require_tuner('LoRA')
    model = T.build_tiny(LORA).eval()
    inputs, samples = T.make_batch(model)
    with torch.no_grad():
        raw = model.predict(inputs, copy.deepcopy(samples), rescale=False)
        res = model.predict(inputs, copy.deepcopy(samples), rescale=True)
        logits, boxes = model(inputs, samples, mode='tensor')
    assert logits.shape == (2, 5, 32) and boxes.shape == (2, 5, 4)
    for b, (r0, r1) in enumerate(zip(raw, res)):
        p = r1.pred_instances
        assert len(p) == 5 and p.bboxes.shape == (5, 4)
        assert torch.all(p.scores[:-1] >= p.scores[1:])
        assert torch.all(p.labels == 0)
        expected = 1 - logits[b].softmax(-1)[:, -1]
        torch.testing.assert_close(p.scores, expected.sort(descending=True).values)
        sf = torch.tensor(samples[b].metainfo['scale_factor']).repeat(2)
        ori_h, ori_w = samples[b].metainfo['ori_shape']
        scaled = r0.pred_instances.bboxes / sf
        scaled[:, 0::2] = scaled[:, 0::2].clamp(0, ori_w)
        scaled[:, 1::2] = scaled[:, 1::2].clamp(0, ori_h)
        torch.testing.assert_close(p.bboxes, scaled)
        assert torch.all(p.bboxes[:, 2:] >= p.bboxes[:, :2])


def test_efficientnet_image_stack_and_max_per_img():
    require_tuner('LoRA')
    model = T.build_tiny(LORA, image_backbone=dict(type='EfficientNetStack', pretrained=False),
                         test_cfg=dict(max_per_img=3)).eval()
    assert model.input_proj.in_channels == 1280  # the stack's output stage (head conv), not the last block
    inputs, samples = T.make_batch(model, sizes=((64, 96), (64, 80)))
    with torch.no_grad():
        res = model.predict(inputs, samples)
    assert [len(r.pred_instances) for r in res] == [3, 3]


def test_init_weights_keeps_built_weights():
    require_tuner('LoRA')
    model = T.build_tiny(LORA)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    after = model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def test_padding_mask_follows_img_shape():
    require_tuner('LoRA')
    model = T.build_tiny(LORA)
    inputs, samples = T.make_batch(model, sizes=((60, 80), (40, 50)))
    mask = model._padding_mask(inputs, samples)
    assert mask.shape == (2, 60, 80)
    assert not mask[0].any()
    assert not mask[1, :40, :50].any() and mask[1, 40:].all() and mask[1, :, 50:].all()


# --------------------------------------------------------------------------
# MDETR checkpoint key map
# --------------------------------------------------------------------------
def _mdetr_state_for(model) -> dict:
    """A state dict with MDETR's names and the tiny model's shapes, random values."""
    from mmdet.models.backbones import ResNet
    from transformers import AutoConfig, AutoModel
    d, ff = model.embed_dims, 64
    state, *_ = _mdetr_transformer_state(d, 4, ff, 2, 3)
    resnet = ResNet(depth=18, base_channels=8)
    _randomize(resnet, 5)
    state.update({f'backbone.0.body.{k}': v for k, v in resnet.state_dict().items()
                  if not k.endswith('num_batches_tracked')})  # FrozenBatchNorm2d has no counter
    cfg = dict(T.text_stack_cfg()['config'])
    text = AutoModel.from_config(AutoConfig.for_model(cfg.pop('model_type'), **cfg))  # with pooler, as MDETR
    _randomize(text, 6)
    state.update({f'transformer.text_encoder.{k}': v for k, v in text.state_dict().items()})
    g = torch.Generator().manual_seed(7)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    state.update({
        'transformer.resizer.fc.weight': rnd(d, 24), 'transformer.resizer.fc.bias': rnd(d),
        'transformer.resizer.layer_norm.weight': rnd(d), 'transformer.resizer.layer_norm.bias': rnd(d),
        'input_proj.weight': rnd(d, 512 // 8, 1, 1), 'input_proj.bias': rnd(d),
        'query_embed.weight': rnd(5, d),
        'class_embed.weight': rnd(32, d), 'class_embed.bias': rnd(32),
        'contrastive_align_projection_image.weight': rnd(8, d), 'contrastive_align_projection_image.bias': rnd(8),
        'contrastive_align_projection_text.weight': rnd(8, d), 'contrastive_align_projection_text.bias': rnd(8),
        'contrastive_projection_image.weight': rnd(8, d),  # global contrastive head: not in this model
    })
    for i, (o, n) in enumerate([(d, d), (d, d), (4, d)]):
        state[f'bbox_embed.layers.{i}.weight'] = rnd(o, n)
        state[f'bbox_embed.layers.{i}.bias'] = rnd(o)
    return state


@pytest.mark.parametrize('tuner', ['LoRA', 'SHERL'])
def test_mdetr_key_map_loads_everything_and_reproduces_weights(tuner):
    require_tuner(tuner)
    assert T.has_resnet_stack(), 'sherl_mm.backbones.cnn.ResNetStack is needed for the backbone key map'
    model = T.build_tiny(LORA if tuner == 'LoRA' else T.TINY_SHERL, image='resnet')
    state = _mdetr_state_for(model)
    report = load_mdetr_checkpoint(model, state)
    assert report['missing'] == [], report['missing'][:10]
    assert report['unexpected'] == [], report['unexpected'][:10]
    assert any('pooler' in k for k in report['ignored']) and 'contrastive_projection_image.weight' in report['ignored']
    own = model.state_dict()
    converted, _, _ = convert_mdetr_state_dict(state, model)
    for k, v in converted.items():
        assert torch.equal(own[k], v), k
    # spot checks of the exact map
    assert torch.equal(own['stacks.encoder.stack.layers.1.self_attn.attn.in_proj_weight'],
                       state['transformer.encoder.layers.1.self_attn.in_proj_weight'])
    assert torch.equal(own['stacks.decoder.stack.layers.0.cross_attn.attn.out_proj.bias'],
                       state['transformer.decoder.layers.0.cross_attn_image.out_proj.bias'])
    assert torch.equal(own['stacks.decoder.stack.layers.1.norms.2.weight'],
                       state['transformer.decoder.layers.1.norm4.weight'])
    assert torch.equal(own['stacks.decoder.stack.layers.1.ffn.layers.0.0.weight'],
                       state['transformer.decoder.layers.1.linear1.weight'])
    assert torch.equal(own['stacks.image.stack.layers.2.conv1.weight'], state['backbone.0.body.layer2.0.conv1.weight'])
    assert torch.equal(own['stacks.image.stack.layers.6.downsample.1.running_var'],
                       state['backbone.0.body.layer4.0.downsample.1.running_var'])
    assert torch.equal(own['stacks.text.stack.model.encoder.layer.1.output.dense.weight'],
                       state['transformer.text_encoder.encoder.layer.1.output.dense.weight'])
    assert torch.equal(own['head.bbox_embed.layers.2.bias'], state['bbox_embed.layers.2.bias'])


def test_mdetr_checkpoint_file_at_build_time(tmp_path):
    require_tuner('LoRA')
    model = T.build_tiny(LORA, image='resnet')
    state = _mdetr_state_for(model)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / 'pretrained_tiny_mdetr.pth'
    torch.save(dict(model=state, model_ema=ema, epoch=3, args=argparse.Namespace(lr=1e-4)), path)
    built = T.build_tiny(LORA, image='resnet', mdetr_checkpoint=str(path))
    assert built.mdetr_load_report['missing'] == [] and built.mdetr_load_report['unexpected'] == []
    own = built.state_dict()
    assert torch.equal(own['query_embed.weight'], ema['query_embed.weight'])
    assert torch.equal(own['stacks.encoder.stack.layers.0.norms.0.bias'],
                       ema['transformer.encoder.layers.0.norm1.bias'])
    # the Runner's init_weights must not overwrite the loaded weights
    built.init_weights()
    assert torch.equal(built.state_dict()['stacks.image.stack.layers.0.bn2.weight'],
                       ema['backbone.0.body.layer1.0.bn2.weight'])
    assert torch.equal(built.state_dict()['head.class_embed.weight'], ema['class_embed.weight'])
    assert list(read_mdetr_state_dict(path, use_ema=False).values())[0].equal(list(state.values())[0])


def test_mdetr_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no_such_mdetr.pth'):
        read_mdetr_state_dict(tmp_path / 'no_such_mdetr.pth')
    bad = tmp_path / 'optim_only.pth'
    torch.save(dict(optimizer=dict(state={}), epoch=1), bad)
    with pytest.raises(KeyError, match='holds no model'):
        read_mdetr_state_dict(bad)


# --------------------------------------------------------------------------
# paper-size trainable count (docs/method.md: 696,200)
# --------------------------------------------------------------------------
PAPER_TEXT = dict(model_type='roberta', vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                  pad_token_id=1, layer_norm_eps=1e-5)


def test_paper_size_sherl_trainable_count():
    """ResNet-101 + RoBERTa-base (random, from config) + 6+6 x 256 + SHERL."""
    require_tuner('SHERL')
    import sherl_mm.models  # noqa: F401
    from sherl_mm.models.grounding import DEFAULT_TUNER
    from sherl_mm.registry import MODELS
    model = MODELS.build(dict(
        type='MDETRGrounding', tuner=DEFAULT_TUNER,
        image_backbone=dict(type='ResNetStack', depth=101),
        text_encoder=dict(type='HFEncoderStack', config=PAPER_TEXT, tokenizer=T.minilm_tokenizer_dir())))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    heads = sum(p.numel() for p in model.head.parameters())
    side = {name: sum(p.numel() for p in model.stacks[name].parameters() if p.requires_grad)
            for name in ('encoder', 'decoder')}
    assert heads == 65_792 + 132_612 + 32_896
    assert side == dict(encoder=232_450, decoder=232_450)
    assert trainable == 696_200
