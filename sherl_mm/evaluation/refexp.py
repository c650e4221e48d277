"""Referring-expression accuracy, as MDETR's ``RefExpEvaluator`` computes it.

MDETR (ashkamath/mdetr ``datasets/refexp.py``) sorts each expression's
predicted boxes by score, and counts a hit at ``k`` when the best of the top
``k`` boxes has **GIoU >= 0.5** with the single ground-truth box; P@1 is the
"Acc@0.5" its paper reports (RefCOCO val/testA/testB 86.75/89.58/81.41 with
R101). mmdet's ``RefExpMetric`` differs: it uses plain IoU, does not sort by
score, and divides its ``mean_precision`` by 9. Here ``iou_mode`` picks the
overlap; the default is MDETR's GIoU, and the mode and threshold are part of
every key's prefix (``refexp_giou0.5/...`` or ``refexp_iou0.5/...``) so a
reported number always says which it is. Since GIoU <= IoU, GIoU >= 0.5
is the stricter test.

Output keys (percentages), ``{group}`` being ``{dataset_name}_{split}``
(e.g. ``refcoco_testA``; just ``{dataset_name}`` when samples carry no split):

* ``{group}_P@{k}`` for every ``k`` in ``topk`` (P@1 = Acc@0.5);
* ``P@{k}``: over all samples of all groups (the key to select checkpoints).

With a ``ConcatDataset`` of val/testA/testB as the test set, one pass
reports all three splits.

Inputs per data sample (a ``DetDataSample`` or its ``to_dict()``):
``pred_instances.bboxes`` (xyxy in ORIGINAL image pixels) and ``.scores``;
metainfo ``ref_bbox`` (the ground-truth box, xyxy in ORIGINAL image pixels),
``dataset_name`` and optionally ``split``.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from sherl_mm.registry import METRICS


def box_overlaps(boxes: np.ndarray, gt: np.ndarray, mode: str = 'giou', eps: float = 1e-9) -> np.ndarray:
    """IoU or generalized IoU (Rezatofighi et al., 2019) of ``(N, 4)`` xyxy
    boxes with one xyxy box ``gt``; returns ``(N,)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(4)
    if mode not in ('iou', 'giou'):
        raise ValueError(f"mode must be 'iou' or 'giou', got {mode!r}")
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    area_gt = max(gt[2] - gt[0], 0) * max(gt[3] - gt[1], 0)
    iw = (np.minimum(boxes[:, 2], gt[2]) - np.maximum(boxes[:, 0], gt[0])).clip(0)
    ih = (np.minimum(boxes[:, 3], gt[3]) - np.maximum(boxes[:, 1], gt[1])).clip(0)
    inter = iw * ih
    union = area + area_gt - inter
    iou = inter / np.maximum(union, eps)
    if mode == 'iou':
        return iou
    cw = np.maximum(boxes[:, 2], gt[2]) - np.minimum(boxes[:, 0], gt[0])
    ch = np.maximum(boxes[:, 3], gt[3]) - np.minimum(boxes[:, 1], gt[1])
    enclose = np.maximum(cw * ch, eps)
    return iou - (enclose - union) / enclose


