"""MDETR-style augmentation for referring-expression grounding, as mmdet
pipeline transforms.

MDETR's RefCOCO training augmentation (``make_coco_transforms('train',
cautious=True)`` in ashkamath/mdetr ``datasets/coco.py``) is::

    RandomSelect(                                   # p = 0.5 each
        RandomResize([480, 512, ..., 800], max_size=1333),
        Compose([RandomResize([400, 500, 600]),
                 RandomSizeCrop(384, 1333, respect_boxes=True),
                 RandomResize([480, 512, ..., 800], max_size=1333)]))

with no horizontal flip ("cautious": a flip would turn "the man on the left"
into a wrong caption). On the mmdet stack this is::

    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=[(1333, s) for s in scales], keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(1333, s) for s in (400, 500, 600)], keep_ratio=True),
         dict(type='RandomSizeCrop', min_size=384, max_size=1333, respect_boxes=True),
         dict(type='RandomChoiceResize', scales=[(1333, s) for s in scales], keep_ratio=True)]])

mmdet's ``Resize(scale=(max_size, short), keep_ratio=True)`` rescales by
``min(max_size / long_side, short / short_side)``, which is exactly MDETR's
"shorter side to ``short`` unless the longer one would exceed ``max_size``";
``RandomChoiceResize`` and ``RandomChoice`` (mmcv) pick the scale / the
branch. The only piece mmdet lacks is :class:`RandomSizeCrop`, below. The
first RandomResize([400, 500, 600]) of MDETR has no max size; with COCO's
aspect ratios a 1333 cap never binds there.

Text fields travel through the pipeline untouched: ``text`` (the caption) and
``tokens_positive`` (one list of ``[start, end)`` character spans per gt
box). :class:`RandomSizeCrop` keeps ``tokens_positive`` aligned with the boxes
when it drops one (only possible with ``respect_boxes=False``).
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmcv.transforms.utils import cache_randomness

from sherl_mm.registry import TRANSFORMS

#: MDETR's training scales (shorter side) and cap (longer side).
MDETR_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
MDETR_MAX_SIZE = 1333


@TRANSFORMS.register_module()
class RandomSizeCrop(BaseTransform):
    """Crop a random region of random size, MDETR's ``RandomSizeCrop``.

    The crop width is drawn uniformly from ``[min_size, min(W, max_size)]``,
    the height from ``[min_size, min(H, max_size)]``, the position uniformly
    (``torchvision.transforms.RandomCrop.get_params``). Boxes are shifted and
    clipped to the crop; boxes left with zero area are removed together with
    their label, ignore flag and ``tokens_positive`` entry.

    Args:
        min_size: the smallest crop side (pixels). An image side shorter than
            this is kept whole (MDETR would raise on such an image).
        max_size: the largest crop side (pixels).
        respect_boxes: MDETR's ``respect_boxes``: retry (up to
            ``max_patience`` draws) until no box is cropped out completely;
            boxes may still be cut, and are then clipped. If every draw fails
            the last draw is used, as in MDETR, unless ``full_boxes``.
        full_boxes: stricter than MDETR: retry until every box lies wholly
            inside the crop, so the referred object is never truncated (the
            crop is then also forced to contain the boxes' union, which is
            always possible). If no draw succeeds the image is left uncropped.
        max_patience: number of draws (MDETR: 100).

    Required keys: ``img``; optional ``gt_bboxes`` (``HorizontalBoxes`` or an
    ``(N, 4)`` array), ``gt_bboxes_labels``, ``gt_ignore_flags``,
    ``tokens_positive``. Modified keys: ``img``, ``img_shape`` and those.
    """

    def __init__(self, min_size: int, max_size: int, respect_boxes: bool = True, full_boxes: bool = False,
                 max_patience: int = 100) -> None:
        if not 0 < int(min_size) <= int(max_size):
            raise ValueError(f'RandomSizeCrop: need 0 < min_size <= max_size, got {min_size}, {max_size}')
        if max_patience < 1:
            raise ValueError(f'RandomSizeCrop: max_patience must be >= 1, got {max_patience}')
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.respect_boxes = bool(respect_boxes)
        self.full_boxes = bool(full_boxes)
        self.max_patience = int(max_patience)

    @staticmethod
    def _boxes_array(results: dict) -> np.ndarray | None:
        boxes = results.get('gt_bboxes')
        if boxes is None:
            return None
        if hasattr(boxes, 'tensor'):
            return boxes.tensor.detach().cpu().numpy().astype(np.float64).reshape(-1, 4)
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    @staticmethod
    def _crop_boxes(boxes: np.ndarray, left: int, top: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        out = boxes - np.array([left, top, left, top], dtype=np.float64)
        out[:, 0::2] = out[:, 0::2].clip(0, w)
        out[:, 1::2] = out[:, 1::2].clip(0, h)
        keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
        return out, keep

    @cache_randomness
    def _draw(self, img_h: int, img_w: int, boxes: np.ndarray | None) -> tuple[int, int, int, int] | None:
        """Return ``(left, top, w, h)`` of an accepted crop, or None (keep the image)."""
        lo_w, lo_h = min(self.min_size, img_w), min(self.min_size, img_h)
        hi_w, hi_h = min(img_w, self.max_size), min(img_h, self.max_size)
        n = 0 if boxes is None else len(boxes)
        if self.full_boxes and n:
            # the crop must contain the union of the boxes
            ux0, uy0 = np.floor(boxes[:, :2].min(0)).astype(int)
            ux1, uy1 = np.ceil(boxes[:, 2:].max(0)).astype(int)
            ux0, uy0 = max(ux0, 0), max(uy0, 0)
            ux1, uy1 = min(ux1, img_w), min(uy1, img_h)
            lo_w, lo_h = max(lo_w, ux1 - ux0), max(lo_h, uy1 - uy0)
            if lo_w > hi_w or lo_h > hi_h:
                return None
        region = None
        for _ in range(self.max_patience):
            w = int(np.random.randint(lo_w, hi_w + 1))
            h = int(np.random.randint(lo_h, hi_h + 1))
            if self.full_boxes and n:
                left = int(np.random.randint(max(0, ux1 - w), min(ux0, img_w - w) + 1))
                top = int(np.random.randint(max(0, uy1 - h), min(uy0, img_h - h) + 1))
                return left, top, w, h
            left = int(np.random.randint(0, img_w - w + 1))
            top = int(np.random.randint(0, img_h - h + 1))
            region = (left, top, w, h)
            if not self.respect_boxes or n == 0:
                return region
            _, keep = self._crop_boxes(boxes, left, top, w, h)
            if keep.all():
                return region
        return region  # MDETR: the last draw when patience runs out

    def transform(self, results: dict) -> dict:
        img = results['img']
        img_h, img_w = img.shape[:2]
        boxes = self._boxes_array(results)
        region = self._draw(img_h, img_w, boxes)
        if region is None:
            return results
        left, top, w, h = region
        results['img'] = img[top:top + h, left:left + w]
        results['img_shape'] = results['img'].shape[:2]
        if boxes is None:
            return results
        cropped, keep = self._crop_boxes(boxes, left, top, w, h)
        orig = results['gt_bboxes']
        if hasattr(orig, 'tensor'):
            import torch
            new = type(orig)(torch.as_tensor(cropped, dtype=orig.tensor.dtype))
            results['gt_bboxes'] = new[torch.as_tensor(keep)]
        else:
            results['gt_bboxes'] = cropped[keep].astype(np.asarray(orig).dtype)
        for key in ('gt_bboxes_labels', 'gt_ignore_flags'):
            if results.get(key) is not None:
                results[key] = np.asarray(results[key])[keep]
        if results.get('tokens_positive') is not None and not isinstance(results['tokens_positive'], int):
            tokens = list(results['tokens_positive'])
            if len(tokens) == len(keep):
                results['tokens_positive'] = [t for t, k in zip(tokens, keep) if k]
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size}, '
                f'respect_boxes={self.respect_boxes}, full_boxes={self.full_boxes}, '
                f'max_patience={self.max_patience})')


def mdetr_train_resize_crop(scales=MDETR_SCALES, max_size: int = MDETR_MAX_SIZE,
                            crop_scales=(400, 500, 600), crop_min: int = 384, crop_max: int = MDETR_MAX_SIZE,
                            full_boxes: bool = False) -> dict:
    """The ``RandomChoice`` pipeline step equivalent to MDETR's cautious
    RefCOCO training augmentation (see the module docstring)."""
    return dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=[(max_size, s) for s in scales], keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(max_size, s) for s in crop_scales], keep_ratio=True),
         dict(type='RandomSizeCrop', min_size=crop_min, max_size=crop_max, respect_boxes=True,
              full_boxes=full_boxes),
         dict(type='RandomChoiceResize', scales=[(max_size, s) for s in scales], keep_ratio=True)]])


__all__ = ['RandomSizeCrop', 'mdetr_train_resize_crop', 'MDETR_SCALES', 'MDETR_MAX_SIZE']
