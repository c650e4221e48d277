"""The feature cache (sherl_mm.feature_cache): SHERL's early route and frozen
stacks give the same training result with and without it, no cached layer runs
once cached, stale / foreign / interrupted caches are refused or rebuilt, only
the weights the cached route reads are fingerprinted, the runner hook."""
import json
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from _toy_stacks import ToyDecoderStack, ToyTokenStack, decoder_batch

from sherl_mm.datasets import GROUNDING_META_KEYS
from sherl_mm.engine.hooks import FrozenFeatureCacheHook
from sherl_mm.feature_cache import MANIFEST, FeatureCacheMixin, batch_sample_keys, cacheable_modules
from sherl_mm.registry import HOOKS, TUNERS
from sherl_mm.tuners import SHERL, FrozenStack, LoRA, build_tuned_stacks

N, LENGTH, BATCH = 10, 6, 4


def dataset():
    """N fixed-length token sequences (some padded), labels, keys = indices."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 50, (N, LENGTH), generator=g)
    pad = torch.zeros(N, LENGTH, dtype=torch.bool)
    pad[::3, LENGTH - 2:] = True
    return ids, pad, torch.randint(0, 3, (N,), generator=g)


def build(cache_dir=None, stack_seed=0, pipeline='toy-v1', change=None, **cache_kw):
    """SHERL on a 4-layer stack (late layer: 3); ``change(tuner)`` edits it
    before its cache is opened."""
    torch.manual_seed(stack_seed)
    stack = ToyTokenStack(num_layers=4)
    torch.manual_seed(1)                     # MTSA and head start alike whatever the stack seed
    tuner = SHERL(stack, select_layers=['input', 0, 1])
    if change is not None:
        change(tuner)
    if cache_dir is not None:
        tuner.enable_feature_cache(str(cache_dir), pipeline, **cache_kw)
    return tuner, nn.Linear(16, 3)


def train(tuner, head, epochs, use_keys):
    """Shuffled epochs (same order in every run); the last batch is smaller."""
    ids, pad, labels = dataset()
    opt = torch.optim.Adam([p for p in tuner.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-2)
    tuner.train()
    for epoch in range(epochs):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(epoch))
        for start in range(0, N, BATCH):
            idx = order[start:start + BATCH]
            out = tuner(ids[idx], pad[idx], sample_keys=idx.tolist() if use_keys else None)
            loss = nn.functional.cross_entropy(head(out.hidden.mean(1)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if use_keys:
            tuner.feature_cache.commit()


def count_early_calls(tuner):
    calls = []
    for i in range(tuner.points[0]):
        tuner.stack.layers[i].register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_same_weights_with_and_without_cache(tmp_path):
    plain, plain_head = build()
    train(plain, plain_head, 3, use_keys=False)
    cached, cached_head = build(tmp_path / 'cache')
    train(cached, cached_head, 3, use_keys=True)
    assert len(cached.feature_cache) == N
    for (name, a), b in zip(plain.mtsa.state_dict().items(), cached.mtsa.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name


def test_cached_epoch_skips_early_layers_and_survives_restart(tmp_path):
    tuner, head = build(tmp_path / 'cache')
    calls = count_early_calls(tuner)
    train(tuner, head, 1, use_keys=True)
    assert len(calls) == tuner.points[0] * 3                 # 3 batches, every early layer once each
    calls.clear()
    train(tuner, head, 1, use_keys=True)
    assert not calls
    # a new process (new tuner, same weights and pipeline) reads the committed cache
    again, head = build(tmp_path / 'cache')
    calls = count_early_calls(again)
    train(again, head, 1, use_keys=True)
    assert not calls and len(again.feature_cache) == N


def test_cached_route_matches_eval_route(tmp_path):
    tuner, _ = build(tmp_path / 'cache')
    ids, pad, _ = dataset()
    tuner.eval()
    expect = tuner(ids[:4], pad[:4]).hidden
    first = tuner(ids[:4], pad[:4], sample_keys=[0, 1, 2, 3]).hidden     # computed and written
    loaded = tuner(ids[:4], pad[:4], sample_keys=[0, 1, 2, 3]).hidden    # read back
    assert torch.equal(first, expect) and torch.equal(loaded, expect)


def test_decoder_context_is_cached(tmp_path):
    torch.manual_seed(0)
    tuner = SHERL(ToyDecoderStack()).eval()
    tuner.enable_feature_cache(str(tmp_path), 'dec')
    query_pos, memory, mask = decoder_batch()
    expect = tuner(query_pos, memory, mask).hidden
    tuner(query_pos, memory, mask, sample_keys=['a', 'b'])
    assert torch.equal(tuner(query_pos, memory, mask, sample_keys=['a', 'b']).hidden, expect)
    kinds = {k: v['kind'] for k, v in tuner.feature_cache.entries.items()}
    assert kinds['ctx/memory'] == kinds['ctx/query_pos'] == kinds['ctx/memory_key_padding_mask'] == 'sample'


def fill(tuner, keys=(0, 1)):
    ids, pad, _ = dataset()
    idx = list(keys)
    tuner(ids[idx], pad[idx], sample_keys=idx)
    tuner.feature_cache.commit()


def test_foreign_cache_is_refused_and_rebuilt(tmp_path):
    fill(build(tmp_path)[0])
    with pytest.raises(RuntimeError, match=r'(?s)built for another model.*frozen weights the cached route reads.*'
                                           r'embed_tokens'):
        build(tmp_path, stack_seed=7)
    with pytest.raises(RuntimeError, match=r"pipeline fingerprint: cache 'toy-v1', now 'toy-v2'"):
        build(tmp_path, pipeline='toy-v2')
    with pytest.raises(RuntimeError, match=str(tmp_path)):
        build(tmp_path, pipeline='toy-v2')
    (tmp_path / 'notes.txt').write_text('the user keeps this')
    rebuilt, _ = build(tmp_path, pipeline='toy-v2', rebuild_stale=True)
    fill(rebuilt, keys=[3])
    assert len(rebuilt.feature_cache) == 1
    with open(tmp_path / MANIFEST) as f:
        assert json.load(f)['parts']['pipeline'] == 'toy-v2'
    fill(build(tmp_path, pipeline='toy-v2')[0], keys=[3])   # the rebuilt cache is accepted
    assert (tmp_path / 'notes.txt').read_text() == 'the user keeps this'   # rebuilding removes only cache files


def shift_weight(layer):
    """A change of one frozen weight of ``stack.layers[layer]``."""
    def change(tuner):
        with torch.no_grad():
            tuner.stack.layers[layer].linear1.weight.add_(1.0)
    return change


def test_only_the_early_route_weights_are_fingerprinted(tmp_path):
    fill(build(tmp_path)[0])
    # a late layer changed before the cache is opened: the cached route does not read it, so the cache stays valid
    late, _ = build(tmp_path, change=shift_weight(-1))
    calls = count_early_calls(late)
    fill(late, keys=[0, 1])
    assert not calls                                         # served from the cache
    # an early layer changed: what the cache holds is stale, and it is refused naming the tensor
    with pytest.raises(RuntimeError, match=r'(?s)built for another model.*frozen weights the cached route reads: '
                                           r'1 tensor\(s\) with other values \(e\.g\. \[.layers\.0\.linear1\.weight.\]'):
        build(tmp_path, change=shift_weight(0))


def test_interrupted_builds_are_detected(tmp_path):
    tuner, _ = build(tmp_path)
    ids, pad, _ = dataset()
    tuner(ids[:2], pad[:2], sample_keys=[0, 1])              # shard written, never committed
    with pytest.raises(RuntimeError, match='no manifest.json: an earlier build was interrupted'):
        fill(build(tmp_path)[0])
    rebuilt, _ = build(tmp_path, rebuild_stale=True)
    fill(rebuilt)
    rebuilt(ids[2:4], pad[2:4], sample_keys=[2, 3])          # written after the last commit
    assert len(os.listdir(tmp_path)) == 3
    with pytest.warns(UserWarning, match='written after the last commit'):
        reopened, _ = build(tmp_path)
        fill(reopened, keys=[0, 1])
    assert len(reopened.feature_cache) == 2 and len(os.listdir(tmp_path)) == 2


def test_uncachable_calls_raise(tmp_path):
    tuner, _ = build(tmp_path)
    ids, pad, _ = dataset()
    with pytest.raises(ValueError, match='return_intermediates'):
        tuner(ids[:2], pad[:2], sample_keys=[0, 1], return_intermediates=True)
    with pytest.raises(ValueError, match='the feature cache is not enabled'):
        build()[0](ids[:2], pad[:2], sample_keys=[0, 1])
    with pytest.raises(ValueError, match='non-empty pipeline string'):
        build(tmp_path, pipeline='')
    model = nn.ModuleDict(dict(text=LoRA(ToyTokenStack(num_layers=2)), image=SHERL(ToyTokenStack(num_layers=2))))
    with pytest.raises(ValueError, match=r"'text' is not a cacheable stack of the model; cacheable: \['image'\]"):
        cacheable_modules(model, ['text'])
    tuner.stack.embed = lambda i, p: (tuner.stack.embed_tokens(i), {'key_padding_mask': p, 'spans': [(0, 1)]})
    with pytest.raises(TypeError, match="context entry 'spans' is a list, which cannot be cached"):
        tuner(ids[:2], pad[:2], sample_keys=[0, 1])


def test_frozen_stack_output_is_cached(tmp_path):
    """A frozen stack (FrozenStack, e.g. a model's image backbone) caches its
    whole output; the stack is not run for a cached batch."""
    torch.manual_seed(0)
    frozen = FrozenStack(ToyTokenStack(num_layers=3)).eval()
    ids, pad, _ = dataset()
    with torch.no_grad():        # what the cache computes: eval mode, no graph
        expect = frozen(ids[:4], pad[:4]).hidden
    frozen.enable_feature_cache(str(tmp_path), 'toy')
    calls = []
    frozen.stack.layers[0].register_forward_hook(lambda *_: calls.append(1))
    first = frozen(ids[:4], pad[:4], sample_keys=[0, 1, 2, 3]).hidden
    again = frozen(ids[[2, 0]], pad[[2, 0]], sample_keys=[2, 0]).hidden
    assert torch.equal(first, expect) and torch.equal(again, expect[[2, 0]]) and len(calls) == 1
    assert frozen(ids[:4], pad[:4]).hidden.requires_grad is False    # without keys: the plain route, as before


def test_linear_probe_and_untargeted_stacks_are_the_cacheable_frozen_stack():
    probe = TUNERS.build(dict(type='LinearProbe'), default_args=dict(stack=ToyTokenStack(num_layers=2)))
    tuned = build_tuned_stacks(dict(text=ToyTokenStack(num_layers=2), image=ToyTokenStack(num_layers=2)),
                               dict(type='LoRA', rank=2), default_targets=('text',))
    assert type(probe) is type(tuned['image']) is FrozenStack
    assert isinstance(probe, FeatureCacheMixin) and not isinstance(tuned['text'], FeatureCacheMixin)
    assert sorted(cacheable_modules(tuned)) == ['image']


def train_frozen_stack(cache_dir=None, epochs=3):
    """A head trained on a frozen stack WITH dropout (p = 0.5), with or without
    the cache; returns the head's weights."""
    torch.manual_seed(0)
    probe = FrozenStack(ToyTokenStack(num_layers=2, dropout=0.5))
    head = nn.Linear(16, 3)
    if cache_dir is not None:
        probe.enable_feature_cache(str(cache_dir), 'toy')
    ids, pad, labels = dataset()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    probe.train()
    for epoch in range(epochs):
        for start in range(0, N, BATCH):
            idx = torch.arange(start, min(start + BATCH, N))
            out = probe(ids[idx], pad[idx], sample_keys=idx.tolist() if cache_dir is not None else None)
            loss = nn.functional.cross_entropy(head(out.hidden.mean(1)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.state_dict()


def test_frozen_stack_with_dropout_trains_the_same_with_and_without_cache(tmp_path):
    """Frozen means eval mode in training too: the stack's dropout is off
    whether its output is cached or computed, so both runs agree exactly."""
    plain, cached = train_frozen_stack(), train_frozen_stack(tmp_path)
    for name, value in plain.items():
        assert torch.equal(cached[name], value), name


def test_batch_sample_keys():
    samples = [SimpleNamespace(metainfo=dict(sample_idx=i)) for i in (4, 5)]
    assert batch_sample_keys(dict(inputs=None, data_samples=samples), 'sample_idx') == [4, 5]
    assert batch_sample_keys(dict(sample_idx=torch.tensor([7, 8])), 'sample_idx') == [7, 8]
    with pytest.raises(KeyError, match="no 'img_id' in its metainfo"):
        batch_sample_keys(dict(data_samples=samples), 'img_id')


# ------------------------------------------------------------------ through the Runner (FrozenFeatureCacheHook)
from test_grounding_tools import REPO, data_options, tiny_model_options, tiny_refcoco  # noqa: E402,F401


def cached_run(root, work_dir, cache: bool, epochs: int = 3, pipeline=None, hook_type='FrozenFeatureCacheHook',
               **hook):
    """configs/sherl_mdetr_refcoco.py at tiny size without dropout, trained by
    tools/train.py on a deterministic (fixed-size) pipeline, with or without
    the feature cache hook (``hook_type``); returns the runner."""
    from mmengine.config import Config

    from _tools import load_tool
    from sherl_mm.engine import run_train
    cfg_path = os.path.join(REPO, 'configs', 'sherl_mdetr_refcoco.py')
    cfg = Config.fromfile(cfg_path)
    tiny_model_options(cfg)
    cfg.model.text_encoder.config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    for name in ('encoder', 'decoder'):
        cfg.model[name].dropout = 0.0
    cfg.model.update(text_dropout=0.0, text_padding='max_length')
    options = data_options(root)
    fixed = options['val_dataloader']['dataset']['pipeline']
    options['train_dataloader']['dataset']['pipeline'] = pipeline or fixed
    options.update({'model': dict(_delete_=True, **cfg.model.to_dict()), 'train_cfg.max_epochs': epochs,
                    'train_cfg.val_interval': epochs, 'randomness': dict(seed=0),
                    'custom_hooks': [dict(type=hook_type, **hook)] if cache else []})
    args = load_tool('train.py').parse_args([cfg_path, '--work-dir', str(work_dir)])
    args.cfg_options = options
    return run_train(args)


def trainable_state(runner):
    return {n: p.detach().clone() for n, p in runner.model.named_parameters() if p.requires_grad}


def test_hook_trains_the_same_weights_as_without_cache(tiny_refcoco, tmp_path):
    plain = trainable_state(cached_run(tiny_refcoco, tmp_path / 'plain', cache=False))
    runner = cached_run(tiny_refcoco, tmp_path / 'cached', cache=True)
    cached = trainable_state(runner)
    assert plain.keys() == cached.keys() and any('mtsa' in n for n in plain)
    for name, value in plain.items():
        torch.testing.assert_close(cached[name], value, rtol=0, atol=1e-5, msg=name)
    for stack in ('image', 'text', 'encoder', 'decoder'):
        with open(tmp_path / 'cached' / 'feature_cache' / f'stacks.{stack}' / MANIFEST) as f:
            assert sum(len(keys) for keys in json.load(f)['shards'].values()) == 8    # every training sample


def test_hook_refuses_a_random_pipeline_also_under_its_former_name(tiny_refcoco, tmp_path):
    from mmengine.config import Config
    assert HOOKS.get('EarlyRouteCacheHook') is HOOKS.get('FrozenFeatureCacheHook') is FrozenFeatureCacheHook
    demo = Config.fromfile(os.path.join(REPO, 'configs', '_base_', 'datasets', 'grounding_demo.py'))
    with pytest.raises(ValueError, match=r"train_dataloader\.dataset\.pipeline\[2\] is 'RandomChoiceResize'"):
        cached_run(tiny_refcoco, tmp_path, cache=True, epochs=1, pipeline=demo.train_pipeline,
                   hook_type='EarlyRouteCacheHook')


def test_hook_refuses_a_cache_of_another_pipeline_and_rebuilds_on_request(tiny_refcoco, tmp_path):
    cached_run(tiny_refcoco, tmp_path, cache=True, epochs=1, stacks=['image'])
    other = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
             dict(type='Resize', scale=(64, 64), keep_ratio=True), dict(type='Pad', size=(64, 64)),
             dict(type='PackDetInputs', meta_keys=GROUNDING_META_KEYS)]
    with pytest.raises(RuntimeError, match=r'(?s)stacks\.image was built for another model or data pipeline.*'
                                           r'pipeline fingerprint'):
        cached_run(tiny_refcoco, tmp_path, cache=True, epochs=1, pipeline=other, stacks=['image'])
    cached_run(tiny_refcoco, tmp_path, cache=True, epochs=1, pipeline=other, stacks=['image'], rebuild_stale=True)
