"""Grounding data: the demo builder, RefCOCODataset + pipelines (MDETR format),
RandomSizeCrop, the RefExpAccuracy metric, validation errors, base configs."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

import sherl_mm
from sherl_mm.datasets import AnnotationError, GROUNDING_META_KEYS, RefCOCODataset
from sherl_mm.demo.grounding import (ANIMALS, DATA_VERSION, GRID, OBJECTS, REPHRASINGS, VARIANTS,
                                              build_grounding_demo, emoji_name, read_build_stamp, reliable_colour,
                                              resolve_expression)
from sherl_mm.datasets.transforms import RandomSizeCrop
from sherl_mm.evaluation import RefExpAccuracy, box_overlaps
from sherl_mm.registry import DATASETS, METRICS, TRANSFORMS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG_DIR = osp.join(REPO, 'configs', '_base_', 'datasets')
TINY = dict(num_train=12, num_val=6, num_test=4, image_size=96)


@pytest.fixture(scope='module', autouse=True)
def _scope():
    sherl_mm.register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('sherl_mm'):
        yield


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('demo_grounding'))
    build_grounding_demo(out, seed=3, variants=VARIANTS, **TINY)
    return out


def _load(path):
    with open(path) as f:
        return json.load(f)


def _dir_digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            h.update(osp.relpath(osp.join(dirpath, name), root).encode())
            with open(osp.join(dirpath, name), 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def _demo_cfg(name, demo_root):
    cfg = Config.fromfile(osp.join(CFG_DIR, name))
    variant = 'source' if 'source' in name else 'target'
    root = osp.join(demo_root, variant) + '/'
    cfg.train_dataloader.dataset.data_root = root
    cfg.val_dataloader.dataset.data_root = root
    for d in cfg.test_dataloader.dataset.datasets:
        d.data_root = root
    return cfg


# ---------------------------------------------------------------------------------------------- demo builder

def test_demo_files_and_format(demo_dir):
    for variant in VARIANTS:
        for split, n in dict(train=12, val=6, testA=4, testB=4).items():
            raw = _load(osp.join(demo_dir, variant, f'finetune_refcoco_{split}.json'))
            assert len(raw['images']) == len(raw['annotations']) == n
            for img, ann in zip(raw['images'], raw['annotations']):
                assert set(img) >= {'file_name', 'height', 'width', 'id', 'caption', 'dataset_name',
                                    'tokens_negative', 'original_id'}
                assert set(ann) >= {'image_id', 'bbox', 'category_id', 'tokens_positive', 'original_id', 'area',
                                    'iscrowd', 'id'}
                assert ann['image_id'] == img['id'] and img['dataset_name'] == f'demo_{variant}'
                assert min(img['height'], img['width']) == 96
                x, y, w, h = ann['bbox']
                assert 0 <= x and 0 <= y and w > 0 and h > 0
                assert x + w <= img['width'] and y + h <= img['height']
                for s, e in ann['tokens_positive'] + img['tokens_negative']:
                    assert 0 <= s < e <= len(img['caption'])
                assert osp.isfile(osp.join(demo_dir, variant, 'images', img['file_name']))
    assert osp.isfile(osp.join(demo_dir, 'ATTRIBUTION.txt'))


def test_demo_expressions_unique_and_unambiguous(demo_dir):
    for variant in VARIANTS:
        for split in ('train', 'val', 'testA', 'testB'):
            raw = _load(osp.join(demo_dir, variant, f'finetune_refcoco_{split}.json'))
            scenes = {s['file_name']: s for s in _load(osp.join(demo_dir, variant, f'scenes_{split}.json'))['scenes']}
            anns = {a['image_id']: a for a in raw['annotations']}
            per_image = defaultdict(list)
            for img in raw['images']:
                per_image[img['file_name']].append(img['caption'])
                scene = scenes[img['file_name']]
                expr = next(e for e in scene['expressions'] if e['image_id'] == img['id'])
                assert expr['caption'] == img['caption']
                # the structured form picks out exactly the annotated object
                assert resolve_expression(expr['spec'], scene['objects']) == [expr['referent']]
                ref = scene['objects'][expr['referent']]
                x0, y0, x1, y1 = ref['box']
                assert anns[img['id']]['bbox'] == [x0, y0, x1 - x0, y1 - y0]
                kinds = [o['codepoint'] for o in scene['objects']]
                span = img['caption'][slice(*anns[img['id']]['tokens_positive'][0])]
                if variant == 'target':   # other words (test_demo_rephrasings_avoid_the_names)
                    assert span in REPHRASINGS[ref['codepoint']]
                else:
                    assert ref['name'] in span
                if variant == 'relations':  # the referent's kind twice: the name alone is ambiguous
                    assert kinds.count(ref['codepoint']) == 2 and expr['spec']['type'] != 'name'
                else:                     # names suffice: every kind once
                    assert len(set(kinds)) == len(kinds) and expr['spec']['type'] == 'name'
                if split == 'testA':
                    assert ref['codepoint'] in ANIMALS
                if split == 'testB':
                    assert ref['codepoint'] in OBJECTS
            for captions in per_image.values():
                assert len(captions) == len(set(captions))


def _offsets_in_cells(root, variant='relations', split='train'):
    """Each glyph's box centre minus its grid cell's centre, in pixels."""
    offsets = []
    for scene in _load(osp.join(root, variant, f'scenes_{split}.json'))['scenes']:
        cell_w, cell_h = scene['width'] / GRID, scene['height'] / GRID
        for obj in scene['objects']:
            x0, y0, x1, y1 = obj['box']
            offsets.append(((x0 + x1) / 2 - cell_w * (obj['col'] + 0.5), (y0 + y1) / 2 - cell_h * (obj['row'] + 0.5)))
    return np.array(offsets)


def test_demo_jitter_places_glyphs_in_their_cells(tmp_path):
    kw = dict(num_train=24, num_val=2, num_test=2, image_size=96, variants=('relations', ))
    build_grounding_demo(str(tmp_path / 'centred'), seed=2, jitter=0.0, **kw)
    build_grounding_demo(str(tmp_path / 'anywhere'), seed=2, jitter=1.0, **kw)
    centred, anywhere = _offsets_in_cells(tmp_path / 'centred'), _offsets_in_cells(tmp_path / 'anywhere')
    assert np.abs(centred).max() <= 1.0            # integer pixels: within one of the exact centre
    assert np.abs(anywhere).max() > 3.0            # free room of a 32-px cell: up to ~8 px each way
    # jitter 0: the same emoji at the same size in the same cell of a same-shaped scene has one box
    boxes = defaultdict(set)
    for scene in _load(osp.join(tmp_path, 'centred', 'relations', 'scenes_train.json'))['scenes']:
        for obj in scene['objects']:
            boxes[(scene['width'], scene['height'], obj['codepoint'], obj['row'], obj['col'], obj['size'])].add(tuple(obj['box']))
    assert all(len(b) == 1 for b in boxes.values())
    with pytest.raises(ValueError, match='jitter must lie in'):
        build_grounding_demo(str(tmp_path / 'bad'), jitter=1.5, **kw)


def test_demo_colour_words_only_when_reliable():
    assert reliable_colour(0x1F438) == 'green'     # frog face
    assert reliable_colour(0x1F34C) == 'yellow'    # banana
    assert reliable_colour(0x1F34E) is None        # "red apple" says it already
    assert reliable_colour(0x1F437) is None        # pig face: pink measured as red, share too low


def test_demo_rephrasings_avoid_the_names():
    from sherl_mm.demo.grounding import GROUNDING_EMOJI
    from sherl_mm.demo.scenes import COLOURS
    assert set(REPHRASINGS) == set(GROUNDING_EMOJI)
    for codepoint, phrases in REPHRASINGS.items():
        name_words = set(emoji_name(codepoint).split()) - set(COLOURS)
        assert phrases and all(not set(p.split()) & name_words for p in phrases), (emoji_name(codepoint), phrases)


def test_demo_deterministic(tmp_path):
    kw = dict(num_train=4, num_val=2, num_test=2, image_size=64, variants=('target', ))
    build_grounding_demo(str(tmp_path / 'a'), seed=7, **kw)
    build_grounding_demo(str(tmp_path / 'b'), seed=7, **kw)
    build_grounding_demo(str(tmp_path / 'c'), seed=8, **kw)
    assert _dir_digest(tmp_path / 'a') == _dir_digest(tmp_path / 'b')
    assert _dir_digest(tmp_path / 'a') != _dir_digest(tmp_path / 'c')


def test_demo_skip_if_current_rebuilds_only_stale_data(tmp_path):
    """A folder written by this builder with the same arguments is kept;
    other arguments, another DATA_VERSION (data of an older version) or a
    missing file are rebuilt."""
    out, vdir = str(tmp_path), tmp_path / 'target'
    kw = dict(num_train=4, num_val=2, num_test=2, image_size=64, variants=('target', ), skip_if_current=True)
    ann = vdir / 'finetune_refcoco_train.json'

    def build_marks_and_rebuilds(**extra) -> bool:
        with open(ann, 'a') as f:   # a mark that a rebuild overwrites
            f.write(' ')
        build_grounding_demo(out, **{**kw, **extra})
        return not ann.read_text().endswith(' ')

    build_grounding_demo(out, **kw)
    assert read_build_stamp(str(vdir))['version'] == DATA_VERSION
    assert not build_marks_and_rebuilds()
    assert build_marks_and_rebuilds(num_train=6)
    stamp = read_build_stamp(str(vdir))
    (vdir / 'build.json').write_text(json.dumps({**stamp, 'version': DATA_VERSION - 1}))
    assert build_marks_and_rebuilds(num_train=6)
    os.remove(vdir / 'finetune_refcoco_val.json')
    assert build_marks_and_rebuilds(num_train=6) and osp.isfile(vdir / 'finetune_refcoco_val.json')
    assert not build_marks_and_rebuilds(num_train=6, skip_if_current=True)
    assert build_marks_and_rebuilds(num_train=6, skip_if_current=False)


def test_library_never_imports_the_demo_or_benchmark_tooling():
    """sherl_mm/demo (data builders) and sherl_mm/benchmark (benchmark input) are tooling: importing every
    registering module of the library leaves them unloaded."""
    code = ('import sys, sherl_mm; sherl_mm.register_all_modules(); '
            'print(sorted(m for m in sys.modules if m.startswith(("sherl_mm.demo", "sherl_mm.benchmark"))))')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'PYTHONPATH': REPO})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == '[]'


def test_demo_cli(tmp_path):
    from _tools import load_tool
    load_tool('data/make_grounding_demo.py').main(['--out', str(tmp_path), '--variant', 'source', '--num-train', '2', '--num-val', '2', '--num-test', '2',
              '--image-size', '64'])
    assert osp.isfile(tmp_path / 'source' / 'finetune_refcoco_testB.json')
    assert not osp.exists(tmp_path / 'target')


def test_demo_emoji_render_in_colour(demo_dir):
    """The COLR glyphs render in colour (not as outlines or tofu boxes): inside the boxes of the
    colourful emoji most pixels are saturated."""
    from PIL import Image
    colourful = {'red apple', 'banana', 'frog face', 'fish', 'cactus', 'bell', 'automobile', 'octopus'}
    checked = 0
    for variant in ('source', 'target'):
        raw = _load(osp.join(demo_dir, variant, 'finetune_refcoco_train.json'))
        names = {c['id']: c['name'] for c in raw['categories']}
        for img, ann in zip(raw['images'], raw['annotations']):
            if names[ann['category_id']] not in colourful:
                continue
            pix = np.asarray(Image.open(osp.join(demo_dir, variant, 'images', img['file_name'])).convert('RGB'))
            x, y, w, h = ann['bbox']
            crop = pix[y:y + h, x:x + w].astype(int)
            sat = crop.max(-1) - crop.min(-1)
            assert (sat > 60).mean() > 0.2, (img['file_name'], names[ann['category_id']])
            checked += 1
    assert checked >= 3


# ---------------------------------------------------------------------------------------------- dataset + pipelines

@pytest.mark.parametrize('cfg_name', ['grounding_demo.py', 'grounding_demo_source.py'])
def test_demo_dataset_pipeline_contract(demo_dir, cfg_name):
    cfg = _demo_cfg(cfg_name, demo_dir)
    train = DATASETS.build(cfg.train_dataloader.dataset)
    assert isinstance(train, RefCOCODataset) and len(train) == 12
    for i in range(len(train)):
        item = train[i]
        ds = item['data_samples']
        meta = ds.metainfo
        for key in ('text', 'tokens_positive', 'img_shape', 'ori_shape', 'scale_factor', 'img_id', 'img_path',
                    'dataset_name', 'ref_bbox'):
            assert key in meta, key
        h, w = meta['img_shape']
        assert tuple(item['inputs'].shape) == (3, h, w)
        boxes = ds.gt_instances.bboxes.tensor
        assert boxes.shape == (1, 4) and ds.gt_instances.labels.tolist() == [0]
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert len(meta['tokens_positive']) == len(boxes)
        for spans in meta['tokens_positive']:
            for s, e in spans:
                assert 0 <= s < e <= len(meta['text'])
        # gt in input pixels = ref_bbox (original pixels) * scale_factor
        sx, sy = meta['scale_factor']
        ref = torch.tensor(meta['ref_bbox'], dtype=torch.float32)
        assert torch.allclose(boxes[0], ref * torch.tensor([sx, sy, sx, sy]), atol=1.0)
        oh, ow = meta['ori_shape']
        assert 0 <= ref[0] < ref[2] <= ow and 0 <= ref[1] < ref[3] <= oh
        assert meta['split'] == 'train'

    test = DATASETS.build(cfg.test_dataloader.dataset)
    assert len(test) == 6 + 4 + 4
    splits = [test[i]['data_samples'].metainfo['split'] for i in range(len(test))]
    assert splits == ['val'] * 6 + ['testA'] * 4 + ['testB'] * 4


def test_gt_meta_keys_constant_matches_configs():
    for name in ('refcoco.py', 'grounding_demo.py'):
        cfg = Config.fromfile(osp.join(CFG_DIR, name))
        assert tuple(cfg.meta_keys) == GROUNDING_META_KEYS


def test_real_config_pipelines_run(tmp_path):
    """refcoco/refcoco+/refcocog configs on a fake COCO-sized image: MDETR's
    RandomChoice / RandomChoiceResize / RandomSizeCrop chain builds and keeps the box."""
    from PIL import Image
    root = tmp_path / 'refcoco'
    (root / 'train2014').mkdir(parents=True)
    (root / 'mdetr_annotations').mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(root / 'train2014' / 'a.jpg')
    files = []
    unc = ('train', 'val', 'testA', 'testB')
    for name, splits in (('refcoco', unc), ('refcoco+', unc), ('refcocog', ('train', 'val', 'test'))):
        for split in splits:
            raw = dict(images=[dict(id=i, file_name='a.jpg', height=480, width=640, caption='the man on the left',
                                    dataset_name=name, tokens_negative=[], original_id=1) for i in range(2)],
                       annotations=[dict(id=i, image_id=i, bbox=[10.5, 20, 300, 200], category_id=1,
                                         tokens_positive=[[4, 7]], area=60000, iscrowd=0, original_id=5)
                                    for i in range(2)])
            path = root / 'mdetr_annotations' / f'finetune_{name}_{split}.json'
            path.write_text(json.dumps(raw))
            files.append(path)
    for cfg_name, name in (('refcoco.py', 'refcoco'), ('refcocop.py', 'refcoco+'), ('refcocog.py', 'refcocog')):
        cfg = Config.fromfile(osp.join(CFG_DIR, cfg_name))
        cfg.train_dataloader.dataset.data_root = str(root) + '/'
        for d in cfg.test_dataloader.dataset.datasets:
            d.data_root = str(root) + '/'
        train = DATASETS.build(cfg.train_dataloader.dataset)
        np.random.seed(0)
        aspects = set()
        for _ in range(8):   # RandomChoice picks the plain-resize or the crop branch at random
            ds = train[0]['data_samples']
            h, w = ds.metainfo['img_shape']
            aspects.add(abs(w / h - 640 / 480) < 0.01)
            box = ds.gt_instances.bboxes.tensor
            assert box.shape == (1, 4) and 480 <= min(h, w) <= 800 and max(h, w) <= 1333
            assert (box[:, 2] > box[:, 0]).all() and (box[:, 2] <= w).all() and (box[:, 3] <= h).all()
            assert ds.metainfo['dataset_name'] == name and ds.metainfo['text'] == 'the man on the left'
        assert aspects == {True, False}   # both branches ran (a crop changes the aspect ratio)
        test = DATASETS.build(cfg.test_dataloader.dataset)
        meta = test[0]['data_samples'].metainfo
        assert meta['img_shape'] == (800, 1067) and meta['ref_bbox'] == [10.5, 20.0, 310.5, 220.0]
        assert {test[i]['data_samples'].metainfo['split'] for i in range(len(test))} == \
            ({'val', 'test'} if name == 'refcocog' else {'val', 'testA', 'testB'})


# ---------------------------------------------------------------------------------------------- validation errors

def _write_case(tmp_path, images=None, annotations=None, make_image=True):
    from PIL import Image
    (tmp_path / 'imgs').mkdir(exist_ok=True)
    if make_image:
        Image.new('RGB', (50, 40), (200, 10, 10)).save(tmp_path / 'imgs' / 'x.jpg')
    raw = dict(images=images or [dict(id=7, file_name='x.jpg', height=40, width=50, caption='the red box',
                                      dataset_name='refcoco', tokens_negative=[], original_id=1)],
               annotations=annotations or [dict(id=11, image_id=7, bbox=[5, 5, 20, 20], category_id=1,
                                                tokens_positive=[[4, 11]], area=400, iscrowd=0)])
    (tmp_path / 'ann.json').write_text(json.dumps(raw))
    return dict(type='RefCOCODataset', data_root=str(tmp_path), ann_file='ann.json', data_prefix=dict(img='imgs/'),
                pipeline=[])


def test_valid_case_loads(tmp_path):
    ds = DATASETS.build(_write_case(tmp_path))
    info = ds.get_data_info(0)
    assert info['text'] == 'the red box' and info['tokens_positive'] == [[[4, 11]]]
    assert info['ref_bbox'] == [5.0, 5.0, 25.0, 25.0] and info['img_id'] == 7 and info['split'] is None


def test_error_missing_data_root(tmp_path):
    cfg = _write_case(tmp_path)
    cfg['data_root'] = str(tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match=r'data_root .*nope.*config key data_root'):
        DATASETS.build(cfg)


def test_error_missing_ann_file(tmp_path):
    cfg = _write_case(tmp_path)
    cfg['ann_file'] = 'missing.json'
    with pytest.raises(FileNotFoundError, match=r'missing\.json.*config key ann_file'):
        DATASETS.build(cfg)


def test_error_missing_image(tmp_path):
    cfg = _write_case(tmp_path, make_image=False)
    with pytest.raises(FileNotFoundError, match=r'ann\.json: image id 7 .*x\.jpg.*image file not found'):
        DATASETS.build(cfg)


def test_error_box_outside_image(tmp_path):
    cfg = _write_case(tmp_path, annotations=[dict(id=11, image_id=7, bbox=[40, 5, 20, 20], category_id=1,
                                                  tokens_positive=[[4, 11]], area=400, iscrowd=0)])
    with pytest.raises(AnnotationError) as exc:
        DATASETS.build(cfg)
    msg = str(exc.value)
    for part in ('ann.json', 'image id 7', 'annotation id 11', '[40, 5, 20, 20]', '[40, 5, 60, 25]', '50x40'):
        assert part in msg, (part, msg)


def test_error_span_past_caption(tmp_path):
    cfg = _write_case(tmp_path, annotations=[dict(id=11, image_id=7, bbox=[5, 5, 20, 20], category_id=1,
                                                  tokens_positive=[[4, 30]], area=400, iscrowd=0)])
    with pytest.raises(AnnotationError) as exc:
        DATASETS.build(cfg)
    msg = str(exc.value)
    for part in ('ann.json', 'image id 7', '[4, 30]', 'length 11'):
        assert part in msg, (part, msg)


def test_error_eval_needs_one_box(tmp_path):
    anns = [dict(id=i, image_id=7, bbox=[5, 5, 20, 20], category_id=1, tokens_positive=[[4, 11]], area=400,
                 iscrowd=0) for i in (1, 2)]
    cfg = _write_case(tmp_path, annotations=anns)
    assert len(DATASETS.build(cfg)) == 1          # training: several boxes are fine
    cfg['test_mode'] = True
    with pytest.raises(AnnotationError, match='exactly one'):
        DATASETS.build(cfg)


# ---------------------------------------------------------------------------------------------- RandomSizeCrop

def _crop_results(boxes, tokens=None):
    from mmdet.structures.bbox import HorizontalBoxes
    return dict(img=np.zeros((100, 120, 3), np.uint8), img_shape=(100, 120),
                gt_bboxes=HorizontalBoxes(torch.tensor(boxes, dtype=torch.float32)),
                gt_bboxes_labels=np.zeros(len(boxes), np.int64), gt_ignore_flags=np.zeros(len(boxes), bool),
                tokens_positive=tokens or [[[0, 1]] for _ in boxes])


def test_random_size_crop_respect_boxes():
    np.random.seed(0)
    t = TRANSFORMS.build(dict(type='RandomSizeCrop', min_size=30, max_size=60, respect_boxes=True))
    for _ in range(50):
        r = t(_crop_results([[10, 10, 30, 30], [50, 40, 70, 60]]))
        h, w = r['img'].shape[:2]
        assert 30 <= h <= 60 and 30 <= w <= 60 and r['img_shape'] == (h, w)
        b = r['gt_bboxes'].tensor
        assert len(b) == 2 and len(r['tokens_positive']) == 2     # no box lost (may be cut)
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()


def test_random_size_crop_full_boxes():
    np.random.seed(1)
    t = RandomSizeCrop(min_size=20, max_size=100, full_boxes=True)
    for _ in range(50):
        r = t(_crop_results([[40, 30, 70, 60]]))
        b = r['gt_bboxes'].tensor[0]
        assert torch.allclose(b[2:] - b[:2], torch.tensor([30.0, 30.0]))   # never truncated
    # a box larger than max_size cannot be kept whole: no crop
    r = RandomSizeCrop(min_size=10, max_size=20, full_boxes=True)(_crop_results([[0, 0, 100, 90]]))
    assert r['img'].shape[:2] == (100, 120)


def test_random_size_crop_drops_tokens_with_boxes():
    np.random.seed(2)
    t = RandomSizeCrop(min_size=20, max_size=20, respect_boxes=False)
    dropped = 0
    for _ in range(30):
        r = t(_crop_results([[0, 0, 10, 10], [100, 80, 120, 100]], tokens=[[[0, 3]], [[4, 9]]]))
        n = len(r['gt_bboxes'])
        assert len(r['tokens_positive']) == n == len(r['gt_bboxes_labels']) == len(r['gt_ignore_flags'])
        if n == 1:
            dropped += 1
            assert r['tokens_positive'] in ([[[0, 3]]], [[[4, 9]]])
    assert dropped > 0


# ---------------------------------------------------------------------------------------------- metric

def _sample(boxes, scores, gt, name='refcoco', split='val', as_dict=True):
    from mmdet.structures import DetDataSample
    ds = DetDataSample(metainfo=dict(ref_bbox=gt, dataset_name=name, split=split))
    ds.pred_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                     scores=torch.tensor(scores, dtype=torch.float32))
    return ds.to_dict() if as_dict else ds


def _run(metric, samples):
    metric.process({}, samples)
    return metric.evaluate(len(samples))


GT = [0.0, 0.0, 10.0, 10.0]
MISS = [50.0, 50.0, 60.0, 60.0]


def test_metric_topk_sorted_by_score():
    m = METRICS.build(dict(type='RefExpAccuracy'))
    samples = [
        _sample([GT, MISS], [0.9, 0.1], GT),                        # hit @1
        _sample([GT, MISS], [0.1, 0.9], GT),                        # unsorted: best-scored is the miss -> @5 only
        _sample([MISS] * 6 + [GT], [0.9] * 6 + [0.5], GT),          # 7th -> @10 only
        _sample([MISS] * 11 + [GT], [0.9] * 11 + [0.5], GT),        # 12th -> never
    ]
    res = _run(m, samples)
    p = 'refexp_giou0.5/'
    assert res[p + 'refcoco_val_P@1'] == pytest.approx(25.0)
    assert res[p + 'refcoco_val_P@5'] == pytest.approx(50.0)
    assert res[p + 'refcoco_val_P@10'] == pytest.approx(75.0)
    assert res[p + 'P@1'] == pytest.approx(25.0)
    # without sorting, the second sample's first box is a hit
    m2 = RefExpAccuracy(sort_by_score=False)
    assert _run(m2, samples)['refexp_giou0.5/P@1'] == pytest.approx(50.0)


def test_metric_iou_vs_giou():
    # squares offset diagonally by 1.7: IoU 68.89/131.11 = 0.525 passes 0.5, but the enclosing box
    # (11.7^2 = 136.89) adds 5.78 empty area: GIoU = 0.525 - 5.78/136.89 = 0.483 fails
    pred, gt = [0.0, 0.0, 10.0, 10.0], [1.7, 1.7, 11.7, 11.7]
    iou, giou = box_overlaps([pred], gt, 'iou')[0], box_overlaps([pred], gt, 'giou')[0]
    assert iou == pytest.approx(68.89 / 131.11) and giou == pytest.approx(iou - 5.78 / 136.89)
    assert iou >= 0.5 > giou
    s = [_sample([pred], [1.0], gt)]
    assert _run(RefExpAccuracy(iou_mode='iou'), s) == {'refexp_iou0.5/refcoco_val_P@1': 100.0,
                                                       'refexp_iou0.5/refcoco_val_P@5': 100.0,
                                                       'refexp_iou0.5/refcoco_val_P@10': 100.0,
                                                       'refexp_iou0.5/P@1': 100.0, 'refexp_iou0.5/P@5': 100.0,
                                                       'refexp_iou0.5/P@10': 100.0}
    assert _run(RefExpAccuracy(iou_mode='giou'), s)['refexp_giou0.5/P@1'] == 0.0
    # disjoint boxes: IoU 0, GIoU negative; identical boxes: both 1
    assert box_overlaps([MISS], GT, 'iou')[0] == 0.0 and box_overlaps([MISS], GT, 'giou')[0] < 0
    assert box_overlaps([GT], GT, 'giou')[0] == pytest.approx(1.0)


def test_metric_groups_by_dataset_and_split():
    m = RefExpAccuracy(topk=(1, ))
    samples = [_sample([GT], [1.0], GT, 'refcoco', 'testA'), _sample([MISS], [1.0], GT, 'refcoco', 'testA'),
               _sample([GT], [1.0], GT, 'refcoco', 'testB'), _sample([GT], [1.0], GT, 'refcoco+', 'val', as_dict=False),
               _sample([GT], [1.0], GT, 'refcocog', None)]
    res = _run(m, samples)
    assert res == {'refexp_giou0.5/refcoco_testA_P@1': 50.0, 'refexp_giou0.5/refcoco_testB_P@1': 100.0,
                   'refexp_giou0.5/refcoco+_val_P@1': 100.0, 'refexp_giou0.5/refcocog_P@1': 100.0,
                   'refexp_giou0.5/P@1': 80.0}


def test_metric_empty_predictions_and_errors():
    m = RefExpAccuracy()
    res = _run(m, [_sample(np.zeros((0, 4)), [], GT)])
    assert res['refexp_giou0.5/P@10'] == 0.0
    with pytest.raises(ValueError):
        RefExpAccuracy(iou_mode='dice')
    from mmdet.structures import DetDataSample
    ds = DetDataSample(metainfo=dict(dataset_name='refcoco'))
    ds.pred_instances = InstanceData(bboxes=torch.zeros(1, 4), scores=torch.ones(1))
    with pytest.raises(KeyError, match='ref_bbox'):
        RefExpAccuracy().process({}, [ds.to_dict()])


def test_metric_end_to_end_with_evaluator(demo_dir):
    """Perfect predictions through the demo test set (ConcatDataset of 3 splits) and mmengine's Evaluator."""
    from mmengine.evaluator import Evaluator
    cfg = _demo_cfg('grounding_demo.py', demo_dir)
    test = DATASETS.build(cfg.test_dataloader.dataset)
    evaluator = Evaluator(METRICS.build(cfg.test_evaluator))
    batch = [test[i]['data_samples'] for i in range(len(test))]
    for k, ds in enumerate(batch):
        gt = torch.tensor(ds.metainfo['ref_bbox'])
        wrong = gt + 1000 if k % 2 else gt          # every other: the right box only at rank 2
        ds.pred_instances = InstanceData(bboxes=torch.stack([wrong, gt]), scores=torch.tensor([0.9, 0.3]))
    evaluator.process(batch, {})
    res = evaluator.evaluate(len(batch))
    assert res['refexp_giou0.5/demo_target_val_P@1'] == pytest.approx(50.0)
    assert res['refexp_giou0.5/demo_target_testA_P@5'] == 100.0
    assert set(res) == {f'refexp_giou0.5/{g}P@{k}' for g in ('demo_target_val_', 'demo_target_testA_',
                                                              'demo_target_testB_', '') for k in (1, 5, 10)}


