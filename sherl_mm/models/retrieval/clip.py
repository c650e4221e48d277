"""CLIP dual encoder for image-text retrieval, fine-tuned with a tuner on both towers.

Both towers come from one OpenCLIP model (built once, shared by the
``image`` and ``text`` stacks): ``open_clip.create_model(model_name,
pretrained=<local file>)`` or a ``model_cfg`` with random weights. Each
stack returns its projected embedding; they are L2-normalised and compared
with CLIP's learnable temperature ``logit_scale`` (initialised from the
pretrained model, or ``log(1/0.07)``; clamped at ``log(100)`` as in CLIP
training). The loss is the symmetric InfoNCE (cross-entropy over the rows
and the columns of the scaled similarity matrix).

Trainable besides the tuner's modules: ``logit_scale`` (``train_logit_scale``).
Tuners whose output replaces the stack's output (LST, UniPT) return tokens;
the tower's frozen output stage (final LayerNorm, class/EOT pooling,
projection) is then applied to them.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from sherl_mm.registry import BACKBONES, MODELS
from sherl_mm.tuners import build_tuned_stacks

from .base import DualEncoderRetrieval
from .losses import info_nce

#: OpenAI CLIP's image normalisation (BGR files -> RGB), in 0..255 units.
CLIP_PREPROCESSOR = dict(type='ImgDataPreprocessor', mean=[122.7709383, 116.7460125, 104.09373615],
                         std=[68.5005327, 66.6321579, 70.32316305], bgr_to_rgb=True)


@MODELS.register_module()
class CLIPRetrieval(DualEncoderRetrieval):
    """OpenCLIP dual encoder with a tuner on both towers.

    Args:
        model_name: OpenCLIP architecture, e.g. ``'ViT-B-32'``.
        pretrained: a LOCAL weights file for ``model_name`` (OpenCLIP's
            ``open_clip_pytorch_model.bin`` / ``.safetensors``); ``None``
            gives random weights. Tags such as ``'openai'`` need a download
            and are refused by the stacks.
        model_cfg: instead of ``model_name``, kwargs of
            ``open_clip.model.CLIP`` (tests use a tiny one).
        tokenizer_name: OpenCLIP tokenizer (``open_clip.get_tokenizer``);
            default ``model_name`` or ``'ViT-B-32'`` (the BPE tokenizer, which
            ships with open_clip) for ``model_cfg``.
        tuner: TUNERS config; stack names ``image`` and ``text``.
        init_logit_scale: initial ``logit_scale`` (log of the inverse
            temperature); ``None`` takes the model's own.
        train_logit_scale: learn the temperature (CLIP's practice).
        max_logit_scale: clamp of ``logit_scale`` (``log(100)``).
        mask_same_image: drop other captions of the same image from the
            negatives.
        image_stack / text_stack: extra kwargs of the two stacks.
        data_preprocessor: default CLIP normalisation.
    """

    def __init__(self, model_name: str | None = 'ViT-B-32', pretrained: str | None = None,
                 model_cfg: dict | None = None, tokenizer_name: str | None = None, tuner: dict | None = None,
                 init_logit_scale: float | None = None, train_logit_scale: bool = True,
                 max_logit_scale: float = math.log(100.0), mask_same_image: bool = True,
                 image_stack: dict | None = None, text_stack: dict | None = None,
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or CLIP_PREPROCESSOR, init_cfg=init_cfg)
        import open_clip
        if model_cfg is not None:
            model_name = None
        if (model_name is None) == (model_cfg is None):
            raise ValueError('CLIPRetrieval: give model_name (+ pretrained) or model_cfg')
        from sherl_mm.backbones.open_clip import _build_clip

        # build the CLIP once; both stacks share it (each registers only its tower)
        clip = _build_clip(type(self).__name__, model_name, pretrained, model_cfg, None, None)
        image = BACKBONES.build(dict(type='OpenCLIPVisionStack', model=clip, **(image_stack or {})))
        text = BACKBONES.build(dict(type='OpenCLIPTextStack', model=clip, **(text_stack or {})))
        scale = float(clip.logit_scale.detach()) if init_logit_scale is None and hasattr(clip, 'logit_scale') \
            else float(math.log(1 / 0.07) if init_logit_scale is None else init_logit_scale)
        self.logit_scale = nn.Parameter(torch.tensor(scale), requires_grad=train_logit_scale)
        self.max_logit_scale = max_logit_scale
        self.tokenizer = open_clip.get_tokenizer(tokenizer_name or model_name or 'ViT-B-32')
        self.stacks = build_tuned_stacks(dict(image=image, text=text), tuner, default_targets=('image', 'text'))
        self.mask_same_image = mask_same_image

    def _pooled(self, name: str, hidden: Tensor, context: dict) -> Tensor:
        # tuners whose output replaces the stack's (LST, UniPT) return tokens
        # without the output stage; apply the tower's (norm, pooling, projection)
        if hidden.dim() == 3:
            hidden = self.stacks[name].stack.finalize(hidden, context)
        return hidden

    def embed_images(self, images: Tensor) -> Tensor:
        emb = self._pooled('image', self.stacks['image'](images).hidden, {})
        return emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        stack = self.stacks['text'].stack
        ids = self.tokenizer(list(texts), context_length=stack.context_length)
        # trim the padding after the longest caption (its EOT is the largest id)
        length = int(ids.argmax(dim=-1).max()) + 1
        return ids[:, :max(length, 1)].to(self.logit_scale.device)

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        ids = self.tokenize(texts)
        emb = self._pooled('text', self.stacks['text'](ids).hidden, dict(text=ids))
        return emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def loss_from_embeddings(self, img: Tensor, txt: Tensor, image_ids: Tensor | None) -> dict:
        scale = self.logit_scale.clamp(max=self.max_logit_scale).exp()
        loss = info_nce(scale * img @ txt.t(), image_ids if self.mask_same_image else None)
        return dict(loss=loss, logit_scale=scale.detach())


__all__ = ['CLIP_PREPROCESSOR', 'CLIPRetrieval']
