"""VSE∞-style dual encoder for image-text retrieval (Chen et al., CVPR 2021),
as SHERL applies it (``docs/method.md``, placements per task: VSE∞).

Image side::

    stack (CNN, frozen) -> feature map (B, C, h, w)
    [MaxPool2d(k) + AvgPool2d(k)]           (VSE∞: k = 2, 16x16 -> 8x8)
    -> tokens (B, hw, C) -> image_fc Linear(C -> E) -> [token drop] -> GPO -> L2

Text side::

    stack (BERT, frozen) -> last hidden (B, T, D) -> text_fc Linear(D -> E) -> GPO -> L2

Loss: bidirectional hinge triplet loss (margin 0.2), summed over negatives
in the warm-up epoch, then on the hardest negatives (max violation) with a
linear ramp over the first max-violation epoch (:mod:`.losses`).

Trainable besides the tuner's modules: ``image_fc``, ``text_fc`` and the two
GPOs (the authors' SHERL trains them too). Training-time "size
augmentation" of VSE∞ is kept: each image drops a random share of its grid
tokens (``img_token_drop``, 0.2 in VSE∞; 0 disables it).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sherl_mm.backbones.base import map_to_tokens
from sherl_mm.registry import BACKBONES, MODELS
from sherl_mm.tuners import build_tuned_stacks
from sherl_mm.utils.modules import eval_mode

from .base import DualEncoderRetrieval
from .losses import HingeTripletLoss, MaxViolationSchedule
from .pooling import build_pooling

#: The ImageNet normalisation of torchvision/mmdet ResNets (BGR files -> RGB).
IMAGENET_PREPROCESSOR = dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53],
                             std=[58.395, 57.12, 57.375], bgr_to_rgb=True)


def _stack(cfg):
    return BACKBONES.build(cfg) if isinstance(cfg, dict) else cfg


@torch.no_grad()
def _probe_width(stack, image_size: int = 64) -> int:
    """Channels of a (tuned) image stack's output, from a dry run on a small image."""
    device = next(stack.parameters()).device
    with eval_mode(stack):
        out = stack(torch.zeros(1, 3, image_size, image_size, device=device)).hidden
    return int(out.shape[1] if out.dim() == 4 else out.shape[-1])


@torch.no_grad()
def _probe_text_width(tuned) -> int:
    """Width of a (tuned) text stack's token output, from a dry run on one word."""
    with eval_mode(tuned):
        ids, mask = tuned.stack.encode_texts(['a'], device=next(tuned.parameters()).device)
        return int(tuned(ids, mask).hidden.shape[-1])