# ---------------------------------------------------------------------------------------------- with the model

def test_demo_batch_feeds_grounding_model(demo_dir):
    """The packed samples satisfy the MDETR-like model's contract: loss and predict run, and the
    predictions (original pixels, sorted) go straight into RefExpAccuracy."""
    import sys
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    import _tiny_grounding as T
    model = T.build_tiny()
    cfg = _demo_cfg('grounding_demo.py', demo_dir)
    train = DATASETS.build(cfg.train_dataloader.dataset)
    items = [train[i] for i in range(2)]
    data = model.data_preprocessor(dict(inputs=[it['inputs'] for it in items],
                                        data_samples=[it['data_samples'] for it in items]), training=True)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert all(torch.isfinite(v).all() for v in losses.values() if torch.is_tensor(v))
    test = DATASETS.build(cfg.val_dataloader.dataset)
    items = [test[i] for i in range(3)]
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[it['inputs'] for it in items],
                                            data_samples=[it['data_samples'] for it in items]), training=False)
        out = model.predict(data['inputs'], data['data_samples'])
    m = RefExpAccuracy()
    m.process({}, [copy.deepcopy(o).to_dict() for o in out])
    res = m.evaluate(3)
    assert 0.0 <= res['refexp_giou0.5/P@1'] <= 100.0
    for o in out:
        oh, ow = o.metainfo['ori_shape']
        b = o.pred_instances.bboxes
        assert (b[:, 2] <= ow + 1e-3).all() and (b[:, 3] <= oh + 1e-3).all()
