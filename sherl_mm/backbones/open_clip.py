"""OpenCLIP (open_clip_torch 3.x) text and vision towers as stacks.

The CLIP model comes from one of:

* ``model_name`` (+ optional ``pretrained``, a LOCAL weights file):
  ``open_clip.create_model(model_name, pretrained=path)``; pretrained tags
  such as ``'openai'`` would need a download and are refused;
* ``model_cfg``: ``dict(embed_dim=..., vision_cfg=dict(...),
  text_cfg=dict(...), quick_gelu=False)`` for ``open_clip.model.CLIP``
  (random weights; add ``custom_text=True`` for ``CustomTextCLIP``);
* ``model``: an already built ``CLIP``/``CustomTextCLIP`` (pass the same one
  to both stacks to share it), or a bare ``VisionTransformer`` /
  ``TextTransformer``.

A stack keeps only its own tower registered, so a model holding both stacks
of one CLIP has every weight once. open_clip 3.x runs its resblocks batch
first; a batch-second transformer is transposed around each block, so the
stack's hidden state is always ``(B, K, W)``.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor, nn

from sherl_mm.registry import BACKBONES

from ._common import PretrainedStack

_OUTPUTS = ('embedding', 'tokens')


def _build_clip(owner: str, model_name: str | None, pretrained: str | None, model_cfg: dict | None,
                model: nn.Module | None, create_kwargs: dict | None) -> nn.Module:
    import open_clip
    if sum(x is not None for x in (model_name, model_cfg, model)) != 1:
        raise ValueError(f'{owner}: give exactly one of model_name, model_cfg and model')
    if pretrained is not None and model_name is None:
        raise ValueError(f'{owner}: pretrained (a local weights file) goes with model_name')
    if model is not None:
        return model
    if model_cfg is not None:
        cfg = dict(model_cfg)
        cls = open_clip.model.CustomTextCLIP if cfg.pop('custom_text', False) else open_clip.model.CLIP
        return cls(**cfg)
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f'{owner}: pretrained must be a local weights file for {model_name!r}; '
                                    f'{pretrained!r} does not exist. Download it on a machine with network access '
                                    f'(e.g. open_clip_pytorch_model.bin from the model\'s hub page) and put it '
                                    f'there; tags such as "openai" cannot be downloaded at run time.')
    return open_clip.create_model(model_name, pretrained=pretrained, **(create_kwargs or {}))


class _OpenCLIPStack(PretrainedStack):
    """Shared by the text and vision stacks: ``self.tower`` holds the resblocks."""

    def _check_output(self, output: str) -> str:
        if output not in _OUTPUTS:
            raise ValueError(f'{type(self).__name__}: output must be one of {_OUTPUTS}, got {output!r}')
        return output

    @property
    def layers(self) -> nn.ModuleList:  # type: ignore[override]
        return self.tower.transformer.resblocks

    @layers.setter
    def layers(self, value: nn.ModuleList) -> None:
        self.tower.transformer.resblocks = value

    @property
    def input_width(self) -> int:
        return int(self.tower.transformer.width)

    @property
    def widths(self) -> list[int]:
        return [int(self.tower.transformer.width)] * self.num_layers

    def _run_block(self, index: int, hidden: Tensor, attn_mask: Tensor | None) -> Tensor:
        batch_first = getattr(self.tower.transformer, 'batch_first', True)
        x = hidden if batch_first else hidden.transpose(0, 1)
        x = self.layers[index](x, attn_mask=attn_mask)
        return x if batch_first else x.transpose(0, 1)


class _CLIPTextTower(nn.Module):
    """The text tower of ``open_clip.model.CLIP``, whose text parts are
    attributes of the CLIP model itself; holds the same modules and
    parameters under TextTransformer's attribute names."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer('attn_mask', clip.attn_mask, persistent=False)
        self.pool_type = clip.text_pool_type
        self.eos_id = getattr(clip, 'text_eos_id', None)
        self.pad_id = 0
        self.cls_emb = None
        self.context_length = clip.context_length

    def _embeds(self, text: Tensor) -> tuple[Tensor, Tensor | None]:
        # CLIP.encode_text, written for any length <= context_length
        cast_dtype = self.transformer.get_cast_dtype()
        length = text.shape[1]
        x = self.token_embedding(text).to(cast_dtype)
        x = x + self.positional_embedding[:length].to(cast_dtype)
        attn_mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        return x, attn_mask


