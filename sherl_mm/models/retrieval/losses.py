"""Losses of the dual-encoder retrieval models.

* :class:`HingeTripletLoss`: VSE++/VSE∞'s bidirectional hinge triplet loss
  ``sum_i [m - s(i, t_i) + s(i, t')]_+ + [m - s(i, t_i) + s(i', t_i)]_+``,
  either summed over all negatives (``max_violation=False``) or on the
  hardest negative of each query only (max violation). VSE∞ trains the first
  epoch with the sum and switches to max violation afterwards, ramping the
  loss linearly from 0 to 1 over the first max-violation epoch
  (:class:`MaxViolationSchedule`).
* :func:`info_nce`: CLIP's symmetric cross-entropy over the scaled
  similarity matrix.

Pairs in a batch that show the same image (two captions of one image drawn
in one batch) are not negatives of each other: pass ``image_ids`` and they
are masked out, so the loss never pushes a true caption away.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmengine.logging import MessageHub
from torch import Tensor, nn


def _positive_mask(image_ids: Tensor | None, n: int, device) -> Tensor:
    if image_ids is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    image_ids = image_ids.to(device)
    return image_ids[:, None] == image_ids[None, :]


class HingeTripletLoss(nn.Module):
    """Bidirectional hinge triplet loss on an image x caption score matrix.

    Args:
        margin: the hinge margin (0.2 in VSE∞).
    """

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, scores: Tensor, max_violation: bool, image_ids: Tensor | None = None) -> Tensor:
        """``scores[i, j]`` = similarity of image i and caption j; pair i is
        (image i, caption i). Returns the summed loss (VSE∞ sums over the batch)."""
        n = scores.shape[0]
        diagonal = scores.diag().view(n, 1)
        cost_t = (self.margin + scores - diagonal).clamp(min=0)      # image i vs negative caption j
        cost_i = (self.margin + scores - diagonal.t()).clamp(min=0)  # caption j vs negative image i
        positives = _positive_mask(image_ids, n, scores.device)
        cost_t = cost_t.masked_fill(positives, 0)
        cost_i = cost_i.masked_fill(positives, 0)
        if max_violation:
            return cost_t.max(dim=1)[0].sum() + cost_i.max(dim=0)[0].sum()
        return cost_t.sum() + cost_i.sum()


class MaxViolationSchedule:
    """When the hinge loss uses the hardest negative, and its warm-up factor.

    VSE∞ (``train.py``): epochs ``< warmup`` use the sum of hinges at weight
    1; epoch ``warmup`` uses max violation with the loss multiplied by
    ``i / iters_per_epoch`` (a linear ramp from 0); later epochs use max
    violation at weight 1. ``unit='iter'`` does the same counted in
    iterations (sum for ``warmup`` iterations, then a ``warmup``-iteration
    ramp). ``warmup=0`` uses max violation from the start without a ramp.

    The position in training is read from mmengine's message hub (``epoch``,
    ``iter``, ``max_iters``, ``max_epochs``, kept by ``RuntimeInfoHook``);
    outside a Runner (no hub information) max violation at weight 1 is used.
    """

    def __init__(self, warmup: int = 1, unit: str = 'epoch', ramp: bool = True) -> None:
        if unit not in ('epoch', 'iter'):
            raise ValueError(f"MaxViolationSchedule: unit must be 'epoch' or 'iter', got {unit!r}")
        if warmup < 0:
            raise ValueError(f'MaxViolationSchedule: warmup must be >= 0, got {warmup}')
        self.warmup, self.unit, self.ramp = warmup, unit, ramp

    def __call__(self) -> tuple[bool, float]:
        """``(max_violation, loss_weight)`` for the current iteration."""
        if self.warmup == 0:
            return True, 1.0
        hub = MessageHub.get_current_instance()
        it = hub.get_info('iter')
        if it is None:
            return True, 1.0
        if self.unit == 'iter':
            if it < self.warmup:
                return False, 1.0
            if self.ramp and it < 2 * self.warmup:
                return True, (it - self.warmup) / self.warmup
            return True, 1.0
        epoch, max_iters, max_epochs = hub.get_info('epoch'), hub.get_info('max_iters'), hub.get_info('max_epochs')
        if epoch is None:
            return True, 1.0
        if epoch < self.warmup:
            return False, 1.0
        if self.ramp and epoch == self.warmup and max_iters and max_epochs:
            per_epoch = max(1, max_iters // max_epochs)
            return True, (it - epoch * per_epoch) / per_epoch
        return True, 1.0


def info_nce(logits_per_image: Tensor, image_ids: Tensor | None = None) -> Tensor:
    """CLIP's symmetric InfoNCE on ``logits[i, j]`` (image i, caption j,
    already multiplied by the temperature's inverse). With ``image_ids``,
    other captions of the same image are removed from the negatives."""
    n = logits_per_image.shape[0]
    labels = torch.arange(n, device=logits_per_image.device)
    if image_ids is not None:
        same = _positive_mask(image_ids, n, logits_per_image.device) & ~torch.eye(
            n, dtype=torch.bool, device=logits_per_image.device)
        logits_per_image = logits_per_image.masked_fill(same, float('-inf'))
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels)) / 2


__all__ = ['HingeTripletLoss', 'MaxViolationSchedule', 'info_nce']
