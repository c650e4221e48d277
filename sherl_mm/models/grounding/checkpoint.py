"""Load MDETR's released checkpoints into :class:`MDETRGrounding`.

MDETR (ashkamath/mdetr) saves ``{'model': state_dict, 'model_ema': ...,
'optimizer': ..., 'epoch': ..., 'args': argparse.Namespace}``; its
``--load`` uses ``model_ema`` when present. The key map below turns MDETR's
names into this model's names (``stacks.<name>.stack.*`` are the plain
stacks inside their tuners):

=====================================================  ==========================================================
MDETR key                                              sherl_mm key
=====================================================  ==========================================================
``backbone.0.body.conv1.*``, ``bn1.*``                ``stacks.image.stack.conv1.*``, ``bn1.*`` (ResNetStack)
``backbone.0.body.layerS.B.<rest>``                    ``stacks.image.stack.layers.<first block of stage S + B>.
                                                       <rest>``: ResNetStack flattens the blocks of all stages;
                                                       inside a block mmdet and torchvision share the names
                                                       (conv1..3, bn1..3, downsample.0/.1). ResNet-101:
                                                       layer2.0 -> layers.3, layer3.0 -> 7, layer4.0 -> 30
``input_proj.{weight,bias}``                           ``input_proj.*``
``transformer.text_encoder.<HF name>``                 ``stacks.text.stack.model.<HF name>`` (pooler: ignored)
``transformer.resizer.{fc,layer_norm}.*``              ``resizer.{fc,layer_norm}.*``
``transformer.encoder.layers.N.self_attn.in_proj_*``   ``stacks.encoder.stack.layers.N.self_attn.attn.in_proj_*``
``transformer.encoder.layers.N.self_attn.out_proj.*``  ``...layers.N.self_attn.attn.out_proj.*``
``transformer.encoder.layers.N.linear1.*``             ``...layers.N.ffn.layers.0.0.*``
``transformer.encoder.layers.N.linear2.*``             ``...layers.N.ffn.layers.1.*``
``transformer.encoder.layers.N.norm1/norm2.*``         ``...layers.N.norms.0/1.*``
``transformer.decoder.layers.N.self_attn.*``           ``stacks.decoder.stack.layers.N.self_attn.attn.*``
``transformer.decoder.layers.N.cross_attn_image.*``    ``...layers.N.cross_attn.attn.*``
``transformer.decoder.layers.N.linear1/linear2.*``     ``...layers.N.ffn.layers.0.0/1.*``
``transformer.decoder.layers.N.norm1/norm3/norm4.*``   ``...layers.N.norms.0/1/2.*`` (MDETR has no norm2: its text
                                                       cross-attention is commented out)
``transformer.decoder.norm.*``                         ``stacks.decoder.stack.post_norm.*``
``query_embed.weight``                                 ``query_embed.weight``
``class_embed.*``                                      ``head.class_embed.*``
``bbox_embed.layers.N.*``                              ``head.bbox_embed.layers.N.*``
``contrastive_align_projection_{image,text}.*``        ``head.contrastive_align_projection_{image,text}.*``
=====================================================  ==========================================================

Ignored (no counterpart in this model): the RoBERTa pooler, ``transformer.CLS``,
``contrastive_projection_*`` (the global contrastive loss), ``isfinal_embed``,
the QA heads and the ``position_ids`` buffers older transformers saved.

``nn.MultiheadAttention`` inside mmcv's ``MultiheadAttention`` is ``.attn``
and keeps torch's packed ``in_proj_weight``/``in_proj_bias`` and ``out_proj``;
mmcv's ``FFN`` is ``layers = [Sequential(Linear, ReLU, Dropout), Linear,
Dropout]``, hence ``layers.0.0`` and ``layers.1``.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

_ENC_LAYER = (('self_attn.', 'self_attn.attn.'), ('linear1.', 'ffn.layers.0.0.'), ('linear2.', 'ffn.layers.1.'),
              ('norm1.', 'norms.0.'), ('norm2.', 'norms.1.'))
_DEC_LAYER = (('self_attn.', 'self_attn.attn.'), ('cross_attn_image.', 'cross_attn.attn.'),
              ('linear1.', 'ffn.layers.0.0.'), ('linear2.', 'ffn.layers.1.'),
              ('norm1.', 'norms.0.'), ('norm3.', 'norms.1.'), ('norm4.', 'norms.2.'))
_DIRECT = (('input_proj.', 'input_proj.'), ('transformer.resizer.', 'resizer.'), ('query_embed.', 'query_embed.'),
           ('class_embed.', 'head.class_embed.'), ('bbox_embed.', 'head.bbox_embed.'),
           ('contrastive_align_projection_image.', 'head.contrastive_align_projection_image.'),
           ('contrastive_align_projection_text.', 'head.contrastive_align_projection_text.'),
           ('transformer.decoder.norm.', 'stacks.decoder.stack.post_norm.'))
_IGNORED = re.compile(r'^(transformer\.text_encoder\.pooler\.|transformer\.CLS\.|contrastive_projection_|'
                      r'isfinal_embed\.|qa_embed\.|answer_)|position_ids$')
_LAYER = re.compile(r'^transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)$')


def _sub(rest: str, table) -> str | None:
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def image_key_fn(model: nn.Module) -> Callable[[str], str | None] | None:
    """A function from a torchvision ResNet name (``conv1.weight``,
    ``layer3.7.bn2.running_mean`` ...) to this model's name for the image stack.

    * ``ResNetStack`` (stem ``conv1``/``bn1`` on the stack, the blocks of all
      stages flattened into ``layers``): ``layerS.B.*`` ->
      ``stacks.image.stack.layers.<first block of stage S + B>.*``.
    * Any other stack holding a torchvision-named ResNet (a module with
      ``conv1``, ``bn1`` and ``layer1``): the same names under its path.
    """
    stacks = getattr(model, 'stacks', None)
    if stacks is None or 'image' not in stacks:
        return None
    stack = stacks['image'].stack
    base = 'stacks.image.stack.'
    if hasattr(stack, 'stage_ends') and hasattr(stack, 'conv1') and hasattr(stack, 'layers'):
        starts = [0] + [end + 1 for end in stack.stage_ends[:-1]]

        def resnet_stack_key(name: str) -> str | None:
            m = re.match(r'^layer(\d+)\.(\d+)\.(.+)$', name)
            if m:
                stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
                if not 1 <= stage <= len(starts):
                    return None
                return f'{base}layers.{starts[stage - 1] + block}.{rest}'
            if name.startswith(('conv1.', 'bn1.')):
                return base + name
            return None

        return resnet_stack_key
    for path, module in stack.named_modules():
        if all(hasattr(module, a) for a in ('conv1', 'bn1', 'layer1')):
            prefix = f'{base}{path + "." if path else ""}'
            return lambda name: prefix + name
    return None


def mdetr_key_map(key: str, image_key: Callable[[str], str | None] | None = None,
                  text_prefix: str = 'stacks.text.stack.model.') -> str | None:
    """This model's name for MDETR key ``key`` (``None`` when it has none);
    ``image_key`` maps the backbone's torchvision names (see :func:`image_key_fn`)."""
    m = _LAYER.match(key)
    if m:
        part, index, rest = m.groups()
        new = _sub(rest, _ENC_LAYER if part == 'encoder' else _DEC_LAYER)
        return None if new is None else f'stacks.{part}.stack.layers.{index}.{new}'
    if key.startswith('backbone.0.body.'):
        return None if image_key is None else image_key(key[len('backbone.0.body.'):])
    if key.startswith('transformer.text_encoder.'):
        return text_prefix + key[len('transformer.text_encoder.'):]
    return _sub(key, _DIRECT)


