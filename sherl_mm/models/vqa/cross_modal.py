"""The single-stream cross-modal transformer of CLIP-ViL (VisualBERT style) as a stack.

CLIP-ViL with ``--llayers 12 --xlayers 0 --rlayers 0 --visualbert_style``
runs one BERT encoder over the concatenation of the question's BERT
embeddings and the projected visual grid features (``docs/vqa.md``)::

    text   = BERT embeddings(input_ids)                          (B, T, D)
    visual = LN(visual_proj(grid features)) + visual position    (B, V, D)
    hidden = dropout(cat(text, visual))        <- the stack's embed output
    layers = the BERT layers, on the joint sequence with the joint padding mask

:class:`VisualBertStack` is an :class:`~sherl_mm.backbones.HFEncoderStack`
with that input stage, so every tuner (SHERL's late regulation of the last
layer, LoRA, adapters ...) applies to it unchanged. The visual projection,
the visual position/type embeddings and the BERT pooler (``pooler``, applied
by the VQA model to the first token; loaded from the pretrained BERT
checkpoint when it has one) are part of the stack: they are loaded
from a pretrained CLIP-ViL checkpoint and frozen under PETL tuners, as
``visn_fc`` is in the authors' code (the VQA model can train them with
``train_glue=True`` when no vision-language checkpoint exists).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor, nn

from sherl_mm.backbones.hf import HFEncoderStack, _key_padding_mask
from sherl_mm.registry import BACKBONES


@BACKBONES.register_module()
class VisualBertStack(HFEncoderStack):
    """A BERT-like encoder over ``cat(text embeddings, projected visual features)``.

    Args:
        pretrained / config / model / tokenizer / attn_implementation: the
            BERT, as for :class:`HFEncoderStack`.
        visual_dim: width of the visual features given to :meth:`embed`.
        num_visual_positions: learnable position embeddings of the visual
            tokens (the grid size, e.g. 25 for CLIP-ViL's ``--pos_num 25``);
            ``0`` disables them. The number of visual tokens must not exceed it.
        visual_token_type: token type id added to the visual tokens (1, as in
            VisualBERT), when the model has at least 2 token types; ``None``
            adds none.
    """

    def __init__(self, visual_dim: int, pretrained: str | os.PathLike | None = None, config: dict | None = None,
                 model: nn.Module | None = None, tokenizer: str | os.PathLike | None = None,
                 attn_implementation: str | None = None, num_visual_positions: int = 0,
                 visual_token_type: int | None = 1, init_cfg: dict | None = None) -> None:
        super().__init__(pretrained=pretrained, config=config, model=model, tokenizer=tokenizer,
                         attn_implementation=attn_implementation, init_cfg=init_cfg)
        hidden = self.input_width
        eps = float(getattr(self.model.config, 'layer_norm_eps', 1e-12))
        std = float(getattr(self.model.config, 'initializer_range', 0.02))
        self.visual_dim = visual_dim
        self.visual_proj = nn.Linear(visual_dim, hidden)
        self.visual_norm = nn.LayerNorm(hidden, eps=eps)
        self.visual_pos = nn.Parameter(torch.zeros(num_visual_positions, hidden)) if num_visual_positions else None
        self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        # BERT's init_bert_weights: N(0, initializer_range), zero bias
        for linear in (self.visual_proj, self.pooler[0]):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)
        if self.visual_pos is not None:
            nn.init.normal_(self.visual_pos, std=std)
        if pretrained is not None:
            self._load_pooler(os.fspath(pretrained))
        types = getattr(getattr(self.model.embeddings, 'token_type_embeddings', None), 'num_embeddings', 0)
        self.visual_token_type = visual_token_type if visual_token_type is not None and types > visual_token_type \
            else None

    def _load_pooler(self, directory: str) -> None:
        """Take BERT's pooler (``pooler.dense``) from the pretrained checkpoint when it holds one."""
        path = os.path.join(directory, 'model.safetensors')
        if not os.path.isfile(path):
            return
        from safetensors import safe_open
        with safe_open(path, 'pt') as f:
            keys = set(f.keys())
            for prefix in ('pooler.dense.', 'bert.pooler.dense.'):
                if prefix + 'weight' in keys and prefix + 'bias' in keys:
                    weight, bias = f.get_tensor(prefix + 'weight'), f.get_tensor(prefix + 'bias')
                    if tuple(weight.shape) == tuple(self.pooler[0].weight.shape):
                        with torch.no_grad():
                            self.pooler[0].weight.copy_(weight)
                            self.pooler[0].bias.copy_(bias)
                    return

    def glue_modules(self, part: str = 'all') -> list[nn.Module | nn.Parameter]:
        """The modules added around the BERT: ``part='input'`` (projection,
        norm, positions: the input stage), ``'output'`` (the pooler) or ``'all'``."""
        inputs: list = [self.visual_proj, self.visual_norm]
        if self.visual_pos is not None:
            inputs.append(self.visual_pos)
        outputs: list = [self.pooler]
        return {'input': inputs, 'output': outputs, 'all': inputs + outputs}[part]

    def embed_visual(self, visual_feats: Tensor) -> Tensor:
        if visual_feats.shape[-1] != self.visual_dim:
            raise ValueError(f'VisualBertStack: visual features have width {visual_feats.shape[-1]}, '
                             f'visual_dim is {self.visual_dim}')
        x = self.visual_norm(self.visual_proj(visual_feats))
        if self.visual_pos is not None:
            n = x.shape[1]
            if n > self.visual_pos.shape[0]:
                raise ValueError(f'VisualBertStack: {n} visual tokens but num_visual_positions='
                                 f'{self.visual_pos.shape[0]}; pool the image features to at most that many')
            x = x + self.visual_pos[:n]
        if self.visual_token_type is not None:
            x = x + self.model.embeddings.token_type_embeddings.weight[self.visual_token_type]
        return x

    def embed(self, input_ids: Tensor | Sequence[str] | None = None, attention_mask: Tensor | None = None,
              visual_feats: Tensor | None = None, visual_mask: Tensor | None = None,
              token_type_ids: Tensor | None = None) -> tuple[Tensor, dict]:
        """``input_ids``/``attention_mask`` ``(B, T)`` (or a list of texts) and
        ``visual_feats`` ``(B, V, visual_dim)`` (``visual_mask`` ``(B, V)``, 1 =
        valid, default all valid) -> the joint sequence ``(B, T + V, D)``."""
        if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], str):
            input_ids, attention_mask = self.encode_texts(input_ids)
        if visual_feats is None:
            raise ValueError('VisualBertStack.embed needs visual_feats (B, V, visual_dim)')
        emb = self.model.embeddings
        # BERT embeddings apply LayerNorm and dropout at the end; the visual
        # tokens get their own LayerNorm, then share the dropout.
        text = emb(input_ids=input_ids, token_type_ids=token_type_ids)
        visual = emb.dropout(self.embed_visual(visual_feats))
        hidden = torch.cat([text, visual], dim=1)
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=hidden.device)
        if visual_mask is None:
            visual_mask = torch.ones(batch, visual.shape[1], dtype=attention_mask.dtype, device=hidden.device)
        joint_mask = torch.cat([attention_mask, visual_mask.to(attention_mask.dtype)], dim=1)
        context = dict(attention_mask=self._layer_mask(joint_mask, hidden),
                       key_padding_mask=_key_padding_mask(joint_mask, batch, hidden.shape[1], hidden.device),
                       position_ids=None, num_text_tokens=length)
        return hidden, context


__all__ = ['VisualBertStack']