def _get(sample: Any, key: str, default: Any = None) -> Any:
    if isinstance(sample, dict):
        if key in sample:
            return sample[key]
        return sample.get('metainfo', {}).get(key, default)
    if key in getattr(sample, 'metainfo_keys', lambda: ())():
        return sample.metainfo[key]
    return getattr(sample, key, default)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, 'detach'):
        x = x.detach().cpu().float().numpy()
    elif hasattr(x, 'tensor'):  # mmdet BaseBoxes
        x = x.tensor.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def refexp_hits(boxes: np.ndarray, scores: np.ndarray | None, gt: np.ndarray, topk: Sequence[int],
                thr: float = 0.5, mode: str = 'giou') -> list[bool]:
    """Whether any of the ``k`` best-scored boxes overlaps ``gt`` by at least
    ``thr`` (``mode`` overlap), for each ``k`` in ``topk``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return [False] * len(topk)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f'{len(boxes)} boxes but {len(scores)} scores')
        boxes = boxes[np.argsort(-scores, kind='stable')]
    overlaps = box_overlaps(boxes, gt, mode)
    return [bool((overlaps[:k] >= thr).any()) for k in topk]


@METRICS.register_module()
class RefExpAccuracy(BaseMetric):
    """Top-k precision of referring-expression grounding (MDETR protocol).

    Args:
        topk: the ``k`` of P@k (MDETR: 1, 5, 10).
        iou_thr: overlap threshold (MDETR: 0.5).
        iou_mode: ``'giou'`` (MDETR's evaluator, default) or ``'iou'``
            (mmdet's ``RefExpMetric``, the usual "IoU >= 0.5").
        sort_by_score: sort predictions by score before taking the top k, as
            MDETR does (default). Samples without scores keep their order.
        prefix: the key prefix; default ``refexp_{iou_mode}{iou_thr:g}``,
            e.g. ``refexp_giou0.5``.
    """

    default_prefix = 'refexp'

    def __init__(self, topk: Sequence[int] = (1, 5, 10), iou_thr: float = 0.5, iou_mode: str = 'giou',
                 sort_by_score: bool = True, collect_device: str = 'cpu', prefix: str | None = None) -> None:
        if iou_mode not in ('iou', 'giou'):
            raise ValueError(f"RefExpAccuracy: iou_mode must be 'iou' or 'giou', got {iou_mode!r}")
        topk = tuple(int(k) for k in ([topk] if isinstance(topk, int) else topk))
        if not topk or min(topk) < 1:
            raise ValueError(f'RefExpAccuracy: topk must be positive integers, got {topk}')
        self.topk = topk
        self.iou_thr = float(iou_thr)
        self.iou_mode = iou_mode
        self.sort_by_score = sort_by_score
        super().__init__(collect_device=collect_device,
                         prefix=prefix or f'refexp_{iou_mode}{self.iou_thr:g}')

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        for sample in data_samples:
            pred = _get(sample, 'pred_instances')
            if pred is None:
                raise KeyError('RefExpAccuracy: a data sample has no pred_instances (the model\'s predict output)')
            gt = _get(sample, 'ref_bbox')
            if gt is None:
                raise KeyError('RefExpAccuracy: a data sample has no metainfo "ref_bbox" (the ground-truth box in '
                               'original image pixels); add it to PackDetInputs meta_keys')
            gt = _to_numpy(gt).reshape(-1, 4)[0]
            boxes = _to_numpy(_get(pred, 'bboxes', np.zeros((0, 4)))).reshape(-1, 4)
            scores = _get(pred, 'scores') if self.sort_by_score else None
            scores = None if scores is None else _to_numpy(scores)
            hits = refexp_hits(boxes, scores, gt, self.topk, self.iou_thr, self.iou_mode)
            name = _get(sample, 'dataset_name') or 'refexp'
            split = _get(sample, 'split')
            group = f'{name}_{split}' if split else str(name)
            self.results.append(dict(group=group, hits=hits))

    def compute_metrics(self, results: list) -> dict[str, float]:
        groups: dict[str, list[list[bool]]] = defaultdict(list)
        for r in results:
            groups[r['group']].append(r['hits'])
        metrics: dict[str, float] = OrderedDict()
        lines = []
        for group in sorted(groups):
            hits = np.asarray(groups[group], dtype=np.float64)
            for i, k in enumerate(self.topk):
                metrics[f'{group}_P@{k}'] = 100.0 * float(hits[:, i].mean())
            lines.append(f'  {group} ({len(hits)} expressions): ' +
                         ', '.join(f'P@{k} {metrics[f"{group}_P@{k}"]:.2f}' for k in self.topk))
        if results:
            every = np.asarray([r['hits'] for r in results], dtype=np.float64)
            for i, k in enumerate(self.topk):
                metrics[f'P@{k}'] = 100.0 * float(every[:, i].mean())
        MMLogger.get_current_instance().info(
            f'Referring-expression precision ({self.iou_mode.upper()} >= {self.iou_thr:g}, predictions sorted '
            f'by score: {self.sort_by_score}):\n' + '\n'.join(lines))
        return dict(metrics)


__all__ = ['RefExpAccuracy', 'box_overlaps', 'refexp_hits']
