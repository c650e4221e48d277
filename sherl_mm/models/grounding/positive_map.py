"""Text tokenisation and the MDETR positive map (box -> text token positions).

MDETR (``datasets/coco.py`` ``create_positive_map``) maps every character span
``[beg, end)`` of a box's ``tokens_positive`` to token positions with
``tokenized.char_to_token`` and marks ``beg_pos .. end_pos`` (inclusive); when
a span end falls on a character no token covers (whitespace, trimmed
offsets) it tries ``beg+1, beg+2`` and ``end-2, end-3``. Here the same lookup
runs on the tokenizer's offset mapping (``return_offsets_mapping=True``),
which every tokenizers-backed tokenizer of transformers 5 returns and which
gives the same answer as ``BatchEncoding.char_to_token``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def tokenize(tokenizer, texts: Sequence[str], max_length: int, device: torch.device | str | None = None,
             padding: str = 'longest') -> dict:
    """Tokenise a batch the way MDETR does (``padding='longest'``), keeping
    the offset mapping. ``max_length`` truncates (MDETR's 256 logits leave
    room for 255 text positions); ``padding='max_length'`` pads every
    caption to it (fixed shapes, e.g. for the feature cache)."""
    if isinstance(texts, str):
        texts = [texts]
    try:
        enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length,
                        return_tensors='pt', return_offsets_mapping=True)
    except NotImplementedError as exc:  # a Python-only tokenizer without offsets
        raise RuntimeError(f'{type(tokenizer).__name__} cannot return an offset mapping, which the grounding '
                           'model needs to map tokens_positive character spans to tokens; use a '
                           'tokenizers-backed ("fast") tokenizer') from exc
    out = dict(input_ids=enc['input_ids'], attention_mask=enc['attention_mask'],
               offsets=enc['offset_mapping'].tolist())
    if device is not None:
        out['input_ids'] = out['input_ids'].to(device)
        out['attention_mask'] = out['attention_mask'].to(device)
    return out


def char_to_token(offsets: Sequence[Sequence[int]], char_index: int) -> int | None:
    """Index of the token whose character span contains ``char_index``
    (special and padding tokens, with empty spans, never match)."""
    for token_index, (start, end) in enumerate(offsets):
        if start <= char_index < end:
            return token_index
    return None


def _find(offsets, candidates) -> int | None:
    for c in candidates:
        if c < 0:
            continue
        pos = char_to_token(offsets, c)
        if pos is not None:
            return pos
    return None


def span_token_mask(offsets: Sequence[Sequence[int]], tokens_positive: Sequence[Sequence[Sequence[int]]],
                    width: int) -> Tensor:
    """``(num_boxes, width)`` bool map: box ``j`` covers token ``t``.

    Args:
        offsets: the offset mapping of one tokenised caption.
        tokens_positive: one entry per box, each a list of ``[beg, end)``
            character spans into the caption.
        width: number of columns (tokens beyond it are dropped).
    """
    mask = torch.zeros((len(tokens_positive), width), dtype=torch.bool)
    for j, spans in enumerate(tokens_positive):
        for beg, end in spans:
            beg_pos = _find(offsets, (beg, beg + 1, beg + 2))
            end_pos = _find(offsets, (end - 1, end - 2, end - 3))
            if beg_pos is None or end_pos is None:
                continue
            mask[j, beg_pos:min(end_pos + 1, width)] = True
    return mask


def create_positive_map(offsets: Sequence[Sequence[int]], tokens_positive: Sequence[Sequence[Sequence[int]]],
                        width: int = 256) -> Tensor:
    """MDETR's soft target: :func:`span_token_mask` as float, each row
    normalised to sum 1 (``/ (sum + 1e-6)``)."""
    pmap = span_token_mask(offsets, tokens_positive, width).float()
    return pmap / (pmap.sum(-1, keepdim=True) + 1e-6)


__all__ = ['char_to_token', 'create_positive_map', 'span_token_mask', 'tokenize']
