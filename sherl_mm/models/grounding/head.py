"""MDETR prediction heads and losses.

Heads (names as in MDETR ``models/mdetr.py``, so its checkpoint maps 1:1):

* ``class_embed``: ``Linear(D, T)`` soft token prediction over ``T`` text
  positions (MDETR: ``T = 256``); the last slot means "no object".
* ``bbox_embed``: 3-layer MLP ``D -> D -> D -> 4`` + sigmoid, normalised
  ``(cx, cy, w, h)`` relative to the unpadded image.
* ``contrastive_align_projection_image`` / ``_text``: ``Linear(D, 64)``,
  L2-normalised, logits ``q · t / τ`` with ``τ = 0.07``.

Losses (MDETR ``SetCriterion``; each divided by the number of GT boxes over
the batch, averaged over ranks, clamped at >= 1):

* ``loss_ce``: ``-(log_softmax(logits) * target).sum(-1)``; matched queries
  target their box's normalised positive map, unmatched ones the no-object
  slot with weight ``eos_coef = 0.1``.
* ``loss_bbox``: L1 on normalised ``(cx, cy, w, h)``.
* ``loss_giou``: ``1 - GIoU`` on the same boxes as ``(x1, y1, x2, y2)``.
* ``loss_contrastive_align``: the two InfoNCE terms (box -> tokens, token ->
  boxes) over the matched queries' token spans, averaged. As in MDETR the
  negatives include every text position of the padded batch.

Matching is mmdet's ``HungarianAssigner`` with :class:`SoftTokenCost` (1),
``BBoxL1Cost(box_format='xywh')`` (5) and ``IoUCost(iou_mode='giou')`` (2).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps
from mmengine.dist import all_reduce, get_world_size, is_distributed
from mmengine.model import BaseModule
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData
from torch import Tensor, nn

from sherl_mm.registry import TASK_UTILS

DEFAULT_ASSIGNER = dict(
    type='HungarianAssigner',
    match_costs=[
        dict(type='SoftTokenCost', weight=1.0),
        dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
        dict(type='IoUCost', iou_mode='giou', weight=2.0),
    ])

DEFAULT_LOSS_WEIGHTS = dict(loss_ce=1.0, loss_bbox=5.0, loss_giou=2.0, loss_contrastive_align=1.0)


class MLP(nn.Module):
    """MDETR/DETR ``MLP``: ``num_layers`` Linear layers with ReLU in between."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


def build_assigner(cfg: dict):
    """Build under the ``sherl_mm`` scope so that ``HungarianAssigner`` (an
    mmdet class building its costs from mmdet's registry) finds
    :class:`SoftTokenCost` registered in sherl_mm's child registry."""
    import sherl_mm.models.grounding.match_cost  # noqa: F401  (registers SoftTokenCost)
    with DefaultScope.overwrite_default_scope('sherl_mm'):
        return TASK_UTILS.build(copy.deepcopy(cfg))


