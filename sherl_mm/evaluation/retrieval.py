"""Image-text retrieval recall (R@K in both directions, Rsum).

The similarity of every image with every caption is needed, but never held in
memory at once: :func:`retrieval_ranks` multiplies a chunk of queries with all
candidates, takes each query's rank and drops the chunk. A 5K x 25K COCO test
matrix in float32 would be 500 MB; with the default chunk of 1,024 queries
the peak is one 1,024 x 25K block (100 MB) for i2t and 1,024 x 5K for t2i.

Ranks follow VSE++/VSE∞'s ``i2t``/``t2i``: an image's rank is the best
(lowest) rank among its own captions; a caption's rank is its image's rank.
Rank 0 is a hit at R@1. Ties are broken in the query's favour (a candidate
ranks above the ground truth only with a strictly higher score).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from torch import Tensor

from sherl_mm.registry import METRICS


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


@torch.no_grad()
def retrieval_ranks(img_embeds: Tensor, txt_embeds: Tensor, txt_to_img: Tensor,
                    chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Ranks of the ground truth for every image query and every caption query.

    Args:
        img_embeds: ``(N, D)`` image embeddings (the similarity is the dot
            product, so pass normalised embeddings for cosine similarity).
        txt_embeds: ``(T, D)`` caption embeddings.
        txt_to_img: ``(T,)`` index of each caption's image in ``img_embeds``.
        chunk_size: number of queries per block of the similarity matrix.

    Returns:
        ``(i2t_ranks (N,), t2i_ranks (T,))`` as int64 tensors. An image with
        no caption gets rank ``T`` (never a hit).
    """
    n, t = img_embeds.shape[0], txt_embeds.shape[0]
    txt_to_img = txt_to_img.long().to(img_embeds.device)
    if txt_to_img.shape != (t,):
        raise ValueError(f'txt_to_img must have shape ({t},), got {tuple(txt_to_img.shape)}')
    if t and (txt_to_img.min() < 0 or txt_to_img.max() >= n):
        raise ValueError(f'txt_to_img holds image indices outside 0..{n - 1}')
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
    i2t = torch.empty(n, dtype=torch.long)
    t2i = torch.empty(t, dtype=torch.long)
    # image -> text: the best-scored own caption decides the rank
    for start in range(0, n, chunk_size):
        sims = img_embeds[start:start + chunk_size] @ txt_embeds.T            # (c, T)
        rows = torch.arange(start, start + sims.shape[0], device=sims.device)
        own = txt_to_img.unsqueeze(0) == rows.unsqueeze(1)                     # (c, T) bool
        best_own = sims.masked_fill(~own, float('-inf')).amax(dim=1, keepdim=True)
        ranks = (sims > best_own).sum(dim=1)
        ranks[torch.isinf(best_own.squeeze(1))] = t                            # image without captions
        i2t[start:start + sims.shape[0]] = ranks.cpu()
        del sims, own
    # text -> image
    for start in range(0, t, chunk_size):
        sims = txt_embeds[start:start + chunk_size] @ img_embeds.T             # (c, N)
        gt = sims.gather(1, txt_to_img[start:start + sims.shape[0]].unsqueeze(1))
        t2i[start:start + sims.shape[0]] = (sims > gt).sum(dim=1).cpu()
        del sims
    return i2t, t2i


