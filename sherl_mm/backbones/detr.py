"""DETR/MDETR transformer encoder and decoder exposed as backbone stacks.

Both wrap mmdet's ``DetrTransformerEncoderLayer`` / ``DetrTransformerDecoderLayer``
(pure ``mmcv.cnn``; batch-first ``(B, N, D)``). The defaults are MDETR's:
post-norm, ``D=256``, 8 heads, FFN 2048, dropout 0.1 (attention weights, both
residual branches and inside the FFN, as ``torch.nn.Transformer`` does).

Encoder (``layout='tokens'``)::

    hidden, ctx = enc.embed(src, query_pos, key_padding_mask)
    # src: (B, S, D) image tokens followed by text tokens
    # query_pos: (B, S, D) sine positions for image tokens, zeros for text
    # key_padding_mask: (B, S) bool, True on padding

Decoder::

    hidden, ctx = dec.embed(query_pos, memory, memory_pos, memory_key_padding_mask)
    # query_pos: (Q, D) or (B, Q, D) learned query embedding; hidden starts at zeros
    # memory: (B, S, D), memory_pos: (B, S, D), memory_key_padding_mask: (B, S)

A route may override ``memory`` for some layers (SHERL's ``late_context``);
keys in the cross-attention are always ``memory + memory_pos``. The decoder's
:meth:`finalize` is its final LayerNorm (also applied by MDETR to the
intermediate outputs used by the auxiliary losses).
"""
from __future__ import annotations

import copy

import torch
from mmcv.cnn import build_norm_layer
from mmdet.models.layers.transformer.detr_layers import DetrTransformerDecoderLayer, DetrTransformerEncoderLayer
from torch import Tensor, nn

from sherl_mm.registry import BACKBONES

from ._common import PretrainedStack


def _attn_cfg(embed_dims: int, num_heads: int, dropout: float) -> dict:
    # attention-weight dropout and residual-branch dropout, both ``dropout``
    # (torch.nn.MultiheadAttention(dropout=p) + MDETR's dropout1/dropout3)
    return dict(embed_dims=embed_dims, num_heads=num_heads, attn_drop=dropout, proj_drop=0.,
                dropout_layer=dict(type='Dropout', drop_prob=dropout), batch_first=True)


def _ffn_cfg(embed_dims: int, feedforward_channels: int, dropout: float) -> dict:
    return dict(embed_dims=embed_dims, feedforward_channels=feedforward_channels, num_fcs=2, ffn_drop=dropout,
                act_cfg=dict(type='ReLU', inplace=True))


def _xavier_(module: nn.Module) -> None:
    # MDETR/DETR ``Transformer._reset_parameters``: xavier-uniform on every
    # matrix; biases and LayerNorms keep their defaults.
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


@BACKBONES.register_module()
class DetrEncoderStack(PretrainedStack):
    """``num_layers`` post-norm DETR encoder layers (self-attention + FFN).

    Args:
        num_layers: number of layers (MDETR: 6).
        embed_dims: width ``D``.
        num_heads: attention heads.
        feedforward_channels: FFN hidden width.
        dropout: dropout everywhere in the layer.
        layer_cfg: full ``DetrTransformerEncoderLayer`` kwargs; overrides the
            four arguments above when given.
    """

    layout = 'tokens'

    def __init__(self, num_layers: int = 6, embed_dims: int = 256, num_heads: int = 8,
                 feedforward_channels: int = 2048, dropout: float = 0.1, layer_cfg: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if layer_cfg is None:
            layer_cfg = dict(self_attn_cfg=_attn_cfg(embed_dims, num_heads, dropout),
                             ffn_cfg=_ffn_cfg(embed_dims, feedforward_channels, dropout))
        self.layers = nn.ModuleList(
            [DetrTransformerEncoderLayer(**copy.deepcopy(layer_cfg)) for _ in range(num_layers)])
        self.embed_dims = self.layers[0].embed_dims if num_layers else embed_dims
        _xavier_(self)

    @property
    def input_width(self) -> int:
        return self.embed_dims

    @property
    def widths(self) -> list[int]:
        return [self.embed_dims] * self.num_layers

    def embed(self, src: Tensor, query_pos: Tensor | None = None,
              key_padding_mask: Tensor | None = None) -> tuple[Tensor, dict]:
        if src.dim() != 3 or src.shape[-1] != self.embed_dims:
            raise ValueError(f'DetrEncoderStack: src must be (B, S, {self.embed_dims}), got {tuple(src.shape)}')
        return src, dict(query_pos=query_pos, key_padding_mask=key_padding_mask)

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        return self.layers[index](hidden, query_pos=context.get('query_pos'),
                                  key_padding_mask=context.get('key_padding_mask'))


@BACKBONES.register_module()
class DetrDecoderStack(PretrainedStack):
    """``num_layers`` post-norm DETR decoder layers (self-attention,
    cross-attention to ``memory``, FFN) and the final LayerNorm.

    Args: as :class:`DetrEncoderStack`; ``post_norm_cfg`` is the final norm.
    """

    layout = 'tokens'

    def __init__(self, num_layers: int = 6, embed_dims: int = 256, num_heads: int = 8,
                 feedforward_channels: int = 2048, dropout: float = 0.1, layer_cfg: dict | None = None,
                 post_norm_cfg: dict | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if layer_cfg is None:
            layer_cfg = dict(self_attn_cfg=_attn_cfg(embed_dims, num_heads, dropout),
                             cross_attn_cfg=_attn_cfg(embed_dims, num_heads, dropout),
                             ffn_cfg=_ffn_cfg(embed_dims, feedforward_channels, dropout))
        self.layers = nn.ModuleList(
            [DetrTransformerDecoderLayer(**copy.deepcopy(layer_cfg)) for _ in range(num_layers)])
        self.embed_dims = self.layers[0].embed_dims if num_layers else embed_dims
        self.post_norm = build_norm_layer(post_norm_cfg or dict(type='LN'), self.embed_dims)[1]
        _xavier_(self)

    @property
    def input_width(self) -> int:
        return self.embed_dims

    @property
    def widths(self) -> list[int]:
        return [self.embed_dims] * self.num_layers

    def embed(self, query_pos: Tensor, memory: Tensor, memory_pos: Tensor | None = None,
              memory_key_padding_mask: Tensor | None = None) -> tuple[Tensor, dict]:
        if memory.dim() != 3:
            raise ValueError(f'DetrDecoderStack: memory must be (B, S, D), got {tuple(memory.shape)}')
        batch = memory.shape[0]
        if query_pos.dim() == 2:
            query_pos = query_pos.unsqueeze(0).expand(batch, -1, -1)
        hidden = torch.zeros_like(query_pos)  # DETR: tgt = zeros, queries enter as positions
        return hidden, dict(query_pos=query_pos, memory=memory, memory_pos=memory_pos,
                            memory_key_padding_mask=memory_key_padding_mask)

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        memory = context['memory']
        memory_pos = context.get('memory_pos')
        if memory_pos is None:
            # mmcv's attention would otherwise reuse query_pos as key_pos when shapes agree
            memory_pos = torch.zeros_like(memory)
        return self.layers[index](hidden, key=memory, value=memory, query_pos=context.get('query_pos'),
                                  key_pos=memory_pos,
                                  key_padding_mask=context.get('memory_key_padding_mask'))

    def finalize(self, hidden: Tensor, context: dict) -> Tensor:
        return self.post_norm(hidden)

    #: finalize is the final LayerNorm only (see BackboneStack.output_stage)
    output_stage = 'norm'


__all__ = ['DetrDecoderStack', 'DetrEncoderStack']
