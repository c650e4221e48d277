"""PETL baseline tuners: FullFineTune, LinearProbe, LoRA, Adapter, BitFit, PromptTuning."""
import copy

import pytest
import torch
from torch import nn

from _toy_stacks import ToyCNNStack, ToyTokenStack

from sherl_mm.registry import TUNERS
from sherl_mm.tuners import (Adapter, BitFit, FullFineTune, LinearProbe, LoRA, PromptTuning,
                             build_tuned_stacks, inject_adapters, inject_lora, load_trainable, parameter_report,
                             prepend_tokens, remove_adapters, save_trainable, trainable_parameters)
from sherl_mm.tuners.prompt import extend_attention_mask

ATOL = 1e-5
# hand counts for ToyTokenStack(vocab=50, dim=16, heads=2, ffn=32, num_layers=3, max_len=32)
D, FFN, L = 16, 32, 3
LAYER_PARAMS = (3 * D * D + 3 * D) + (D * D + D) + (D * FFN + FFN) + (FFN * D + D) + 2 * (2 * D)
STACK_PARAMS = 50 * D + 32 * D + L * LAYER_PARAMS + 2 * D


def token_stack(seed=0, **kw):
    torch.manual_seed(seed)
    return ToyTokenStack(**{'num_layers': L, **kw}).eval()


def conv_stack(seed=0):
    torch.manual_seed(seed)
    return ToyCNNStack(channels=(8, 16), strides=(2, 2), stem_norm=False).eval()


def token_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (2, 7), generator=g)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    return ids, pad


def images():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def frozen_output(stack, *inputs):
    with torch.no_grad():
        return copy.deepcopy(stack).requires_grad_(False)(*inputs).hidden


def randomize_trainable(tuner, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(tuner).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def n_trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


TOKEN_CONFIGS = {
    'full': dict(type='FullFineTune'),
    'linear_probe': dict(type='LinearProbe'),
    'lora': dict(type='LoRA', rank=4, alpha=8),
    'lora_all': dict(type='LoRA', rank=2, target_modules='all-linear', dropout=0.0),
    'adapter_layers': dict(type='Adapter', dim=4),
    'adapter_modules': dict(type='Adapter', dim=4, target_modules=['self_attn', 'linear2'], placement='parallel'),
    'bitfit': dict(type='BitFit'),
    'prompt': dict(type='PromptTuning', num_tokens=3),
    'prompt_deep': dict(type='PromptTuning', num_tokens=2, mode='deep'),
}


def test_registered():
    for name in ('FullFineTune', 'LinearProbe', 'LoRA', 'Adapter', 'BitFit', 'PromptTuning'):
        assert TUNERS.get(name) is not None


# ---------------------------------------------------------------- equal at init
@pytest.mark.parametrize('key', ['full', 'linear_probe', 'lora', 'lora_all', 'adapter_layers', 'adapter_modules',
                                 'bitfit'])
def test_equals_frozen_at_init(key):
    stack = token_stack()
    ids, pad = token_batch()
    ref = frozen_output(stack, ids, pad)
    tuner = TUNERS.build(TOKEN_CONFIGS[key], default_args=dict(stack=stack)).eval()
    torch.testing.assert_close(tuner(ids, pad).hidden, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize('cfg', [dict(type='LoRA', target_modules=['conv1', 'conv2', 'stem'], rank=2),
                                 dict(type='Adapter', dim=2), dict(type='Adapter', dim=2, placement='parallel'),
                                 dict(type='Adapter', dim=2, target_modules=['conv1', 'bn1'])])
def test_feature_map_stack_equal_at_init_and_trains(cfg):
    stack = conv_stack()
    x = images()
    ref = frozen_output(stack, x)
    tuner = TUNERS.build(cfg, default_args=dict(stack=stack)).eval()
    torch.testing.assert_close(tuner(x).hidden, ref, atol=ATOL, rtol=0)
    randomize_trainable(tuner)
    out = tuner(x).hidden
    assert out.shape == ref.shape and not torch.allclose(out, ref, atol=1e-4)
    out.square().mean().backward()
    assert all(p.grad is not None for p in trainable_parameters(tuner).values())
    assert all(p.grad is None for p in tuner.stack.parameters() if not p.requires_grad)


def test_prompt_shapes_and_stripping():
    stack = token_stack()
    ids, pad = token_batch()
    ref = frozen_output(stack, ids, pad)
    for cfg in (TOKEN_CONFIGS['prompt'], TOKEN_CONFIGS['prompt_deep']):
        tuner = TUNERS.build(cfg, default_args=dict(stack=copy.deepcopy(stack))).eval()
        out = tuner(ids, pad, return_intermediates=True)
        assert out.hidden.shape == ref.shape == (2, 7, D)
        assert [h.shape for h in out.intermediates] == [(2, 7, D)] * L
        assert not torch.allclose(out.hidden, ref, atol=1e-4)   # prompts change the output by construction


def test_prompt_masks_respect_padding():
    """A padded sample gives the same output as the same sample unpadded, for
    the key-padding mask and for HF 4-D additive and boolean masks."""
    ids, pad = token_batch()
    outs = []
    for style in ('kpm', 'hf_additive', 'hf_bool'):
        tuner = PromptTuning(token_stack(mask_style=style), num_tokens=3, mode='deep').eval()
        torch.manual_seed(5)
        tuner.reset_parameters()
        full = tuner(ids, pad).hidden
        alone = tuner(ids[1:, :5]).hidden
        torch.testing.assert_close(full[1, :5], alone[0], atol=ATOL, rtol=0)
        outs.append(full)
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(outs[0], outs[2], atol=ATOL, rtol=0)


def test_extend_square_attention_mask():
    keep = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)          # True = attend
    square = keep[:, None, None, :].expand(2, 1, 4, 4)
    extended = extend_attention_mask(square, 2, 4, 2)
    expected = torch.cat([torch.ones(2, 2, dtype=torch.bool), keep], 1)[:, None, None, :].expand(2, 1, 6, 6)
    assert torch.equal(extended, expected)
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~square, torch.finfo(torch.float32).min)
    ext = extend_attention_mask(additive, 2, 4, 2)
    assert torch.equal(ext == 0, expected)
    assert torch.equal(extend_attention_mask(keep.long(), 2, 4, 2)[:, :2], torch.ones(2, 2, dtype=torch.long))


