"""RefCOCO / RefCOCO+ / RefCOCOg in MDETR's annotation format, for training
and evaluation.

MDETR (ashkamath/mdetr, ``scripts/fine-tuning/refexp_coco_format.py``)
ships ``mdetr_annotations/finetune_{refcoco,refcoco+,refcocog}_{split}.json``
(splits train/val/testA/testB, RefCOCOg train/val/test), COCO-style files
with one ``images[]`` entry per (image, referring expression)::

    {"images": [{"file_name": "COCO_train2014_000000581857.jpg", "height": 640, "width": 427,
                 "id": 0, "original_id": 581857, "caption": "lady with back to us",
                 "dataset_name": "refcoco", "tokens_negative": [[9, 13]]}, ...],
     "annotations": [{"image_id": 0, "id": 0, "bbox": [103.93, 299.99, 134.22, 177.42],  # x, y, w, h
                      "category_id": 1, "tokens_positive": [[0, 4]], "original_id": 1709,
                      "area": 14740.9, "iscrowd": 0}, ...],
     "categories": [...]}

``tokens_positive`` holds the character spans ``[start, end)`` of the
caption's root noun phrase. The images are COCO train2014
(``data_prefix=dict(img='train2014/')``). The demo data
(:mod:`sherl_mm.demo.grounding`) is written in the same format.

mmdet's own ``MDETRStyleRefCocoDataset`` is evaluation-only (it drops
``tokens_positive``); this class serves training and testing. One sample per
``images[]`` entry carries, for the pipeline:

* ``img_path``, ``img_id`` (the entry's ``id``), ``height``, ``width``;
* ``instances``: one per annotation, ``bbox`` (xyxy, original pixels),
  ``bbox_label`` 0 (MDETR predicts token spans, not classes), ``ignore_flag``
  0 (the referred object is a target even if COCO marks it ``iscrowd``);
* ``text`` (the caption), ``tokens_positive`` (one span list per instance),
  ``tokens_negative``, ``dataset_name``, ``split`` and ``ref_bbox`` (the
  first instance's box, xyxy in ORIGINAL image pixels: what
  :class:`sherl_mm.evaluation.RefExpAccuracy` scores against);
* ``sample_idx`` (set by mmengine's dataset: the key of the feature cache).

``PackDetInputs(meta_keys=GROUNDING_META_KEYS)`` puts these into the
``DetDataSample`` metainfo.
"""
from __future__ import annotations

import os.path as osp
import re
from collections import defaultdict
from typing import Any

from mmdet.datasets import BaseDetDataset

from sherl_mm.registry import DATASETS

from .karpathy import AnnotationError, load_json

#: Metainfo the grounding model and metric read, for ``PackDetInputs``.
GROUNDING_META_KEYS = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'pad_shape', 'text',
                       'tokens_positive', 'dataset_name', 'split', 'ref_bbox', 'sample_idx')

_SPLIT_RE = re.compile(r'_(train|val|testA|testB|test)\.json$')


def _fmt_box(box) -> str:
    return '[' + ', '.join(f'{float(v):g}' for v in box) + ']'


