"""Image-text retrieval data in Karpathy's split format.

``dataset_coco.json`` / ``dataset_flickr30k.json`` (Karpathy & Fei-Fei, 2015)::

    {"images": [{"filepath": "val2014",            # COCO only
                 "filename": "COCO_val2014_000000391895.jpg",
                 "split": "test",                   # train / val / test / restval
                 "sentences": [{"raw": "A man with a red helmet ...", ...}, ...]}, ...]}

The image path is ``data_prefix['img_path'] / filepath / filename``. The
demo data (:mod:`sherl_mm.demo.retrieval`) is written in the same
format, so this one reader serves COCO, Flickr30K and the demo.

Two modes:

* ``mode='train'``: one sample per (image, caption) pair; the pipeline sees
  ``img_path`` and ``text``.
* ``mode='eval'``: one sample per image with all its captions (``texts``), so
  a metric can build the full image x caption similarity matrix
  (:class:`sherl_mm.evaluation.RetrievalRecall`).

COCO 1K/5K: the 5K test split is ``split='test'``; ``fold=k`` with
``num_folds=5`` keeps only the k-th block of 1,000 images. Evaluating on the
whole 5K set with ``RetrievalRecall(num_folds=5)`` reports both the 5K numbers
and the mean over the five 1K folds in one pass.
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Any, Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.structures import BaseDataElement

from sherl_mm.registry import DATASETS, TRANSFORMS


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the record."""


def load_json(path: str, what: str) -> Any:
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path}')
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f'{path}: not valid JSON ({exc})') from exc


@TRANSFORMS.register_module()
class PackMultiModalInputs(BaseTransform):
    """Pack an image and its text-side fields for an image-text model.

    The image (``results['img']``, HWC uint8 as loaded, BGR unless the loader
    says otherwise) becomes a CHW tensor in ``inputs``; every key of
    ``data_keys`` present in ``results`` (captions, questions, answer targets,
    indices ...) and every key of ``meta_keys`` goes into the ``data_samples``
    element, as metainfo.
    """

    DEFAULT_DATA_KEYS = ('text', 'texts', 'img_idx', 'caption_idx', 'img_id', 'question', 'question_id',
                         'answer_labels', 'answer_scores', 'gt_answers', 'answer_type', 'question_type')

    def __init__(self, data_keys: Sequence[str] = DEFAULT_DATA_KEYS,
                 meta_keys: Sequence[str] = ('img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip')) -> None:
        self.data_keys = tuple(data_keys)
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = img[..., None].repeat(3, axis=2)
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        sample = BaseDataElement()
        sample.set_metainfo({k: results[k] for k in self.data_keys + self.meta_keys if k in results})
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(data_keys={self.data_keys}, meta_keys={self.meta_keys})'


