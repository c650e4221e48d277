"""CLIP-ViL-style VQA (Shen et al., 2021) as SHERL fine-tunes it (``docs/vqa.md``).

::

    image  -> frozen image encoder (CLIP visual / CNN stack) -> grid features (B, V, C)
           [adaptive average pooling of the grid to ``visual_grid``]
    question -> BERT tokens
    cross  = VisualBertStack(cat(BERT embeddings(question), LN(visual_proj(grid)) + pos))
             12 BERT layers by default; the tuner (SHERL: MTSA over the input
             and layers 0..10, late regulation = layer 11) acts here
    pooled = pooler(cross[:, 0])                      (BERT pooler on [CLS])
    logits = logit_fc(pooled): Linear(D, 2D) - GELU - LayerNorm(2D) - Linear(2D, A)
    loss   = BCE-with-logits(logits, soft scores) * A   (LXMERT/CLIP-ViL's scaling)

Trained: the tuner's modules and ``logit_fc`` (as in the authors' code); the image
encoder is frozen whatever the tuner (``train_image_encoder`` to override),
the glue inside the cross stack (visual projection, visual positions,
pooler) follows ``train_glue`` (default: trained only by tuners that train
the backbone, i.e. frozen under SHERL as ``visn_fc`` is in CLIP-ViL).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from sherl_mm.backbones.base import map_to_tokens
from sherl_mm.datasets.vqa import load_answer_vocab, resolve_answer_vocab
from sherl_mm.registry import BACKBONES, MODELS
from sherl_mm.tuners import build_tuned_stacks

from ..retrieval.base import sample_get, tuner_trains_backbone
from ..retrieval.vse import IMAGENET_PREPROCESSOR

#: tuners that run a stack's input stage under torch.no_grad()
NO_GRAD_INPUT_TUNERS = ('SHERL', 'LST', 'UniPT', 'LinearProbe')


class AnswerHead(nn.Module):
    """LXMERT/CLIP-ViL ``logit_fc``: Linear(D, 2D) - GELU - LayerNorm(2D, 1e-12) - Linear(2D, A)."""

    def __init__(self, width: int, num_answers: int, std: float = 0.02) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.norm = nn.LayerNorm(2 * width, eps=1e-12)
        self.fc2 = nn.Linear(2 * width, num_answers)
        for linear in (self.fc1, self.fc2):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(F.gelu(self.fc1(x))))


@MODELS.register_module()
class CLIPViLVQA(BaseModel):
    """Frozen image encoder + cross-modal BERT (tuned) + answer classifier.

    Args:
        image_encoder: BACKBONES config of the image stack (e.g.
            ``OpenCLIPVisionStack(output='tokens')``, ``ResNetStack``,
            ``EfficientNetStack``); its output map or tokens are the grid
            features.
        cross_encoder: BACKBONES config of a :class:`VisualBertStack`
            (``visual_dim`` defaults to the image encoder's width).
        tuner: TUNERS config; stack names ``image`` and ``cross`` (default
            target ``cross``).
        num_answers: size of the answer vocabulary; default: the length of
            ``answer_vocab``.
        answer_vocab: JSON file of the answers (list, or answer -> label
            dict); turns predicted labels into strings. Or
            ``dict(file=..., ann_file=<training annotations>, min_count=9)``:
            the file is built from the annotations (and cached) when it does
            not exist yet, exactly as :class:`VQAv2Dataset` builds it.
        visual_grid: ``(h, w)`` (or an int) adaptive average pooling of the
            image grid before the projection; ``None`` keeps it.
        max_question_length: token limit of the questions (20 in LXMERT).
        train_glue: train the cross stack's visual projection, positions and
            pooler (default: only under tuners that train the backbone). The
            pooler runs after the stack, but the projection is part of the
            input stage, which SHERL/LST/UniPT run without grad, so under
            those tuners only the pooler can train (a warning says so).
        train_image_encoder: train the image encoder too (CLIP-ViL's full
            fine-tuning baseline does, with a separate SGD optimiser).
        data_preprocessor: default ImageNet normalisation.
    """

    def __init__(self, image_encoder: dict, cross_encoder: dict, tuner: dict | None = None,
                 num_answers: int | None = None, answer_vocab: str | dict | None = None,
                 visual_grid: int | Sequence[int] | None = None, max_question_length: int = 20,
                 train_glue: bool | None = None, train_image_encoder: bool = False,
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or IMAGENET_PREPROCESSOR, init_cfg=init_cfg)
        if isinstance(answer_vocab, dict):
            spec = dict(answer_vocab)
            unknown = set(spec) - {'file', 'ann_file', 'min_count'}
            if unknown or 'file' not in spec:
                raise ValueError(f'CLIPViLVQA: answer_vocab dict takes file, ann_file and min_count, got {spec}')
            self.answers = resolve_answer_vocab(spec['file'], spec.get('ann_file'), spec.get('min_count', 9))
        else:
            self.answers = load_answer_vocab(answer_vocab) if answer_vocab else None
        if num_answers is None:
            if self.answers is None:
                raise ValueError('CLIPViLVQA: give num_answers or answer_vocab')
            num_answers = len(self.answers)
        elif self.answers is not None and len(self.answers) != num_answers:
            raise ValueError(f'CLIPViLVQA: num_answers={num_answers} but {answer_vocab} holds '
                             f'{len(self.answers)} answers')
        self.num_answers = num_answers
        image = BACKBONES.build(image_encoder) if isinstance(image_encoder, dict) else image_encoder
        if isinstance(cross_encoder, dict):
            cross_cfg = dict(cross_encoder)
            cross_cfg.setdefault('type', 'VisualBertStack')
            if 'visual_dim' not in cross_cfg:
                from ..retrieval.vse import _probe_width
                cross_cfg['visual_dim'] = _probe_width(image)
            cross = BACKBONES.build(cross_cfg)
        else:
            cross = cross_encoder
        if getattr(cross, 'tokenizer', None) is None:
            raise ValueError('CLIPViLVQA: the cross encoder has no tokenizer; give it tokenizer=<local dir>')
        self.visual_grid = (visual_grid, visual_grid) if isinstance(visual_grid, int) else \
            (tuple(visual_grid) if visual_grid is not None else None)
        self.max_question_length = max_question_length
        self.stacks = build_tuned_stacks(dict(image=image, cross=cross), tuner, default_targets=('cross',))
        trains_backbone = tuner_trains_backbone(tuner)
        self.train_glue = trains_backbone if train_glue is None else bool(train_glue)
        kind = (tuner or dict(type='LinearProbe'))['type']
        train_input_glue = self.train_glue
        if self.train_glue and kind in NO_GRAD_INPUT_TUNERS:
            MMLogger.get_current_instance().warning(
                f'CLIPViLVQA: under {kind} the cross stack\'s input stage (visual projection and positions) runs '
                f'without grad, so train_glue=True trains only the pooler; the visual projection stays frozen')
            train_input_glue = False
        for module in cross.glue_modules('input'):
            module.requires_grad_(train_input_glue)
        for module in cross.glue_modules('output'):
            module.requires_grad_(self.train_glue)
        self.train_image_encoder = train_image_encoder
        self.stacks['image'].requires_grad_(train_image_encoder)
        self.logit_fc = AnswerHead(cross.input_width, num_answers,
                                   float(getattr(cross.config, 'initializer_range', 0.02)))

    def train(self, mode: bool = True) -> 'CLIPViLVQA':
        super().train(mode)
        if mode and not self.train_image_encoder:
            # a frozen feature extractor: no dropout / drop-connect / BN updates
            self.stacks['image'].eval()
        return self

    # ------------------------------------------------------------------ parts
    def visual_features(self, images: Tensor) -> Tensor:
        if self.train_image_encoder:
            feats = self.stacks['image'](images).hidden
        else:
            with torch.no_grad():
                feats = self.stacks['image'](images).hidden
        if feats.dim() == 4:
            if self.visual_grid is not None:
                feats = F.adaptive_avg_pool2d(feats, self.visual_grid)
            return map_to_tokens(feats)
        if feats.dim() != 3:
            raise ValueError(f'CLIPViLVQA: the image encoder returned shape {tuple(feats.shape)}; expected a '
                             f'feature map (B, C, H, W) or tokens (B, K, C)')
        if self.visual_grid is not None:
            n = feats.shape[1]
            side = int(round(n ** 0.5))
            if side * side != n:
                raise ValueError(f'CLIPViLVQA: visual_grid needs a square token grid, got {n} tokens')
            feats = map_to_tokens(F.adaptive_avg_pool2d(feats.transpose(1, 2).reshape(feats.shape[0], -1, side, side),
                                                        self.visual_grid))
        return feats

    def logits(self, images: Tensor, questions: Sequence[str]) -> Tensor:
        visual = self.visual_features(images)
        cross = self.stacks['cross'].stack
        ids, mask = cross.encode_texts(list(questions), max_length=self.max_question_length, device=visual.device)
        hidden = self.stacks['cross'](ids, mask, visual_feats=visual).hidden
        return self.logit_fc(cross.pooler(hidden[:, 0]))

    def targets(self, data_samples: Sequence, device) -> Tensor:
        target = torch.zeros(len(data_samples), self.num_answers, device=device)
        for i, sample in enumerate(data_samples):
            labels = sample_get(sample, 'answer_labels') or []
            scores = sample_get(sample, 'answer_scores') or []
            if len(labels) != len(scores):
                raise ValueError(f'data sample {i}: {len(labels)} answer_labels but {len(scores)} answer_scores')
            for label, score in zip(labels, scores):
                if not 0 <= int(label) < self.num_answers:
                    raise ValueError(f'data sample {i} (question_id {sample_get(sample, "question_id")}): answer '
                                     f'label {label} is outside the model\'s {self.num_answers} answers; the '
                                     f'dataset\'s answer vocabulary does not match num_answers')
                target[i, int(label)] = float(score)
        return target

    @staticmethod
    def _questions(data_samples: Sequence) -> list[str]:
        out = []
        for i, sample in enumerate(data_samples):
            q = sample_get(sample, 'question')
            if q is None:
                raise KeyError(f'data sample {i} has no question')
            out.append(str(q))
        return out

    # -------------------------------------------------------------- interface
    def forward(self, inputs: Tensor, data_samples: Sequence | None = None, mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.logits(inputs, self._questions(data_samples))
        raise RuntimeError(f'CLIPViLVQA: invalid mode {mode!r}; use loss, predict or tensor')

    def loss(self, inputs: Tensor, data_samples: Sequence) -> dict:
        logits = self.logits(inputs, self._questions(data_samples))
        target = self.targets(data_samples, logits.device)
        # BCE averaged over batch x answers, times the number of answers (LXMERT)
        loss = F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]
        return dict(loss=loss)

    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: Sequence) -> list:
        logits = self.logits(inputs, self._questions(data_samples))
        scores, labels = logits.sigmoid().max(dim=1)
        out = []
        for i, sample in enumerate(data_samples):
            if not isinstance(sample, BaseDataElement):
                sample = BaseDataElement(metainfo=dict(sample))
            label = int(labels[i])
            answer = self.answers[label] if self.answers is not None else str(label)
            sample.set_metainfo(dict(pred_label=label, pred_score=float(scores[i]), pred_answer=answer))
            out.append(sample)
        return out


__all__ = ['AnswerHead', 'CLIPViLVQA']