class MDETRHead(BaseModule):
    """The heads and the set criterion of MDETR.

    Args:
        embed_dims: transformer width ``D``.
        num_tokens: soft-token logits ``T`` (the last is "no object").
        contrastive_align_loss: build the contrastive-align projections and loss.
        contrastive_dim: projection width (MDETR: 64).
        temperature: contrastive-align temperature τ (MDETR: 0.07).
        eos_coef: CE weight of the no-object target (MDETR: 0.1).
        loss_weights: weights of ``loss_ce``, ``loss_bbox``, ``loss_giou``,
            ``loss_contrastive_align`` (the same for the auxiliary outputs).
        assigner: a TASK_UTILS config of the Hungarian assigner.
    """

    def __init__(self, embed_dims: int = 256, num_tokens: int = 256, contrastive_align_loss: bool = True,
                 contrastive_dim: int = 64, temperature: float = 0.07, eos_coef: float = 0.1,
                 loss_weights: dict | None = None, assigner: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_tokens = num_tokens
        self.temperature = temperature
        self.eos_coef = eos_coef
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
        unknown = set(self.loss_weights) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise KeyError(f'MDETRHead: unknown loss_weights keys {sorted(unknown)}; '
                           f'known: {sorted(DEFAULT_LOSS_WEIGHTS)}')
        self.class_embed = nn.Linear(embed_dims, num_tokens)
        self.bbox_embed = MLP(embed_dims, embed_dims, 4, 3)
        self.contrastive_align_loss = contrastive_align_loss
        if contrastive_align_loss:
            self.contrastive_align_projection_image = nn.Linear(embed_dims, contrastive_dim)
            self.contrastive_align_projection_text = nn.Linear(embed_dims, contrastive_dim)
        self.assigner = build_assigner(assigner or DEFAULT_ASSIGNER)

    # ------------------------------------------------------------------ forward
    def forward(self, hs: Tensor, text_memory: Tensor | None = None) -> dict:
        """``hs``: decoder output ``(B, Q, D)``; ``text_memory``: the encoder's
        text tokens ``(B, Lt, D)`` (for the contrastive-align projections)."""
        out = dict(logits=self.class_embed(hs), boxes=self.bbox_embed(hs).sigmoid())
        if self.contrastive_align_loss:
            out['proj_queries'] = F.normalize(self.contrastive_align_projection_image(hs), p=2, dim=-1)
            if text_memory is not None:
                out['proj_tokens'] = F.normalize(self.contrastive_align_projection_text(text_memory), p=2, dim=-1)
        return out

    # ------------------------------------------------------------------ matching
    @torch.no_grad()
    def match(self, out: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Per image ``(query_indices, gt_indices)`` from the Hungarian assigner."""
        indices = []
        for b, tgt in enumerate(targets):
            img_h, img_w = tgt['img_shape']
            factor = out['boxes'].new_tensor([img_w, img_h, img_w, img_h])
            pred = InstanceData(scores=out['logits'][b].float(),
                                bboxes=bbox_cxcywh_to_xyxy(out['boxes'][b].float()) * factor)
            gt = InstanceData(bboxes=tgt['bboxes'].float(), positive_maps=tgt['positive_map'],
                              labels=torch.zeros(len(tgt['bboxes']), dtype=torch.long,
                                                 device=tgt['bboxes'].device))
            result = self.assigner.assign(pred, gt, img_meta=dict(img_shape=(img_h, img_w)))
            query_idx = torch.nonzero(result.gt_inds > 0, as_tuple=True)[0]
            gt_idx = result.gt_inds[query_idx] - 1
            indices.append((query_idx, gt_idx))
        return indices

    # ------------------------------------------------------------------ losses
    @staticmethod
    def num_boxes(targets: list[dict], device) -> float:
        n = torch.tensor(float(sum(len(t['bboxes']) for t in targets)), device=device)
        if is_distributed():
            all_reduce(n)  # sum
            n = n / get_world_size()
        return max(float(n), 1.0)

    def loss_ce(self, out: dict, targets: list[dict], indices, num_boxes: float) -> Tensor:
        logits = out['logits'].float().log_softmax(-1)
        target = torch.zeros_like(logits)
        target[..., -1] = 1.0
        weight = torch.full(logits.shape[:2], self.eos_coef, device=logits.device)
        for b, (qi, gi) in enumerate(indices):
            if len(qi):
                pmap = targets[b]['positive_map'].to(logits)
                target[b, qi] = pmap[gi]
                weight[b, qi] = 1.0
        loss = -(logits * target).sum(-1) * weight
        return loss.sum() / num_boxes

    def loss_boxes(self, out: dict, targets: list[dict], indices, num_boxes: float) -> tuple[Tensor, Tensor]:
        src, tgt = [], []
        for b, (qi, gi) in enumerate(indices):
            img_h, img_w = targets[b]['img_shape']
            factor = out['boxes'].new_tensor([img_w, img_h, img_w, img_h])
            src.append(out['boxes'][b, qi])
            gt = targets[b]['bboxes'][gi].to(out['boxes']) / factor
            tgt.append(torch.cat([(gt[:, :2] + gt[:, 2:]) / 2, gt[:, 2:] - gt[:, :2]], dim=-1))
        src = torch.cat(src).float()
        tgt = torch.cat(tgt).float()
        loss_bbox = F.l1_loss(src, tgt, reduction='none').sum() / num_boxes
        if len(src):
            giou = bbox_overlaps(bbox_cxcywh_to_xyxy(src), bbox_cxcywh_to_xyxy(tgt), mode='giou', is_aligned=True)
            loss_giou = (1 - giou).sum() / num_boxes
        else:
            loss_giou = src.sum() * 0
        return loss_bbox, loss_giou

    def loss_contrastive_align(self, out: dict, targets: list[dict], indices, num_boxes: float) -> Tensor:
        queries, tokens = out['proj_queries'].float(), out['proj_tokens'].float()
        logits = queries @ tokens.transpose(-1, -2) / self.temperature  # B x Q x Lt
        positive = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        for b, (qi, gi) in enumerate(indices):
            if len(qi):
                tmask = targets[b]['token_mask'].to(logits.device)[:, :logits.shape[-1]]
                positive[b, qi] = tmask[gi]
        positive_logits = -logits.masked_fill(~positive, 0)
        boxes_with_pos = positive.any(2)
        box_to_token = (positive_logits.sum(2) / (positive.sum(2) + 1e-6) + logits.logsumexp(2))
        box_to_token = box_to_token.masked_fill(~boxes_with_pos, 0).sum()
        tokens_with_pos = positive.any(1)
        token_to_box = (positive_logits.sum(1) / (positive.sum(1) + 1e-6) + logits.logsumexp(1))
        token_to_box = token_to_box.masked_fill(~tokens_with_pos, 0).sum()
        return (box_to_token + token_to_box) / 2 / num_boxes

    def loss_single(self, out: dict, targets: list[dict], num_boxes: float, indices=None) -> dict:
        """Unweighted losses of one set of outputs (matched here unless given)."""
        if indices is None:
            indices = self.match(out, targets)
        losses = dict(loss_ce=self.loss_ce(out, targets, indices, num_boxes))
        losses['loss_bbox'], losses['loss_giou'] = self.loss_boxes(out, targets, indices, num_boxes)
        if self.contrastive_align_loss and 'proj_tokens' in out:
            losses['loss_contrastive_align'] = self.loss_contrastive_align(out, targets, indices, num_boxes)
        return losses

    def loss(self, outputs: list[dict], targets: list[dict]) -> dict:
        """Weighted losses of the final output (``outputs[-1]``) and the
        auxiliary ones (``outputs[:-1]``, keys prefixed ``d{i}.``); every
        output is matched on its own, as in MDETR.

        Each target: ``bboxes`` (n, 4) xyxy in network-input pixels,
        ``positive_map`` (n, T) normalised, ``token_mask`` (n, Lt) bool,
        ``img_shape`` (h, w).
        """
        num_boxes = self.num_boxes(targets, outputs[-1]['logits'].device)
        losses = {}
        for i, out in enumerate(outputs):
            prefix = '' if i == len(outputs) - 1 else f'd{i}.'
            for k, v in self.loss_single(out, targets, num_boxes).items():
                losses[prefix + k] = v * self.loss_weights[k]
        return losses


__all__ = ['DEFAULT_ASSIGNER', 'DEFAULT_LOSS_WEIGHTS', 'MDETRHead', 'MLP', 'build_assigner']