def recall_metrics(i2t: Tensor, t2i: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (in %), median and mean rank (1-based) for both directions, and Rsum."""
    out: dict[str, float] = {}
    rsum = 0.0
    for name, ranks in (('i2t', i2t), ('t2i', t2i)):
        ranks = ranks.double()
        for k in ks:
            r = 100.0 * (ranks < k).double().mean().item()
            out[f'{name}_R@{k}'] = r
            rsum += r
        out[f'{name}_medr'] = float(np.floor(np.median(ranks.cpu().numpy())) + 1)
        out[f'{name}_meanr'] = float(ranks.mean().item() + 1)
    out['rsum'] = rsum
    return out


@METRICS.register_module()
class RetrievalRecall(BaseMetric):
    """R@1/5/10 for image→text and text→image retrieval, and Rsum.

    The model's predict mode returns, per image sample, ``img_embed`` ``(D,)``,
    ``txt_embeds`` ``(n_i, D)`` (that image's captions; any number, 5 for
    COCO/Flickr30K) and ``img_idx`` (a unique image index, which orders the
    images for the folds). Embeddings are compared by dot product.

    Args:
        num_folds: when > 1, also report the mean over that many consecutive
            folds of the images sorted by ``img_idx`` (COCO 1K: ``num_folds=5``
            on the 5K test split gives the ``1k/`` keys, the full set the
            ``5k/`` keys with the COCO config's ``fold_name='1k'``,
            ``full_name='5k'``). With ``report_full=False`` only the folds are
            reported.
        fold_name / full_name: key prefixes of the fold-averaged and the
            full-set metrics when ``num_folds > 1``.
        chunk_size: queries per block of the similarity matrix.
        ks: the K of R@K.
        device: where the similarity blocks are computed ('cpu' or 'cuda';
            None picks CUDA when available).
    """

    default_prefix = 'retrieval'

    def __init__(self, num_folds: int = 1, report_full: bool = True, fold_name: str = 'fold', full_name: str = 'full',
                 chunk_size: int = 1024,
                 ks: Sequence[int] = (1, 5, 10), device: str | None = None, collect_device: str = 'cpu',
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if num_folds < 1:
            raise ValueError(f'RetrievalRecall: num_folds must be >= 1, got {num_folds}')
        self.num_folds = num_folds
        self.report_full = report_full
        self.fold_name = fold_name
        self.full_name = full_name
        self.chunk_size = chunk_size
        self.ks = tuple(ks)
        self.device = device

    def process(self, data_batch: Any, data_samples: Sequence) -> None:
        for sample in data_samples:
            get = sample.get if isinstance(sample, dict) else (lambda k, d=None, s=sample: getattr(s, k, d))
            img, txt, idx = get('img_embed'), get('txt_embeds'), get('img_idx')
            if img is None or txt is None or idx is None:
                raise KeyError('RetrievalRecall: each predicted sample needs img_embed, txt_embeds and img_idx')
            self.results.append((int(idx), _as_tensor(img).float().cpu(), _as_tensor(txt).float().cpu()))

    def _device(self) -> str:
        if self.device is not None:
            return self.device
        return 'cuda' if torch.cuda.is_available() else 'cpu'

    def evaluate_embeddings(self, img_embeds: Tensor, txt_embeds: Tensor, txt_to_img: Tensor) -> dict:
        """Recall metrics of given embeddings (images in fold order)."""
        device = self._device()
        img_embeds, txt_embeds = img_embeds.to(device), txt_embeds.to(device)
        txt_to_img = txt_to_img.to(device)
        metrics: dict[str, float] = {}
        n = img_embeds.shape[0]
        folds = self.num_folds if n >= self.num_folds else 1
        if self.report_full or folds == 1:
            full = recall_metrics(*retrieval_ranks(img_embeds, txt_embeds, txt_to_img, self.chunk_size), self.ks)
            if folds == 1:
                return full
            metrics.update({f'{self.full_name}/{k}': v for k, v in full.items()})
        fold_metrics = []
        bounds = np.linspace(0, n, folds + 1).round().astype(int)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            keep = (txt_to_img >= lo) & (txt_to_img < hi)
            fold_metrics.append(recall_metrics(*retrieval_ranks(
                img_embeds[lo:hi], txt_embeds[keep], txt_to_img[keep] - lo, self.chunk_size), self.ks))
        for key in fold_metrics[0]:
            metrics[f'{self.fold_name}/{key}'] = float(np.mean([m[key] for m in fold_metrics]))
        return metrics

    def compute_metrics(self, results: list) -> dict:
        results = sorted(results, key=lambda r: r[0])
        idxs = [r[0] for r in results]
        if len(set(idxs)) != len(idxs):
            raise ValueError('RetrievalRecall: duplicate img_idx in the predictions; the evaluation dataloader '
                             'must visit every image exactly once (eval mode of the retrieval dataset)')
        img = torch.stack([r[1] for r in results])
        txt = torch.cat([r[2].reshape(-1, img.shape[1]) for r in results])
        txt_to_img = torch.cat([torch.full((r[2].reshape(-1, img.shape[1]).shape[0],), i, dtype=torch.long)
                                for i, r in enumerate(results)])
        return self.evaluate_embeddings(img, txt, txt_to_img)


__all__ = ['RetrievalRecall', 'recall_metrics', 'retrieval_ranks']