def test_prepend_tokens_unknown_context_entry():
    stack = token_stack()
    hidden, context = stack.embed(*token_batch())
    prompts = torch.zeros(2, 3, D)
    _, ctx = prepend_tokens(stack, hidden, context, prompts)
    assert ctx['key_padding_mask'].shape == (2, 10) and not ctx['key_padding_mask'][:, :3].any()
    assert context['key_padding_mask'].shape == (2, 7)      # the input context is left alone
    context['reference_points'] = torch.zeros(2, 7, 2)
    with pytest.raises(ValueError, match='reference_points'):
        prepend_tokens(stack, hidden, context, prompts)
    _, ctx = prepend_tokens(stack, hidden, context, prompts, dict(reference_points='zeros'))
    assert ctx['reference_points'].shape == (2, 10, 2)
    context['memory'] = torch.zeros(2, 7, D)                # memories are not per query token
    prepend_tokens(stack, hidden, context, prompts, dict(reference_points='keep'))


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize('key', list(TOKEN_CONFIGS))
def test_gradients_reach_only_tuner_params(key):
    stack = token_stack()
    ids, pad = token_batch()
    tuner = TUNERS.build(TOKEN_CONFIGS[key], default_args=dict(stack=stack)).train()
    randomize_trainable(tuner) if key not in ('full', 'bitfit') else None
    head = nn.Linear(D, 1)
    out = tuner(ids, pad).hidden
    head(out).sum().backward()
    assert head.weight.grad is not None
    trainable = trainable_parameters(tuner)
    for name, p in tuner.named_parameters():
        if name in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    if key == 'linear_probe':
        assert not trainable and not out.requires_grad
    else:
        assert trainable


def test_bitfit_trains_only_biases():
    tuner = BitFit(token_stack())
    names = set(trainable_parameters(tuner))
    assert names and all(n.endswith('bias') for n in names)
    assert 'stack.layers.0.self_attn.in_proj_bias' in names and 'stack.layers.0.norm1.bias' in names
    no_norm = BitFit(token_stack(), include_norm_bias=False)
    assert not any('norm' in n for n in trainable_parameters(no_norm))
    only = BitFit(token_stack(), target_modules=['linear1'], layers=[-1])
    assert set(trainable_parameters(only)) == {'stack.layers.2.linear1.bias'}