@MODELS.register_module()
class VSERetrieval(DualEncoderRetrieval):
    """VSE∞ with a CNN image stack and a BERT text stack.

    Args:
        image_stack: BACKBONES config (or instance) of the image stack, e.g.
            ``dict(type='ResNetStack', depth=101, pretrained='...')`` or
            ``dict(type='EfficientNetStack')``. Feature-map stacks are pooled
            to tokens; token stacks are used as they are.
        text_stack: BACKBONES config of the text stack (``HFEncoderStack``
            with a tokenizer).
        tuner: TUNERS config applied to the stacks with
            :func:`~sherl_mm.tuners.build_tuned_stacks` (stack names
            ``image`` and ``text``; default targets both).
        embed_size: joint embedding width E (1024 in VSE∞).
        image_width: channels of the (tuned) image stack's output; ``None``
            probes it with a ``probe_image_size`` image.
        feature_pool: kernel of the MaxPool+AvgPool applied to the image
            map before it becomes tokens (2 in VSE∞); ``None`` skips it.
        pooling: 'gpo' (VSE∞) or 'mean'.
        img_token_drop: VSE∞'s training-time grid-token drop rate.
        margin: hinge margin.
        max_violation: use hardest negatives after the warm-up.
        warmup / warmup_unit / warmup_ramp: see :class:`MaxViolationSchedule`
            (VSE∞: 1 epoch of summed hinges, then a one-epoch ramp).
        mask_same_image: do not count other captions of the same image in the
            batch as negatives.
        max_text_length: token limit of the captions (``None``: the model's).
        data_preprocessor: mmengine data preprocessor config (ImageNet
            normalisation by default).
    """

    def __init__(self, image_stack: dict, text_stack: dict, tuner: dict | None = None, embed_size: int = 1024,
                 image_width: int | None = None, feature_pool: int | None = 2, pooling: str = 'gpo',
                 img_token_drop: float = 0.2, margin: float = 0.2, max_violation: bool = True, warmup: int = 1,
                 warmup_unit: str = 'epoch', warmup_ramp: bool = True, mask_same_image: bool = True,
                 max_text_length: int | None = None, probe_image_size: int = 64, data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or IMAGENET_PREPROCESSOR, init_cfg=init_cfg)
        stacks = dict(image=_stack(image_stack), text=_stack(text_stack))
        if getattr(stacks['text'], 'tokenizer', None) is None:
            raise ValueError('VSERetrieval: the text stack has no tokenizer; give HFEncoderStack a tokenizer dir '
                             '(or a pretrained dir holding the tokenizer files)')
        self.stacks = build_tuned_stacks(stacks, tuner, default_targets=('image', 'text'))
        # widths of what the tuned stacks return (UniPT/LST replace the output stage)
        if image_width is None:
            image_width = _probe_width(self.stacks['image'], probe_image_size)
        text_width = _probe_text_width(self.stacks['text'])
        self.embed_size = embed_size
        self.feature_pool = feature_pool
        self.img_token_drop = float(img_token_drop)
        self.max_text_length = max_text_length
        self.image_fc = nn.Linear(image_width, embed_size)
        self.text_fc = nn.Linear(text_width, embed_size)
        # VSE∞ initialises the image projection with Xavier-uniform and a zero bias
        nn.init.xavier_uniform_(self.image_fc.weight)
        nn.init.zeros_(self.image_fc.bias)
        self.image_pool = build_pooling(pooling)
        self.text_pool = build_pooling(pooling)
        self.criterion = HingeTripletLoss(margin)
        self.max_violation = max_violation
        self.schedule = MaxViolationSchedule(warmup, warmup_unit, warmup_ramp)
        self.mask_same_image = mask_same_image

    # ------------------------------------------------------------------ image
    def _image_tokens(self, images: Tensor) -> Tensor:
        feats = self.stacks['image'](images).hidden
        if feats.dim() == 4:
            if self.feature_pool and self.feature_pool > 1 and min(feats.shape[-2:]) >= self.feature_pool:
                feats = F.max_pool2d(feats, self.feature_pool) + F.avg_pool2d(feats, self.feature_pool)
            feats = map_to_tokens(feats)
        elif feats.dim() != 3:
            raise ValueError(f'VSERetrieval: the image stack returned shape {tuple(feats.shape)}; expected a '
                             f'feature map (B, C, H, W) or tokens (B, K, C)')
        return feats

    def _drop_tokens(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """VSE∞'s size augmentation: with probability 0.8 an image keeps each
        token with probability ``1 - rate * u`` (u ~ U(0, 1) per image)."""
        batch, length, _ = feats.shape
        keep_image = torch.rand(batch) > self.img_token_drop
        strength = torch.rand(batch)
        out = torch.zeros_like(feats)
        lengths = torch.full((batch,), length, dtype=torch.long)
        for b in range(batch):
            if keep_image[b]:
                kept = torch.nonzero(torch.rand(length) > self.img_token_drop * strength[b]).squeeze(1)
                if kept.numel() == 0:
                    kept = torch.arange(length)
                out[b, :kept.numel()] = feats[b, kept.to(feats.device)]
                lengths[b] = kept.numel()
            else:
                out[b] = feats[b]
        return out, lengths.to(feats.device)

    def embed_images(self, images: Tensor) -> Tensor:
        feats = self.image_fc(self._image_tokens(images))
        if self.training and self.img_token_drop > 0:
            feats, lengths = self._drop_tokens(feats)
        else:
            lengths = torch.full((feats.shape[0],), feats.shape[1], dtype=torch.long, device=feats.device)
        return F.normalize(self.image_pool(feats, lengths), dim=-1)

    # ------------------------------------------------------------------- text
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        stack = self.stacks['text'].stack
        ids, mask = stack.encode_texts(list(texts), max_length=self.max_text_length,
                                       device=self.image_fc.weight.device)
        hidden = self.stacks['text'](ids, mask).hidden
        feats = self.text_fc(hidden)
        return F.normalize(self.text_pool(feats, mask.sum(dim=1)), dim=-1)

    # ------------------------------------------------------------------- loss
    def loss_from_embeddings(self, img: Tensor, txt: Tensor, image_ids: Tensor | None) -> dict:
        hardest, weight = self.schedule()
        hardest = hardest and self.max_violation
        scores = img @ txt.t()
        loss = self.criterion(scores, hardest, image_ids if self.mask_same_image else None) * weight
        return dict(loss=loss, max_violation=torch.tensor(float(hardest)), loss_weight=torch.tensor(float(weight)))


__all__ = ['IMAGENET_PREPROCESSOR', 'VSERetrieval']