@BACKBONES.register_module()
class OpenCLIPTextStack(_OpenCLIPStack):
    """The text tower of an OpenCLIP model.

    Args:
        model_name, pretrained, model_cfg, model, create_kwargs: where the
            CLIP model comes from (see the module docstring).
        output: ``'embedding'`` (default): ``hidden`` is the projected text
            embedding ``(B, E)`` that ``model.encode_text`` returns (EOT
            pooling after ``ln_final``, then ``text_projection``; not
            L2-normalised); ``'tokens'``: the ``ln_final``-normalised tokens
            ``(B, T, W)``.

    Route: :meth:`embed` ``(text)`` with ``text`` the token ids ``(B, T)``,
    ``T <= context_length``: token + positional embedding; layers = the
    text ``transformer.resblocks``; :meth:`finalize` as above.

    Context: ``attn_mask`` (the causal mask, ``(T, T)``, rebuilt for the
    hidden length when a route changed the token count; or open_clip's
    per-sample additive mask), ``text`` (the ids, for EOT pooling),
    ``key_padding_mask`` ``(B, K)`` bool, True at the positions after the
    EOT token (``pool_type='argmax'``/``'eos'``), else at ``pad_id``; the
    causal mask already keeps those positions out of the pooled token.
    """

    # The token ids locate the EOT token after prompts are stripped again.
    prompt_context_policies = {'text': 'keep'}

    def __init__(self, model_name: str | None = None, pretrained: str | os.PathLike | None = None,
                 model_cfg: dict | None = None, model: nn.Module | None = None, output: str = 'embedding',
                 create_kwargs: dict | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        from open_clip.transformer import TextTransformer
        owner = type(self).__name__
        self.output = self._check_output(output)
        clip = _build_clip(owner, model_name, pretrained, model_cfg, model, create_kwargs)
        if isinstance(clip, TextTransformer):
            tower = clip
        elif isinstance(getattr(clip, 'text', None), nn.Module):
            tower = clip.text
            if not isinstance(tower, TextTransformer):
                raise TypeError(f'{owner}: the text tower is a {type(tower).__name__} (a Hugging Face text model); '
                                f'wrap its model with HFEncoderStack instead')
        elif hasattr(clip, 'token_embedding') and hasattr(clip, 'transformer'):
            tower = _CLIPTextTower(clip)
        else:
            raise TypeError(f'{owner}: {type(clip).__name__} is not an OpenCLIP model with a text tower')
        self.tower = tower
        self.tokenizer = None
        if model_name is not None:
            import open_clip
            self.tokenizer = open_clip.get_tokenizer(model_name)

    @property
    def context_length(self) -> int:
        return int(self.tower.context_length)

    def encode_texts(self, texts: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """Token ids ``(B, context_length)`` from open_clip's tokenizer (needs ``model_name``)."""
        if self.tokenizer is None:
            raise RuntimeError(f'{type(self).__name__}: no tokenizer; it comes with model_name '
                               f'(open_clip.get_tokenizer(model_name))')
        if isinstance(texts, str):
            texts = [texts]
        ids = self.tokenizer(list(texts))
        return ids.to(device if device is not None else next(self.parameters()).device)

    def _key_padding_mask(self, text: Tensor, length: int) -> Tensor:
        tower = self.tower
        positions = torch.arange(text.shape[1], device=text.device)
        if tower.pool_type == 'argmax':
            pad = positions[None] > text.argmax(dim=-1, keepdim=True)
        elif tower.pool_type == 'eos' and tower.eos_id is not None:
            pad = positions[None] > (text == tower.eos_id).int().argmax(dim=-1, keepdim=True)
        else:
            pad = text == getattr(tower, 'pad_id', 0)
        if length > text.shape[1]:  # CoCa-style appended class token
            pad = torch.cat([pad, pad.new_zeros(pad.shape[0], length - text.shape[1])], dim=1)
        return pad

    def embed(self, text: Tensor) -> tuple[Tensor, dict]:
        if isinstance(text, (list, tuple)) and text and isinstance(text[0], str):
            text = self.encode_texts(text)
        if text.shape[1] > self.context_length:
            raise ValueError(f'{type(self).__name__}: {text.shape[1]} tokens exceed the context length '
                             f'{self.context_length}')
        x, attn_mask = self.tower._embeds(text)
        if attn_mask is not None and attn_mask.dim() == 2 and attn_mask.shape[0] > x.shape[1]:
            attn_mask = attn_mask[:x.shape[1], :x.shape[1]]
        return x, dict(attn_mask=attn_mask, text=text, key_padding_mask=self._key_padding_mask(text, x.shape[1]))

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        mask = context.get('attn_mask')
        length = hidden.shape[1]
        if mask is not None and mask.dim() == 2 and mask.shape[-1] != length:
            # a route changed the token count (e.g. prompts): causal mask for it
            mask = torch.full((length, length), float('-inf'), dtype=mask.dtype, device=mask.device).triu_(1)
        return self._run_block(index, hidden, mask)

    def finalize(self, hidden: Tensor, context: dict) -> Tensor:
        from open_clip.transformer import text_global_pool
        tower = self.tower
        if tower.cls_emb is not None:  # as TextTransformer.forward
            pooled = tower.ln_final(text_global_pool(hidden, pool_type='last'))
            tokens = hidden[:, :-1]
        else:
            tokens = tower.ln_final(hidden)
            pooled = text_global_pool(tokens, context['text'], pool_type=tower.pool_type,
                                      eos_token_id=getattr(tower, 'eos_id', None))
        if self.output == 'tokens':
            return tokens
        projection = tower.text_projection
        if projection is not None:
            pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
        return pooled


@BACKBONES.register_module()
class OpenCLIPVisionStack(_OpenCLIPStack):
    """The ViT image tower of an OpenCLIP model.

    Args:
        model_name, pretrained, model_cfg, model, create_kwargs: where the
            CLIP model comes from (see the module docstring).
        output: ``'embedding'`` (default): ``hidden`` is the projected image
            embedding ``(B, E)`` that ``model.encode_image`` returns
            (``ln_post`` + class-token/avg pooling + ``proj``; not
            L2-normalised); ``'tokens'``: the ``ln_post``-normalised patch
            tokens ``(B, h*w, W)`` (class token removed).

    Route: :meth:`embed` ``(image)`` ``(B, 3, H, W)`` at the model's image
    size: patch conv + class token + positional embedding (+ patch dropout)
    + ``ln_pre`` (``visual._embeds``); layers = ``visual.transformer.resblocks``
    on ``(B, 1 + h*w, W)`` tokens, class token first; :meth:`finalize` as
    above (``visual._pool`` then ``proj``).

    Context: ``grid_size`` ``(h, w)`` and ``num_prefix_tokens`` (1), e.g. for
    :func:`tokens_to_map`. There is no padding.
    """

    def __init__(self, model_name: str | None = None, pretrained: str | os.PathLike | None = None,
                 model_cfg: dict | None = None, model: nn.Module | None = None, output: str = 'embedding',
                 create_kwargs: dict | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        from open_clip.transformer import VisionTransformer
        owner = type(self).__name__
        self.output = self._check_output(output)
        clip = _build_clip(owner, model_name, pretrained, model_cfg, model, create_kwargs)
        tower = clip if isinstance(clip, VisionTransformer) else getattr(clip, 'visual', None)
        if not isinstance(tower, VisionTransformer):
            raise TypeError(f'{owner}: the image tower is a {type(tower).__name__}; only ViT towers '
                            f'(open_clip.transformer.VisionTransformer) are supported, wrap others with '
                            f'ModuleListStack')
        self.tower = tower

    def embed(self, image: Tensor) -> tuple[Tensor, dict]:
        tower = self.tower
        height, width = image.shape[-2:]
        grid = (height // tower.patch_size[0], width // tower.patch_size[1])
        return tower._embeds(image), dict(grid_size=grid, num_prefix_tokens=1)

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        return self._run_block(index, hidden, None)

    def finalize(self, hidden: Tensor, context: dict) -> Tensor:
        pooled, tokens = self.tower._pool(hidden)
        if self.output == 'tokens':
            return tokens
        if self.tower.proj is not None:
            pooled = pooled @ self.tower.proj
        return pooled


__all__ = ['OpenCLIPTextStack', 'OpenCLIPVisionStack']