# ---------------------------------------------------------------- counts
def test_parameter_counts_by_hand():
    assert STACK_PARAMS == 8016 and n_trainable(token_stack()) == STACK_PARAMS
    counts = {
        'full': STACK_PARAMS,
        'linear_probe': 0,
        'lora': L * 2 * (4 * D + D * 4),                            # q, v parts of each MHA, rank 4
        'lora_all': L * (4 * (2 * D + D * 2) + (2 * D + FFN * 2) + (2 * FFN + D * 2)),
        'adapter_layers': L * (4 * D + 4 + D * 4 + D),
        'adapter_modules': L * ((4 * D + 4 + D * 4 + D) + (4 * FFN + 4 + D * 4 + D)),
        'bitfit': L * (3 * D + D + FFN + D + 2 * D) + D,
        'prompt': 3 * D,
        'prompt_deep': L * 2 * D,
    }
    for key, expected in counts.items():
        tuner = TUNERS.build(TOKEN_CONFIGS[key], default_args=dict(stack=token_stack()))
        assert n_trainable(tuner) == expected, key
        extra = 0 if key in ('full', 'linear_probe', 'bitfit') else expected
        assert parameter_report(tuner) == (f'trainable params: {expected:,d} || all params: '
                                           f'{STACK_PARAMS + extra:,d} || trainable%: '
                                           f'{100 * expected / (STACK_PARAMS + extra):.4f}')
    assert n_trainable(Adapter(token_stack(), reduction=4)) == L * (4 * D + 4 + D * 4 + D)


# ---------------------------------------------------------------- save / load
@pytest.mark.parametrize('key', list(TOKEN_CONFIGS))
def test_save_load_round_trip(key, tmp_path):
    ids, pad = token_batch()
    cfg = TOKEN_CONFIGS[key]
    tuner = TUNERS.build(cfg, default_args=dict(stack=token_stack(seed=0))).eval()
    randomize_trainable(tuner)
    expected = tuner(ids, pad).hidden
    path = str(tmp_path / 'tuner.safetensors')
    save_trainable(tuner, path, getattr(tuner, 'tuner_cfg', cfg))
    stack = token_stack(seed=0)                        # the same frozen weights ...
    torch.manual_seed(123)                             # ... and other tuner weights
    fresh = TUNERS.build(cfg, default_args=dict(stack=stack)).eval()
    if key not in ('linear_probe', 'bitfit', 'full'):
        assert not torch.equal(fresh(ids, pad).hidden, expected)
    load_trainable(fresh, path)
    assert torch.equal(fresh(ids, pad).hidden, expected)


def test_load_rejects_other_rank(tmp_path):
    path = str(tmp_path / 'lora.safetensors')
    save_trainable(LoRA(token_stack(), rank=4), path)
    with pytest.raises(ValueError, match='shape'):
        load_trainable(LoRA(token_stack(), rank=8), path)


# ---------------------------------------------------------------- LoRA specifics
@pytest.mark.parametrize('cfg', [dict(rank=4), dict(rank=2, target_modules='all-linear'),
                                 dict(rank=3, target_modules=r'layers\.[02]\.(linear1|self_attn\.out_proj)'),
                                 dict(rank=2, use_rslora=True, mha_parts=['k', 'out'], target_modules=['self_attn'])])
def test_lora_merge_unmerge_unload(cfg):
    stack = token_stack()
    names = sorted(n for n, _ in stack.named_parameters())
    ids, pad = token_batch()
    tuner = LoRA(stack, **cfg).eval()
    randomize_trainable(tuner)
    before = tuner(ids, pad).hidden
    assert not torch.allclose(before, frozen_output(token_stack(), ids, pad), atol=1e-4)
    frozen_w = stack.layers[0].self_attn.in_proj_weight.clone()
    tuner.merge()
    torch.testing.assert_close(tuner(ids, pad).hidden, before, atol=ATOL, rtol=0)
    tuner.unmerge()
    torch.testing.assert_close(stack.layers[0].self_attn.in_proj_weight, frozen_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(tuner(ids, pad).hidden, before, atol=ATOL, rtol=0)
    plain = tuner.merge_and_unload()
    assert sorted(n for n, _ in plain.named_parameters()) == names     # original names, no LoRA left
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in plain.modules())
    torch.testing.assert_close(plain(ids, pad).hidden, before, atol=ATOL, rtol=0)