def read_mdetr_state_dict(path: str | os.PathLike, use_ema: bool = True) -> dict[str, Tensor]:
    """The ``model_ema`` (if ``use_ema`` and present) or ``model`` entry of an
    MDETR checkpoint file, or the file itself when it is a flat state dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'MDETR checkpoint {path!r} does not exist. Download it on a machine with network access (MDETR '
            f'README: e.g. pretrained_resnet101_checkpoint.pth from zenodo) and put it at that path, or set '
            f'mdetr_checkpoint=None to start from random weights.')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise RuntimeError(f'could not read MDETR checkpoint {path!r} with torch.load(weights_only=True): {err}. '
                           f'If you trust the file, re-save its "model"/"model_ema" entry as a plain state '
                           f'dict (torch.save(torch.load(p, weights_only=False)["model_ema"], q)) and use that.'
                           ) from err
    if isinstance(ckpt, Mapping):
        for entry in (('model_ema', 'model') if use_ema else ('model',)):
            if isinstance(ckpt.get(entry), Mapping):
                return {k: v for k, v in ckpt[entry].items() if isinstance(v, Tensor)}
        if ckpt and all(isinstance(v, Tensor) for v in ckpt.values()) and \
                any(k.startswith(('transformer.', 'backbone.')) for k in ckpt):
            return dict(ckpt)
    raise KeyError(f'MDETR checkpoint {path!r} holds no model: expected a "model" or "model_ema" state dict '
                   f'(or a flat MDETR state dict); top-level keys: '
                   f'{sorted(ckpt)[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__}')


def convert_mdetr_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module | None = None,
                             image_key: Callable[[str], str | None] | None = None,
                             text_prefix: str = 'stacks.text.stack.model.') -> tuple[dict, list, list]:
    """Rename an MDETR state dict for ``model``. Returns ``(converted,
    ignored, unmapped)``."""
    if image_key is None and model is not None:
        image_key = image_key_fn(model)
    converted, ignored, unmapped = {}, [], []
    for key, value in state_dict.items():
        if _IGNORED.search(key):
            ignored.append(key)
            continue
        new = mdetr_key_map(key, image_key, text_prefix)
        if new is None:
            unmapped.append(key)
        else:
            converted[new] = value
    return converted, ignored, unmapped


def _injected_prefixes(model: nn.Module) -> tuple[str, ...]:
    # modules a tuner attached inside a stack (LoRA's ``.lora``, adapters)
    try:
        from sherl_mm.tuners.injection import InjectedModule
    except ImportError:  # pragma: no cover
        return ()
    return tuple(f'{name}.' for name, m in model.named_modules() if isinstance(m, InjectedModule))


def load_mdetr_checkpoint(model: nn.Module, path_or_state: str | os.PathLike | Mapping[str, Tensor],
                          use_ema: bool = True, strict: bool = False) -> dict:
    """Load MDETR weights into ``model`` through the key map.

    Returns a report ``dict(loaded=[...], missing=[...], unexpected=[...],
    ignored=[...])``: ``missing`` are this model's pre-trained keys the file
    did not fill (``num_batches_tracked`` aside; a tuner's own parameters are
    not listed), ``unexpected`` the file's keys with no place in this model,
    ``ignored`` the known-unused MDETR keys. Shape mismatches raise a
    ``ValueError``; ``strict=True`` also raises on missing/unexpected keys.
    """
    source = 'state dict'
    if isinstance(path_or_state, Mapping):
        state = dict(path_or_state)
    else:
        source = os.fspath(path_or_state)
        state = read_mdetr_state_dict(source, use_ema=use_ema)
    converted, ignored, unmapped = convert_mdetr_state_dict(state, model)
    own = model.state_dict()
    unexpected = list(unmapped) + [k for k in converted if k not in own]
    to_load = {k: v for k, v in converted.items() if k in own}
    mismatched = [f'{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in to_load.items() if v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f'MDETR checkpoint {source!r} does not fit this model ({len(mismatched)} shape '
                         f'mismatches, e.g. {mismatched[:5]}); check depth/widths/num_queries/num_tokens')
    pretrained_prefixes = tuple(f'stacks.{n}.stack.' for n in ('image', 'text', 'encoder', 'decoder')) + \
        ('input_proj.', 'resizer.', 'query_embed.', 'head.')
    injected = _injected_prefixes(model)
    missing = [k for k in own if k not in to_load and k.startswith(pretrained_prefixes)
               and not k.endswith('num_batches_tracked') and not k.startswith(injected)]
    if strict and (missing or unexpected):
        raise KeyError(f'MDETR checkpoint {source!r}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}')
    model.load_state_dict(to_load, strict=False)
    return dict(loaded=sorted(to_load), missing=missing, unexpected=unexpected, ignored=ignored)


__all__ = ['convert_mdetr_state_dict', 'image_key_fn', 'load_mdetr_checkpoint', 'mdetr_key_map',
           'read_mdetr_state_dict']
