"""MDETR's soft-token classification cost for mmdet's ``HungarianAssigner``."""
from __future__ import annotations

from typing import Optional

from mmdet.models.task_modules.assigners.match_cost import BaseMatchCost
from mmengine.structures import InstanceData
from torch import Tensor

from sherl_mm.registry import TASK_UTILS


@TASK_UTILS.register_module()
class SoftTokenCost(BaseMatchCost):
    """``-(softmax(logits) · positive_map)`` (MDETR ``models/matcher.py``).

    ``pred_instances.scores`` holds the raw logits ``(num_queries, T)`` over
    text positions (the last one is "no object"); ``gt_instances.positive_maps``
    holds each box's normalised positive map ``(num_gts, T)``.
    """

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData,
                 img_meta: Optional[dict] = None, **kwargs) -> Tensor:
        prob = pred_instances.scores.softmax(-1)
        positive_maps = gt_instances.positive_maps.to(prob.dtype)
        return -(prob @ positive_maps.t()) * self.weight


__all__ = ['SoftTokenCost']