def test_lora_keeps_frozen_parameter_names():
    stack = token_stack()
    state = stack.state_dict()
    tuner = LoRA(stack, target_modules='all-linear')
    missing, unexpected = tuner.stack.load_state_dict(state, strict=False)
    assert not unexpected and missing and all('.lora.' in k for k in missing)
    assert 'stack.layers.0.self_attn.lora.lora_A_q' in trainable_parameters(tuner)
    assert 'stack.layers.0.linear1.lora.lora_B' in trainable_parameters(tuner)


def test_lora_on_torch_encoder_layer_fast_path():
    """nn.TransformerEncoderLayer skips its sub-modules' forwards on its
    inference fast path; hooks turn that path off, so LoRA still applies."""
    stack = token_stack(torch_layers=True)
    ids, pad = token_batch()
    tuner = LoRA(stack, target_modules='all-linear', rank=2).eval()
    randomize_trainable(tuner)
    with_grad = tuner(ids, pad).hidden
    with torch.no_grad():
        no_grad = tuner(ids, pad).hidden
    assert not torch.allclose(no_grad, frozen_output(token_stack(torch_layers=True), ids, pad), atol=1e-4)
    torch.testing.assert_close(no_grad[0], with_grad[0].detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(no_grad[1, :5], with_grad[1, :5].detach(), atol=ATOL, rtol=0)


def test_lora_mmcv_multihead_attention():
    mmcv_transformer = pytest.importorskip('mmcv.cnn.bricks.transformer')
    torch.manual_seed(0)
    block = nn.ModuleDict(dict(attn_block=mmcv_transformer.MultiheadAttention(16, 2, batch_first=True),
                               ffn=mmcv_transformer.FFN(16, 32))).eval()
    x = torch.randn(2, 5, 16)

    def run(m):
        return m['ffn'](m['attn_block'](x))

    with torch.no_grad():
        ref = run(block)
    names = inject_lora(block, ['attn_block'], rank=2)
    assert names == ['attn_block']
    assert isinstance(block['attn_block'].attn.lora, nn.Module)
    torch.testing.assert_close(run(block), ref, atol=ATOL, rtol=0)
    with torch.no_grad():
        block['attn_block'].attn.lora.lora_B_q.normal_()
        block['attn_block'].attn.lora.lora_B_out.normal_()
    changed = run(block)
    assert not torch.allclose(changed, ref, atol=1e-4)
    changed.sum().backward()
    assert block['attn_block'].attn.lora.lora_A_v.grad is not None
    # out_proj named on its own is the MHA's 'out' part (nn.MultiheadAttention never calls out_proj.forward)
    torch.manual_seed(0)
    other = mmcv_transformer.MultiheadAttention(16, 2, batch_first=True).eval()
    with torch.no_grad():
        ref = other(x)
    inject_lora(other, ['out_proj'], rank=2)
    assert other.attn.lora.parts == ('out',)
    with torch.no_grad():
        other.attn.lora.lora_B_out.normal_()
    assert not torch.allclose(other(x), ref, atol=1e-4)


def test_deepcopy_keeps_hooks_separate():
    tuner = LoRA(token_stack(), target_modules='all-linear').eval()
    adapters = Adapter(token_stack(), dim=2, target_modules=['linear2']).eval()
    ids, pad = token_batch()
    for t in (tuner, adapters):
        base = t(ids, pad).hidden.detach()
        twin = copy.deepcopy(t)
        randomize_trainable(twin)
        torch.testing.assert_close(t(ids, pad).hidden, base, atol=0, rtol=0)
        assert not torch.allclose(twin(ids, pad).hidden, base, atol=1e-4)


def test_lora_layers_restriction():
    tuner = LoRA(token_stack(), target_modules=['linear1'], layers=[0, -1])
    assert tuner.targeted == ['layers.0.linear1', 'layers.2.linear1']
    assert not hasattr(tuner.stack.layers[1].linear1, 'lora')


# ---------------------------------------------------------------- other tuners
def test_linear_probe_no_grad_and_eval():
    stack = conv_stack()
    probe = LinearProbe(stack).train()
    assert not stack.training and not stack.layers[0].bn1.training
    x = images()
    assert not probe(x).hidden.requires_grad
    stem = nn.Conv2d(3, 3, 1)
    out = probe(stem(x)).hidden                         # a trained module before the stack: keep the graph
    out.sum().backward()
    assert stem.weight.grad is not None and all(p.grad is None for p in stack.parameters())


def test_norm_eval_keeps_batchnorm_statistics():
    stack = conv_stack()
    stats = stack.layers[0].bn1.running_mean.clone()
    tuner = LoRA(stack, target_modules=['conv2'], rank=2).train()
    tuner(images())
    assert torch.equal(stack.layers[0].bn1.running_mean, stats)
    full = FullFineTune(conv_stack()).train()
    full(images())
    assert not torch.equal(full.stack.layers[0].bn1.running_mean, stats)


def test_full_finetune_unfreezes_and_frozen_modules():
    stack = token_stack().requires_grad_(False)
    assert n_trainable(FullFineTune(stack)) == STACK_PARAMS
    tuner = FullFineTune(token_stack(), frozen_modules=['embed_tokens', 'pos_embed'])
    assert tuner.frozen == ['embed_tokens']        # pos_embed is a parameter, not a module
    assert n_trainable(tuner) == STACK_PARAMS - 50 * D
    assert FullFineTune.trains_backbone and not LoRA.trains_backbone


def test_adapter_inject_function_on_one_layer():
    stack = token_stack()
    layer = stack.layers[-1]
    names = inject_adapters(layer, ['self_attn', 'linear2'], dim=3, prefix='layers.2')
    assert names == ['layers.2.self_attn', 'layers.2.linear2']
    assert layer.self_attn.adapter.in_dim == D and layer.linear2.adapter.out_dim == D
    ids, pad = token_batch()
    torch.testing.assert_close(stack(ids, pad).hidden, frozen_output(token_stack(), ids, pad), atol=ATOL, rtol=0)


def test_remove_adapters_gives_back_the_frozen_stack():
    stack = token_stack().requires_grad_(False)
    inject_adapters(stack, ['linear2'], dim=3)
    randomize_trainable(stack)                   # the adapters now change the output
    ids, pad = token_batch()
    frozen = frozen_output(token_stack(), ids, pad)
    assert not torch.allclose(stack(ids, pad).hidden, frozen, atol=1e-3)
    remove_adapters(stack)
    assert not any(hasattr(m, 'adapter') for m in stack.modules()) and n_trainable(stack) == 0
    torch.testing.assert_close(stack(ids, pad).hidden, frozen, atol=ATOL, rtol=0)


def test_build_tuned_stacks_with_baselines():
    stacks = dict(text=token_stack(), image=conv_stack())
    tuned = build_tuned_stacks(stacks, dict(type='LoRA', rank=2), default_targets=('text',))
    assert isinstance(tuned['text'], LoRA) and n_trainable(tuned['image']) == 0
    tuned = build_tuned_stacks(dict(text=token_stack(), image=conv_stack()), dict(type='FullFineTune'), ('text',))
    assert all(isinstance(t, FullFineTune) for t in tuned.values())


# ---------------------------------------------------------------- errors
def test_errors_name_the_option():
    with pytest.raises(ValueError, match=r"target_modules=\['nope'\].*'linear1'"):
        LoRA(token_stack(), target_modules=['nope'])
    with pytest.raises(ValueError, match='does not support'):
        LoRA(token_stack(), target_modules=['norm1'])
    with pytest.raises(IndexError, match='layers: layer index 3 is out of range'):
        LoRA(token_stack(), layers=[3])
    with pytest.raises(ValueError, match=r'target_modules=None \(the default.*matched no module'):
        LoRA(conv_stack())                                 # default targets are attention projections
    with pytest.raises(ValueError, match="layout='feature_map'"):
        PromptTuning(conv_stack())
    with pytest.raises(IndexError, match='layers'):
        PromptTuning(token_stack(), mode='deep', layers=[0, 7])
    with pytest.raises(ValueError, match="mode='deep'"):
        PromptTuning(token_stack(), layers=[1])
    with pytest.raises(ValueError, match='target_modules'):
        Adapter(token_stack(), target_modules=r'.*missing')
    with pytest.raises(ValueError, match='not both'):
        Adapter(token_stack(), dim=4, reduction=4)
    with pytest.raises(ValueError, match='placement'):
        Adapter(token_stack(), placement='diagonal')
    with pytest.raises(ValueError, match='no bias'):
        BitFit(conv_stack(), target_modules=['conv1'])
    stack = token_stack()
    inject_lora(stack, ['linear1'])
    with pytest.raises(ValueError, match='already has LoRA'):
        inject_lora(stack, ['linear1'])


@pytest.mark.parametrize('cfg, match', [
    (dict(type='LoRA', rank=0), r'LoRA: rank=0: must be an integer >= 1'),
    (dict(type='LoRA', rank=2.5), r'LoRA: rank=2\.5: must be an integer >= 1'),
    (dict(type='LoRA', rnak=2), r"LoRA: rnak: unknown option; did you mean 'rank'\?"),
    (dict(type='LoRA', dropout=1.0), r'LoRA: dropout=1\.0: must be a number >= 0 and < 1'),
    (dict(type='LoRA', mha_parts=['q', 'x']), r"LoRA: mha_parts=\['q', 'x'\]: must be a non-empty list of"),
    (dict(type='LoRA', target_modules=[]), r'LoRA: target_modules=\[\]: must be a regex string'),
    (dict(type='Adapter', reduction=0), r'Adapter: reduction=0: must be a number > 0'),
    (dict(type='Adapter', reduction=100), r'Adapter: reduction=100 leaves 16 // 100 = 0 channels'),
    (dict(type='Adapter', activation='swish'), r"Adapter: activation='swish': must be one of"),
    (dict(type='PromptTuning', num_tokens=0), r'PromptTuning: num_tokens=0: must be an integer >= 1'),
    (dict(type='BitFit', include_norm_bias='yes'), r"BitFit: include_norm_bias='yes': must be True or False"),
    (dict(type='FullFineTune', frozen_module=['x']), r"FullFineTune: frozen_module: unknown option; did you mean "
                                                     r"'frozen_modules'\?"),
    (dict(type='LinearProbe', stack_eval=False), r'FrozenStack: stack_eval: unknown option.*\[\'no_grad\'\]'),
])
def test_bad_option_values_and_names(cfg, match):
    with pytest.raises(ValueError, match=match):
        TUNERS.build(cfg, default_args=dict(stack=token_stack()))


def test_options_are_validated_once_and_kept():
    tuner = TUNERS.build(dict(type='Adapter', reduction=4, placement='parallel'), default_args=dict(stack=token_stack()))
    assert tuner.tuner_cfg == dict(type='Adapter', norm_eval=True, dim=None, reduction=4, placement='parallel',
                                   scale=1.0, activation='relu', dropout=0.0, target_modules=None, layers=None)
    rebuilt = TUNERS.build(tuner.tuner_cfg, default_args=dict(stack=token_stack()))
    assert rebuilt.options == tuner.options


# ---------------------------------------------------------------- Hugging Face BERT
def test_lora_on_hugging_face_bert_example():
    transformers = pytest.importorskip('transformers')
    from sherl_mm.backbones import HFEncoderStack
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
        add_pooling_layer=False).eval()
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        ref = bert(ids, attention_mask=mask).last_hidden_state
    # --- the README example ---
    tuner = LoRA(HFEncoderStack(model=bert), rank=8, alpha=16, target_modules=['query', 'value'])
    report = parameter_report(tuner)            # trainable params: 2,048 || all params: ...
    hidden = tuner(ids, mask).hidden            # (B, T, 32) = bert(...).last_hidden_state
    # ---
    assert report.startswith('trainable params: 2,048 ||')
    torch.testing.assert_close(hidden, ref, atol=ATOL, rtol=0)
    randomize_trainable(tuner)
    hidden = tuner(ids, mask).hidden
    assert not torch.allclose(hidden, ref, atol=1e-4)
    # the hooks live on BERT's own modules: its own forward is tuned too
    torch.testing.assert_close(bert(ids, attention_mask=mask).last_hidden_state, hidden, atol=ATOL, rtol=0)
    prompt = PromptTuning(HFEncoderStack(model=copy.deepcopy(bert)), num_tokens=2).eval()
    full = prompt(ids, mask).hidden
    torch.testing.assert_close(full[1, :4], prompt(ids[1:, :4], mask[1:, :4]).hidden[0], atol=ATOL, rtol=0)
