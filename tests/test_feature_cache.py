"""SHERL's early-route feature cache: same training result with and without
it, no early layer runs once cached, stale / foreign / interrupted caches are
refused or rebuilt, the runner hook."""
import json
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _toy_stacks import ToyDecoderStack, ToyTokenStack, decoder_batch  # noqa: E402

from sherl_mm.hooks import EarlyRouteCacheHook, batch_sample_keys  # noqa: E402
from sherl_mm.tuners import SHERL  # noqa: E402
from sherl_mm.tuners.feature_cache import MANIFEST  # noqa: E402

N, LENGTH, BATCH = 10, 6, 4


def dataset():
    """N fixed-length token sequences (some padded), labels, keys = indices."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 50, (N, LENGTH), generator=g)
    pad = torch.zeros(N, LENGTH, dtype=torch.bool)
    pad[::3, LENGTH - 2:] = True
    return ids, pad, torch.randint(0, 3, (N,), generator=g)


def build(cache_dir=None, stack_seed=0, pipeline='toy-v1', **cache_kw):
    torch.manual_seed(stack_seed)
    stack = ToyTokenStack(num_layers=4)
    cache = None if cache_dir is None else dict(dir=str(cache_dir), pipeline_fingerprint=pipeline, **cache_kw)
    torch.manual_seed(1)                     # MTSA and head start alike whatever the stack seed
    tuner = SHERL(stack, select_layers=['input', 0, 1], feature_cache=cache)
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
    tuner = SHERL(ToyDecoderStack(), feature_cache=dict(dir=str(tmp_path), pipeline_fingerprint='dec')).eval()
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
    other_weights, _ = build(tmp_path, stack_seed=7)
    with pytest.raises(RuntimeError, match=r'(?s)built for another model.*frozen early-route weights.*embed_tokens'):
        fill(other_weights)
    other_pipeline, _ = build(tmp_path, pipeline='toy-v2')
    with pytest.raises(RuntimeError, match=r"pipeline fingerprint: cache 'toy-v1', now 'toy-v2'"):
        fill(other_pipeline)
    with pytest.raises(RuntimeError, match=str(tmp_path)):
        fill(build(tmp_path, pipeline='toy-v2')[0])
    rebuilt, _ = build(tmp_path, pipeline='toy-v2', rebuild_stale=True)
    fill(rebuilt, keys=[3])
    assert len(rebuilt.feature_cache) == 1
    with open(tmp_path / MANIFEST) as f:
        assert json.load(f)['parts']['pipeline'] == 'toy-v2'
    fill(build(tmp_path, pipeline='toy-v2')[0], keys=[3])   # the rebuilt cache is accepted


def test_late_layer_weights_are_not_fingerprinted(tmp_path):
    fill(build(tmp_path)[0])
    tuner, _ = build(tmp_path)
    with torch.no_grad():
        tuner.stack.layers[-1].linear1.weight.add_(1.0)      # a late layer: the cached route does not read it
    fill(tuner, keys=[0, 1])


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
    with pytest.raises(ValueError, match='feature_cache is not configured'):
        build()[0](ids[:2], pad[:2], sample_keys=[0, 1])
    with pytest.raises(ValueError, match='pipeline_fingerprint'):
        build(tmp_path, pipeline='')
    tuner.stack.embed = lambda i, p: (tuner.stack.embed_tokens(i), {'key_padding_mask': p, 'spans': [(0, 1)]})
    with pytest.raises(TypeError, match="context entry 'spans' is a list, which cannot be cached"):
        tuner(ids[:2], pad[:2], sample_keys=[0, 1])


def test_hook_sets_keys_in_training_only(tmp_path):
    tuner, _ = build(tmp_path)
    runner = SimpleNamespace(model=nn.ModuleDict(dict(encoder=tuner, other=build()[0])))
    hook = EarlyRouteCacheHook(key='sample_idx')
    hook.before_train(runner)
    assert hook.modules == [tuner]
    samples = [SimpleNamespace(metainfo=dict(sample_idx=i)) for i in (4, 5)]
    hook.before_train_iter(runner, 0, dict(inputs=None, data_samples=samples))
    assert tuner.sample_keys == [4, 5]
    ids, pad, _ = dataset()
    tuner(ids[4:6], pad[4:6])
    hook.after_train_iter(runner, 0)
    assert tuner.sample_keys is None
    hook.after_train_epoch(runner)
    assert os.path.isfile(tmp_path / MANIFEST) and len(tuner.feature_cache) == 2
    assert batch_sample_keys(dict(sample_idx=torch.tensor([7, 8])), 'sample_idx') == [7, 8]
    with pytest.raises(KeyError, match="no 'img_id' in its metainfo"):
        batch_sample_keys(dict(data_samples=samples), 'img_id')
    with pytest.raises(ValueError, match='no SHERL stack with feature_cache'):
        EarlyRouteCacheHook().before_train(SimpleNamespace(model=build()[0]))
