"""What the dual-encoder retrieval models share: the mmengine model interface.

``forward(inputs, data_samples, mode)`` with

* ``inputs``: the normalised image batch ``(B, 3, H, W)`` (the data
  preprocessor stacks and normalises the uint8 images);
* ``data_samples``: one element per image with ``text`` (one caption, train
  mode of :class:`~sherl_mm.datasets.KarpathyRetrievalDataset`) or ``texts``
  (all its captions, eval mode) and ``img_idx``.

``mode='loss'`` embeds the B images and their B captions and returns the
loss; ``mode='predict'`` returns the samples with ``img_embed`` ``(E,)`` and
``txt_embeds`` ``(n_i, E)`` (L2-normalised), which
:class:`~sherl_mm.evaluation.RetrievalRecall` turns into R@K.
"""
from __future__ import annotations

from typing import Sequence

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch import Tensor

from sherl_mm.registry import TUNERS


def sample_get(sample, key: str, default=None):
    if isinstance(sample, dict):
        return sample.get(key, default)
    return getattr(sample, key, default)


def tuner_trains_backbone(tuner: dict | None) -> bool:
    cls = TUNERS.get((tuner or dict(type='LinearProbe'))['type'])
    return bool(getattr(cls, 'trains_backbone', False))


class DualEncoderRetrieval(BaseModel):
    """Base class: subclasses implement :meth:`embed_images`,
    :meth:`embed_texts` and :meth:`loss_from_embeddings`."""

    #: predict mode encodes captions in chunks of this many
    text_chunk_size: int = 256

    def embed_images(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        raise NotImplementedError

    def loss_from_embeddings(self, img: Tensor, txt: Tensor, image_ids: Tensor | None) -> dict:
        raise NotImplementedError

    @staticmethod
    def _captions(data_samples: Sequence) -> list[str]:
        texts = []
        for i, sample in enumerate(data_samples):
            text = sample_get(sample, 'text')
            if text is None:
                many = sample_get(sample, 'texts')
                if not many:
                    raise KeyError(f'data sample {i} has neither text nor texts')
                text = many[0]
            texts.append(str(text))
        return texts

    @staticmethod
    def _image_ids(data_samples: Sequence, device) -> Tensor | None:
        ids = [sample_get(s, 'img_idx') for s in data_samples]
        if any(i is None for i in ids):
            return None
        return torch.as_tensor([int(i) for i in ids], device=device)

    def forward(self, inputs: Tensor, data_samples: Sequence | None = None, mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            img = self.embed_images(inputs)
            return img if data_samples is None else (img, self.embed_texts(self._captions(data_samples)))
        raise RuntimeError(f'{type(self).__name__}: invalid mode {mode!r}; use loss, predict or tensor')

    def loss(self, inputs: Tensor, data_samples: Sequence) -> dict:
        img = self.embed_images(inputs)
        txt = self.embed_texts(self._captions(data_samples))
        return self.loss_from_embeddings(img, txt, self._image_ids(data_samples, img.device))

    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: Sequence) -> list:
        img = self.embed_images(inputs)
        groups = []
        for i, sample in enumerate(data_samples):
            texts = sample_get(sample, 'texts')
            if texts is None:
                text = sample_get(sample, 'text')
                if text is None:
                    raise KeyError(f'data sample {i} has neither texts nor text')
                texts = [text]
            groups.append([str(t) for t in texts])
        flat = [t for g in groups for t in g]
        txt = torch.cat([self.embed_texts(flat[s:s + self.text_chunk_size])
                         for s in range(0, len(flat), self.text_chunk_size)]) if flat else img.new_zeros(0, 1)
        out, start = [], 0
        for i, sample in enumerate(data_samples):
            if not isinstance(sample, BaseDataElement):
                sample = BaseDataElement(metainfo=dict(sample))
            n = len(groups[i])
            sample.set_field(img[i].detach().cpu(), 'img_embed', field_type='data')
            sample.set_field(txt[start:start + n].detach().cpu(), 'txt_embeds', field_type='data')
            start += n
            out.append(sample)
        return out


__all__ = ['DualEncoderRetrieval', 'sample_get', 'tuner_trains_backbone']