@DATASETS.register_module()
class RefCOCODataset(BaseDetDataset):
    """Referring expressions in MDETR's COCO-style format (RefCOCO,
    RefCOCO+, RefCOCOg, the combined ``final_refexp_*.json``, the demo).

    Args:
        ann_file: the annotation json, relative to ``data_root``
            (e.g. ``'mdetr_annotations/finetune_refcoco_train.json'``).
        data_root: the dataset folder (real data: ``'data/refcoco/'``).
        data_prefix: ``dict(img='train2014/')``, the image folder under
            ``data_root`` (``img_path`` is accepted as the key too).
        metainfo: ``dict(dataset_name='refcoco' | 'refcoco+' | 'refcocog')``
            names samples whose entry has no ``dataset_name``; an entry's own
            ``dataset_name`` wins (the combined files mix the three).
        split: the split name reported with every sample (metric keys such
            as ``refcoco_testA_P@1``); default: read from the file name
            (``..._testA.json`` -> ``'testA'``), else None.
        check_images: check while loading that every image file exists, so a
            missing file is reported (file and image id) before training.
        box_tolerance: pixels a box may extend past its image (float
            rounding in COCO boxes) before it is an error; such boxes are
            clipped to the image.
        max_samples: keep only the first N entries (quick runs).
        test_mode: evaluation; then every entry must have exactly one box
            (as MDETR's RefExpEvaluator asserts).

    Every malformed record raises :class:`AnnotationError` naming the file
    and the record (image id, annotation id, the offending box or span); a
    missing ``data_root`` / ``ann_file`` / image raises
    :class:`FileNotFoundError` naming the config key or the image.
    """

    METAINFO = dict(classes=('object', ), dataset_name='refcoco')

    def __init__(self, ann_file: str = '', data_root: str | None = '', split: str | None = None,
                 check_images: bool = True, box_tolerance: float = 1.0, max_samples: int | None = None,
                 **kwargs: Any) -> None:
        if data_root and not osp.isdir(data_root):
            raise FileNotFoundError(
                f'RefCOCODataset: data_root {data_root!r} (config key data_root) is not a directory. '
                'Real data: put MDETR\'s mdetr_annotations/ and COCO train2014/ under it; demo data: run '
                'tools/data/make_grounding_demo.py.')
        if not ann_file:
            raise ValueError('RefCOCODataset: ann_file (config key ann_file) is empty')
        self.split = split if split is not None else (m.group(1) if (m := _SPLIT_RE.search(ann_file)) else None)
        self.check_images = check_images
        self.box_tolerance = float(box_tolerance)
        self.max_samples = max_samples
        kwargs.setdefault('data_prefix', dict(img=''))
        super().__init__(ann_file=ann_file, data_root=data_root, **kwargs)

    # ------------------------------------------------------------------ loading
    def load_data_list(self) -> list[dict]:
        path = self.ann_file
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'RefCOCODataset: annotation file {path!r} (config key ann_file, relative to data_root '
                f'{self.data_root!r}) not found')
        raw = load_json(path, 'RefCOCO annotation file')
        if not isinstance(raw, dict) or not isinstance(raw.get('images'), list) \
                or not isinstance(raw.get('annotations'), list):
            raise AnnotationError(f'{path}: expected a COCO-style JSON object with "images" and "annotations" '
                                  'lists (MDETR format: finetune_refcoco_*.json)')
        prefix = self.data_prefix.get('img', self.data_prefix.get('img_path', '')) or ''
        default_name = self.metainfo.get('dataset_name', 'refcoco')

        anns_by_image: dict[Any, list[tuple[int, dict]]] = defaultdict(list)
        for j, ann in enumerate(raw['annotations']):
            if not isinstance(ann, dict) or 'image_id' not in ann or 'bbox' not in ann:
                raise AnnotationError(f'{path}: annotations[{j}] needs "image_id" and "bbox"')
            anns_by_image[ann['image_id']].append((j, ann))

        data_list: list[dict] = []
        seen_files: dict[str, bool] = {}
        for i, img in enumerate(raw['images']):
            if self.max_samples is not None and len(data_list) >= self.max_samples:
                break
            for key in ('id', 'file_name', 'height', 'width', 'caption'):
                if not isinstance(img, dict) or key not in img:
                    raise AnnotationError(f'{path}: images[{i}] has no key {key!r}')
            img_id = img['id']
            where = f'{path}: image id {img_id} (images[{i}], file {img["file_name"]!r})'
            caption = img['caption']
            if not isinstance(caption, str) or not caption.strip():
                raise AnnotationError(f'{where}: empty or non-string caption {caption!r}')
            width, height = float(img['width']), float(img['height'])
            if width <= 0 or height <= 0:
                raise AnnotationError(f'{where}: image size {img["width"]}x{img["height"]} is not positive')
            img_path = osp.join(prefix, img['file_name'])
            if self.check_images:
                if img_path not in seen_files:
                    seen_files[img_path] = osp.isfile(img_path)
                if not seen_files[img_path]:
                    raise FileNotFoundError(f'{where}: image file not found: {img_path} (data_root '
                                            f'{self.data_root!r} + data_prefix img {prefix!r})')
            anns = anns_by_image.get(img_id, [])
            if not anns:
                raise AnnotationError(f'{where} has no annotation (a referring expression needs its box)')
            if self.test_mode and len(anns) != 1:
                raise AnnotationError(f'{where} has {len(anns)} annotations; evaluation expects exactly one '
                                      'referred box per expression (as MDETR\'s RefExpEvaluator)')
            instances, tokens_positive = [], []
            for j, ann in anns:
                ann_where = f'{where}, annotation id {ann.get("id", "?")} (annotations[{j}])'
                box = ann['bbox']
                if not (isinstance(box, (list, tuple)) and len(box) == 4):
                    raise AnnotationError(f'{ann_where}: bbox must be [x, y, w, h], got {box!r}')
                x, y, w, h = (float(v) for v in box)
                tol = self.box_tolerance
                if w <= 0 or h <= 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
                    raise AnnotationError(
                        f'{ann_where}: box xywh {_fmt_box(box)} (xyxy {_fmt_box([x, y, x + w, y + h])}) lies '
                        f'outside its image of size {width:g}x{height:g} (w x h) or is empty')
                x1, y1 = max(x, 0.0), max(y, 0.0)
                x2, y2 = min(x + w, width), min(y + h, height)
                spans = ann.get('tokens_positive', [])
                spans = self._check_spans(spans, caption, ann_where)
                instances.append(dict(bbox=[x1, y1, x2, y2], bbox_label=0, ignore_flag=0))
                tokens_positive.append(spans)
            data_list.append(dict(
                img_path=img_path, img_id=img_id, height=int(round(height)), width=int(round(width)),
                instances=instances, text=caption, tokens_positive=tokens_positive,
                tokens_negative=[list(s) for s in img.get('tokens_negative', []) or []],
                dataset_name=img.get('dataset_name') or default_name, split=self.split,
                ref_bbox=list(instances[0]['bbox']), original_id=img.get('original_id')))
        if not data_list:
            raise AnnotationError(f'{path}: no images')
        return data_list

    @staticmethod
    def _check_spans(spans, caption: str, where: str) -> list[list[int]]:
        if not isinstance(spans, (list, tuple)):
            raise AnnotationError(f'{where}: tokens_positive must be a list of [start, end] spans, got {spans!r}')
        out = []
        for span in spans:
            if not (isinstance(span, (list, tuple)) and len(span) == 2):
                raise AnnotationError(f'{where}: tokens_positive span {span!r} is not [start, end]')
            s, e = int(span[0]), int(span[1])
            if not 0 <= s < e <= len(caption):
                raise AnnotationError(
                    f'{where}: tokens_positive span [{s}, {e}] points past the end of (or outside) the caption '
                    f'{caption!r} of length {len(caption)}')
            out.append([s, e])
        return out

    @classmethod
    def _load_metainfo(cls, metainfo: dict | None = None) -> dict:
        # mmengine tries to read every string in a user metainfo as a file
        # (and warns "... is not a meta file"); dataset_name is just a name
        metainfo = dict(metainfo or {})
        name = metainfo.pop('dataset_name', None)
        out = super()._load_metainfo(metainfo)
        if name is not None:
            out['dataset_name'] = name
        return out

    def filter_data(self) -> list[dict]:
        # every entry has a box (checked while loading); nothing to filter
        return self.data_list


__all__ = ['RefCOCODataset', 'GROUNDING_META_KEYS']
