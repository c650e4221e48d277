"""MDETR-like visual grounding detector built from sherl_mm stacks and mmdet pieces.

Pipeline (MDETR ``models/mdetr.py`` + ``models/transformer.py``, batch-first)::

    feat  = image stack (frozen CNN), last feature map           (B, C, h, w)
    img   = input_proj(feat) -> tokens                           (B, hw, D)
    pos   = SinePositionalEncoding(normalize=True) of the padding mask
    txt   = resizer(text stack(tokenizer(captions)))             (B, Lt, D)
    enc   = encoder stack on cat(img, txt), pos = cat(pos, 0), mask = cat(pad, ~attention)
    dec   = decoder stack: tgt = 0, query_pos = query_embed, memory = enc
    heads = soft-token logits, boxes, contrastive-align projections

The four stacks (``image``, ``text``, ``encoder``, ``decoder``) go through
:func:`sherl_mm.tuners.build_tuned_stacks` with the ``tuner=`` config
(targets ``encoder`` and ``decoder`` by default). With SHERL (placement:
``docs/method.md``) the encoder's tuned output (its MTSA output) is the memory of the late
decoder layer only (``late_context``), the early decoder layers attend to the
frozen encoder output (``StackOutput.frozen``), the contrastive-align head
reads the frozen encoder's text tokens, and the single auxiliary output is the
decoder's MTSA output. A decoder tuner that makes its own auxiliary head
inputs returns them as ``StackOutput.aux`` (SHERL: its MTSA output); UniPT's MDETR
form (``docs/method.md``) does so (three up-projected side states), and its decoder
side reads the encoder side memory from the same ``late_context['memory']``.
On plain routes the auxiliary outputs are the decoder-norm'd intermediate layer
outputs, as in MDETR.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from mmdet.models.detectors.base import BaseDetector
from mmdet.models.layers import SinePositionalEncoding
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.logging import print_log
from mmengine.structures import InstanceData
from torch import Tensor, nn

from sherl_mm.backbones.base import StackOutput
from sherl_mm.registry import BACKBONES, MODELS, TUNERS
from sherl_mm.utils.modules import eval_mode

from .head import MDETRHead
from .positive_map import create_positive_map, span_token_mask, tokenize

#: SHERL as in the authors' MDETR code (``docs/method.md``, placements per task: MDETR).
DEFAULT_TUNER = dict(
    type='SHERL',
    per_stack=dict(encoder=dict(select_layers=[0, 1, 3, 5], num_late_layers=0),
                   decoder=dict(select_layers=[0, 2, 3, 4], num_late_layers=1)))


class FeatureResizer(nn.Module):
    """MDETR ``FeatureResizer``: Linear -> LayerNorm(eps 1e-12) -> Dropout."""

    def __init__(self, input_feat_size: int, output_feat_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(input_feat_size, output_feat_size, bias=True)
        self.layer_norm = nn.LayerNorm(output_feat_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.layer_norm(self.fc(x)))


def _build_stack(cfg, name: str):
    if isinstance(cfg, nn.Module):
        return cfg
    if not isinstance(cfg, dict):
        raise TypeError(f'MDETRGrounding: {name} must be a BACKBONES config dict or a BackboneStack, '
                        f'got {type(cfg).__name__}')
    return BACKBONES.build(copy.deepcopy(cfg))


def _last_map(hidden: Any) -> Tensor:
    if isinstance(hidden, (list, tuple)):
        hidden = hidden[-1]
    if not isinstance(hidden, Tensor) or hidden.dim() != 4:
        raise ValueError('MDETRGrounding: the image stack must output a (B, C, H, W) feature map, got '
                         f'{getattr(hidden, "shape", type(hidden))}')
    return hidden


def _image_channels(stack: nn.Module) -> int:
    """Channels of the image stack's output map: ``output_width`` when the
    stack declares it, else measured with one small forward (the output stage
    may change the width, e.g. EfficientNet's 1x1 head conv to 1280)."""
    width = getattr(stack, 'output_width', None)
    if isinstance(width, int):
        return width
    param = next(stack.parameters(), None)
    probe = torch.zeros(1, 3, 64, 64, device=param.device if param is not None else 'cpu')
    with eval_mode(stack), torch.no_grad():
        return int(_last_map(stack(probe).hidden).shape[1])


class _Holder(nn.Module):
    """Holds a raw stack under ``.stack`` so that the pre-tuning model has the
    same parameter names as the tuned one (``stacks.<name>.stack.*``)."""

    def __init__(self, stack: nn.Module) -> None:
        super().__init__()
        self.stack = stack


@MODELS.register_module()
class MDETRGrounding(BaseDetector):
    """MDETR for referring-expression grounding, with any sherl_mm tuner.

    Args:
        image_backbone: BACKBONES config of the image stack (its output map,
            i.e. the last stage, is used); default
            ``dict(type='ResNetStack', depth=101)`` (random weights unless its
            ``pretrained`` or ``mdetr_checkpoint`` gives them).
        text_encoder: BACKBONES config of the text stack (required); must
            expose ``.tokenizer``, e.g. ``dict(type='HFEncoderStack',
            pretrained='<local roberta-base dir>')``.
        encoder: config of the transformer encoder stack (default
            ``DetrEncoderStack`` with MDETR sizes).
        decoder: config of the transformer decoder stack (default
            ``DetrDecoderStack``).
        tuner: TUNERS config applied with ``build_tuned_stacks`` (targets
            ``encoder``/``decoder`` unless it says otherwise). Default: SHERL
            as in the authors' MDETR code.
        embed_dims: transformer width ``D`` (MDETR: 256).
        num_queries: learned queries (MDETR: 100).
        num_tokens: soft-token logits; the last is "no object" (MDETR: 256).
            Captions are truncated to ``num_tokens - 1`` tokens.
        text_dropout: dropout of the text resizer (MDETR: 0.1).
        contrastive_align_loss / contrastive_dim / temperature / eos_coef /
        loss_weights / assigner: see :class:`MDETRHead`.
        aux_loss: also supervise the auxiliary decoder outputs.
        text_padding: ``'longest'`` (MDETR: pad each batch to its longest
            caption) or ``'max_length'`` (pad to ``num_tokens - 1``: every
            sample has the same shapes, which the feature cache of the
            transformer stacks needs).
        train_glue: train ``input_proj``, ``resizer`` and ``query_embed``;
            ``None`` (default) trains them only under a tuner with
            ``trains_backbone=True`` (full fine-tuning).
        mdetr_checkpoint: path of an MDETR checkpoint (e.g.
            ``pretrained_resnet101_checkpoint.pth``) loaded through the key
            map of :mod:`.checkpoint` before the tuner is applied.
        mdetr_checkpoint_ema: use the ``model_ema`` entry when present.
        test_cfg: ``dict(max_per_img=100)``: predictions kept per image.
        data_preprocessor: a ``DetDataPreprocessor`` config.
    """

    def __init__(self,
                 image_backbone: dict | nn.Module | None = None,
                 text_encoder: dict | nn.Module | None = None,
                 encoder: dict | None = None,
                 decoder: dict | None = None,
                 tuner: dict | None = DEFAULT_TUNER,
                 embed_dims: int = 256,
                 num_queries: int = 100,
                 num_tokens: int = 256,
                 text_dropout: float = 0.1,
                 contrastive_align_loss: bool = True,
                 contrastive_dim: int = 64,
                 temperature: float = 0.07,
                 eos_coef: float = 0.1,
                 loss_weights: dict | None = None,
                 assigner: dict | None = None,
                 aux_loss: bool = True,
                 text_padding: str = 'longest',
                 train_glue: bool | None = None,
                 mdetr_checkpoint: str | None = None,
                 mdetr_checkpoint_ema: bool = True,
                 test_cfg: dict | None = None,
                 data_preprocessor: dict | nn.Module | None = None,
                 init_cfg: dict | None = None) -> None:
        if isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(copy.deepcopy(data_preprocessor))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.embed_dims = embed_dims
        self.num_queries = num_queries
        self.num_tokens = num_tokens
        self.aux_loss = aux_loss
        if text_padding not in ('longest', 'max_length'):
            raise ValueError(f"MDETRGrounding: text_padding must be 'longest' or 'max_length', got {text_padding!r}")
        self.text_padding = text_padding
        self.test_cfg = {'max_per_img': num_queries, **(test_cfg or {})}

        if text_encoder is None:
            raise ValueError("MDETRGrounding: text_encoder is required, e.g. dict(type='HFEncoderStack', "
                             "pretrained='<local roberta-base dir>') (MDETR uses RoBERTa-base)")
        stacks = dict(
            image=_build_stack(image_backbone or dict(type='ResNetStack', depth=101), 'image_backbone'),
            text=_build_stack(text_encoder, 'text_encoder'),
            encoder=_build_stack(encoder or dict(type='DetrEncoderStack', embed_dims=embed_dims), 'encoder'),
            decoder=_build_stack(decoder or dict(type='DetrDecoderStack', embed_dims=embed_dims), 'decoder'))
        for name in ('encoder', 'decoder'):
            if stacks[name].input_width != embed_dims:
                raise ValueError(f'MDETRGrounding: the {name} stack has width {stacks[name].input_width}, '
                                 f'embed_dims is {embed_dims}')
        if not hasattr(stacks['text'], 'tokenizer'):
            raise TypeError(f'MDETRGrounding: the text stack {type(stacks["text"]).__name__} has no .tokenizer')

        self.input_proj = nn.Conv2d(_image_channels(stacks['image']), embed_dims, kernel_size=1)
        text_width = getattr(stacks['text'], 'output_width', None) or stacks['text'].widths[-1]
        self.resizer = FeatureResizer(int(text_width), embed_dims, dropout=text_dropout)
        self.query_embed = nn.Embedding(num_queries, embed_dims)
        self.positional_encoding = SinePositionalEncoding(num_feats=embed_dims // 2, normalize=True)
        self.head = MDETRHead(embed_dims=embed_dims, num_tokens=num_tokens,
                              contrastive_align_loss=contrastive_align_loss, contrastive_dim=contrastive_dim,
                              temperature=temperature, eos_coef=eos_coef, loss_weights=loss_weights,
                              assigner=assigner)

        if mdetr_checkpoint is not None:
            # Load before the tuner exists: the key map targets the plain
            # stacks' names, and tuners that derive from the pretrained
            # weights see them.
            from .checkpoint import load_mdetr_checkpoint
            self.stacks = nn.ModuleDict({k: _Holder(v) for k, v in stacks.items()})
            self.mdetr_load_report = load_mdetr_checkpoint(self, mdetr_checkpoint, use_ema=mdetr_checkpoint_ema)
            del self.stacks
            report = self.mdetr_load_report
            print_log(f'MDETRGrounding: loaded {len(report["loaded"])} tensors from {mdetr_checkpoint}; '
                      f'missing {len(report["missing"])} {report["missing"][:5]}, unexpected '
                      f'{len(report["unexpected"])} {report["unexpected"][:5]}, ignored {len(report["ignored"])}',
                      logger='current', level=logging.WARNING if report['missing'] or report['unexpected']
                      else logging.INFO)
            for module in (*stacks.values(), self.head):
                module._is_init = True  # keep the Runner's init_weights off the loaded weights

        from sherl_mm.tuners import build_tuned_stacks
        self.tuner_cfg = copy.deepcopy(tuner)
        self.stacks = build_tuned_stacks(stacks, tuner, default_targets=('encoder', 'decoder'))
        tuner_type = (tuner or dict(type='LinearProbe'))['type']
        tuner_cls = tuner_type if isinstance(tuner_type, type) else TUNERS.get(tuner_type)
        trains_backbone = bool(getattr(tuner_cls, 'trains_backbone', False))
        self.train_glue = trains_backbone if train_glue is None else bool(train_glue)
        for module in (self.input_proj, self.resizer, self.query_embed):
            module.requires_grad_(self.train_glue)
        self.head.requires_grad_(True)

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        super().init_weights()
        # ``stacks`` is a plain ModuleDict, which BaseModule.init_weights does
        # not descend into: initialise the tuners (and their stacks) here.
        for tuner in self.stacks.values():
            if hasattr(tuner, 'init_weights') and not getattr(tuner, 'is_init', False):
                tuner.init_weights()

    @property
    def tokenizer(self):
        return self.stacks['text'].stack.tokenizer

    # ------------------------------------------------------------------ features
    def extract_feat(self, batch_inputs: Tensor) -> Tensor:
        """The image stack's last feature map ``(B, C, h, w)``."""
        return _last_map(self.stacks['image'](batch_inputs).hidden)

    def _padding_mask(self, batch_inputs: Tensor, data_samples: Sequence[DetDataSample]) -> Tensor:
        """``(B, H, W)`` bool, True on the padding the data preprocessor added."""
        batch, _, height, width = batch_inputs.shape
        mask = batch_inputs.new_ones((batch, height, width), dtype=torch.bool)
        for i, sample in enumerate(data_samples):
            img_h, img_w = sample.metainfo.get('img_shape', (height, width))[:2]
            mask[i, :img_h, :img_w] = False
        return mask

    def _texts(self, data_samples: Sequence[DetDataSample]) -> list[str]:
        texts = []
        for i, sample in enumerate(data_samples):
            text = sample.metainfo.get('text')
            if not isinstance(text, str):
                raise KeyError(f'MDETRGrounding: data sample {i} has no caption string in metainfo "text" '
                               f'(got {type(text).__name__}); add "text" to PackDetInputs meta_keys')
            texts.append(text)
        return texts

    def forward_transformer(self, batch_inputs: Tensor, data_samples: Sequence[DetDataSample]) -> dict:
        """Run everything up to the heads.

        Returns a dict with ``outputs`` (list of head outputs, the last one
        final, the others auxiliary), ``tokenized`` (input ids, attention
        mask and offsets) and the encoder/decoder ``StackOutput``.
        """
        feat = self.extract_feat(batch_inputs)
        mask = self._padding_mask(batch_inputs, data_samples)
        mask = F.interpolate(mask[:, None].float(), size=feat.shape[-2:]).to(torch.bool)[:, 0]
        pos = self.positional_encoding(mask)  # (B, D, h, w)
        img = self.input_proj(feat).flatten(2).transpose(1, 2)
        img_pos = pos.flatten(2).transpose(1, 2).to(img.dtype)
        img_mask = mask.flatten(1)

        tokenized = tokenize(self.tokenizer, self._texts(data_samples), max_length=self.num_tokens - 1,
                             device=batch_inputs.device, padding=self.text_padding)
        text_out: StackOutput = self.stacks['text'](tokenized['input_ids'], tokenized['attention_mask'])
        txt = self.resizer(text_out.hidden).to(img.dtype)
        num_text = txt.shape[1]

        src = torch.cat([img, txt], dim=1)
        src_pos = torch.cat([img_pos, torch.zeros_like(txt)], dim=1)
        src_mask = torch.cat([img_mask, tokenized['attention_mask'].eq(0)], dim=1)
        enc: StackOutput = self.stacks['encoder'](src, src_pos, src_mask)
        frozen_memory = enc.frozen if enc.frozen is not None else enc.hidden
        text_memory = frozen_memory[:, -num_text:]

        # auxiliary head inputs: those the tuned route makes itself (SHERL: its MTSA output), else the
        # decoder-norm'd intermediate layer outputs
        decoder = self.stacks['decoder']
        aux = self.aux_loss and self.training
        dec: StackOutput = decoder(
            self.query_embed.weight, frozen_memory, src_pos, src_mask,
            late_context=dict(memory=enc.hidden), return_intermediates=aux and not decoder.makes_aux)

        hidden_states = []
        if aux:
            if dec.aux is not None:
                hidden_states.extend(dec.aux)
            elif dec.intermediates:
                hidden_states.extend(decoder.stack.finalize(h, {}) for h in dec.intermediates[:-1])
        hidden_states.append(dec.hidden)
        outputs = [self.head(h, text_memory) for h in hidden_states]
        return dict(outputs=outputs, tokenized=tokenized, encoder=enc, decoder=dec)

    def _forward(self, batch_inputs: Tensor, batch_data_samples: Sequence[DetDataSample] | None = None):
        """``mode='tensor'``: ``(logits, boxes)`` of the final output,
        ``(B, Q, T)`` and normalised ``(B, Q, 4)`` cx, cy, w, h."""
        if batch_data_samples is None:
            raise ValueError('MDETRGrounding needs data samples with captions also in tensor mode')
        out = self.forward_transformer(batch_inputs, batch_data_samples)['outputs'][-1]
        return out['logits'], out['boxes']

    # ------------------------------------------------------------------ training
    def build_targets(self, data_samples: Sequence[DetDataSample], tokenized: dict) -> list[dict]:
        targets = []
        text_len = tokenized['input_ids'].shape[1]
        for i, sample in enumerate(data_samples):
            tokens_positive = sample.metainfo.get('tokens_positive')
            bboxes = sample.gt_instances.bboxes
            bboxes = bboxes.tensor if hasattr(bboxes, 'tensor') else bboxes
            if not isinstance(tokens_positive, (list, tuple)) or len(tokens_positive) != len(bboxes):
                raise ValueError(f'MDETRGrounding: data sample {i} needs metainfo "tokens_positive" with one '
                                 f'list of [start, end] character spans per GT box ({len(bboxes)} boxes), '
                                 f'got {tokens_positive!r}')
            offsets = tokenized['offsets'][i]
            positive_map = create_positive_map(offsets, tokens_positive, self.num_tokens).to(bboxes.device)
            token_mask = span_token_mask(offsets, tokens_positive, text_len).to(bboxes.device)
            targets.append(dict(bboxes=bboxes, positive_map=positive_map, token_mask=token_mask,
                                img_shape=tuple(sample.metainfo['img_shape'][:2])))
        return targets

    def loss(self, batch_inputs: Tensor, batch_data_samples: Sequence[DetDataSample]) -> dict:
        result = self.forward_transformer(batch_inputs, batch_data_samples)
        targets = self.build_targets(batch_data_samples, result['tokenized'])
        return self.head.loss(result['outputs'], targets)

    # ------------------------------------------------------------------ inference
    def predict(self, batch_inputs: Tensor, batch_data_samples: Sequence[DetDataSample],
                rescale: bool = True) -> list[DetDataSample]:
        """Boxes of all queries sorted by score ``1 - P(no-object)``
        (``xyxy``, in the original image when ``rescale``), labels 0."""
        out = self.forward_transformer(batch_inputs, batch_data_samples)['outputs'][-1]
        prob = out['logits'].float().softmax(-1)
        scores_all = 1 - prob[..., -1]
        max_per_img = self.test_cfg.get('max_per_img', self.num_queries)
        for b, sample in enumerate(batch_data_samples):
            img_h, img_w = sample.metainfo['img_shape'][:2]
            boxes = bbox_cxcywh_to_xyxy(out['boxes'][b].float())
            boxes = boxes * boxes.new_tensor([img_w, img_h, img_w, img_h])
            scores, order = scores_all[b].sort(descending=True)
            scores, boxes = scores[:max_per_img], boxes[order[:max_per_img]]
            if rescale:
                scale = sample.metainfo.get('scale_factor')
                if scale is not None:
                    boxes = boxes / boxes.new_tensor(scale).repeat(2)
                ori_h, ori_w = sample.metainfo.get('ori_shape', (img_h, img_w))[:2]
                boxes[:, 0::2].clamp_(0, ori_w)
                boxes[:, 1::2].clamp_(0, ori_h)
            sample.pred_instances = InstanceData(
                bboxes=boxes, scores=scores, labels=torch.zeros(len(scores), dtype=torch.long, device=boxes.device))
        return list(batch_data_samples)


__all__ = ['DEFAULT_TUNER', 'FeatureResizer', 'MDETRGrounding']