@DATASETS.register_module()
class KarpathyRetrievalDataset(BaseDataset):
    """COCO / Flickr30K (or the demo data) in Karpathy's JSON format.

    Args:
        ann_file: the Karpathy JSON (relative to ``data_root``).
        split: a split name or a list of them; COCO training uses
            ``['train', 'restval']`` (113,287 images).
        mode: 'train' (image-caption pairs) or 'eval' (images with all their
            captions); default 'eval' when ``test_mode`` else 'train'.
        captions_per_image: keep the first N captions of each image (5 in the
            standard protocol; a few COCO images have 6 or 7) and raise an
            error naming the record if an image has fewer. ``None`` keeps all.
        fold / num_folds: keep only fold ``fold`` of ``num_folds`` equal
            consecutive blocks of images (COCO 1K: ``num_folds=5``).
        max_images: keep only the first N images of the split (quick runs).
        check_images: check that every image file exists while loading, so a
            missing file is reported with its record before training starts.
        data_prefix: ``dict(img_path=...)``, the image folder under
            ``data_root``.
    """

    METAINFO = dict(dataset_name='karpathy')

    def __init__(self, ann_file: str, split: str | Sequence[str] = 'train', mode: str | None = None,
                 captions_per_image: int | None = 5, fold: int | None = None, num_folds: int = 5,
                 max_images: int | None = None, check_images: bool = True, **kwargs: Any) -> None:
        self.splits = (split,) if isinstance(split, str) else tuple(split)
        test_mode = kwargs.get('test_mode', False)
        self.mode = mode or ('eval' if test_mode else 'train')
        if self.mode not in ('train', 'eval'):
            raise ValueError(f"KarpathyRetrievalDataset: mode must be 'train' or 'eval', got {mode!r}")
        if fold is not None and not 0 <= fold < num_folds:
            raise ValueError(f'KarpathyRetrievalDataset: fold {fold} is not in 0..{num_folds - 1}')
        self.captions_per_image = captions_per_image
        self.fold, self.num_folds = fold, num_folds
        self.max_images = max_images
        self.check_images = check_images
        kwargs.setdefault('data_prefix', dict(img_path=''))
        super().__init__(ann_file=ann_file, **kwargs)

    def load_data_list(self) -> list[dict]:
        raw = load_json(self.ann_file, 'Karpathy annotation file')
        if not isinstance(raw, dict) or 'images' not in raw:
            raise AnnotationError(f'{self.ann_file}: expected a JSON object with an "images" list '
                                  '(Karpathy format: dataset_coco.json / dataset_flickr30k.json)')
        img_root = self.data_prefix.get('img_path', '') or ''
        images = []
        for index, rec in enumerate(raw['images']):
            where = f'{self.ann_file}: images[{index}]'
            for key in ('filename', 'split', 'sentences'):
                if key not in rec:
                    raise AnnotationError(f'{where} has no key {key!r}')
            where += f' (filename {rec["filename"]!r})'
            if rec['split'] not in self.splits:
                continue
            captions = []
            for j, sent in enumerate(rec['sentences']):
                if not isinstance(sent, dict) or 'raw' not in sent:
                    raise AnnotationError(f'{where}: sentences[{j}] has no key \'raw\'')
                captions.append(str(sent['raw']).strip())
            if self.captions_per_image is not None:
                if len(captions) < self.captions_per_image:
                    raise AnnotationError(f'{where} has {len(captions)} captions, fewer than '
                                          f'captions_per_image={self.captions_per_image}')
                captions = captions[:self.captions_per_image]
            elif not captions:
                raise AnnotationError(f'{where} has no captions')
            path = osp.join(img_root, rec.get('filepath', '') or '', rec['filename'])
            images.append(dict(img_path=path, img_id=rec.get('cocoid', rec.get('imgid', index)),
                               captions=captions, record=where))
        if not images:
            raise AnnotationError(f'{self.ann_file}: no image belongs to split(s) {list(self.splits)}')
        if self.fold is not None:
            bounds = np.linspace(0, len(images), self.num_folds + 1).round().astype(int)
            images = images[bounds[self.fold]:bounds[self.fold + 1]]
        if self.max_images is not None:
            images = images[:self.max_images]
        if self.check_images:
            for img in images:
                if not osp.isfile(img['img_path']):
                    raise FileNotFoundError(f'{img["record"]}: image file not found: {img["img_path"]}')
        data_list = []
        for img_idx, img in enumerate(images):
            if self.mode == 'train':
                for cap_idx, text in enumerate(img['captions']):
                    data_list.append(dict(img_path=img['img_path'], img_id=img['img_id'], img_idx=img_idx,
                                          caption_idx=cap_idx, text=text))
            else:
                data_list.append(dict(img_path=img['img_path'], img_id=img['img_id'], img_idx=img_idx,
                                      texts=list(img['captions'])))
        return data_list


__all__ = ['AnnotationError', 'KarpathyRetrievalDataset', 'PackMultiModalInputs', 'load_json']
