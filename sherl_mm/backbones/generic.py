"""Any network with a list of layers, seen as a stack without writing a class.

The wrapper finds what layer 0 receives by running the network's own forward
with a pre-hook on layer 0 that records the layer's arguments and then aborts
the forward. Everything before layer 0 (embeddings, mask building, position
encodings ...) is therefore done by the network's own code.

Config example::

    backbone=dict(
        type='ModuleListStack',
        module=dict(type='SomeRegisteredTransformer', ...),   # or an nn.Module
        layers='encoder.layer',          # dotted path of the ModuleList, as PEFT's target modules
        output_module='encoder.norm',    # optional final module (e.g. a LayerNorm)
        width=768)                       # optional, see below
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from sherl_mm.registry import BACKBONES, MODELS
from sherl_mm.utils.modules import eval_mode

from ._common import PretrainedStack, get_submodule, infer_width_from_structure, set_submodule

_WIDTH_ATTRS = ('hidden_size', 'd_model', 'width', 'embed_dim', 'hidden_dim', 'dim')


class _StopForward(BaseException):
    """Raised by the layer-0 pre-hook to abort the wrapped forward.

    A ``BaseException`` so that ``except Exception`` blocks in the wrapped
    model's code do not swallow it.
    """


def _to_probe_value(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, dict) and 'shape' in value:
        dtype = value.get('dtype', 'float')
        if dtype in ('long', 'int', 'int64'):
            return torch.zeros(tuple(value['shape']), dtype=torch.long)
        return torch.randn(tuple(value['shape']), generator=torch.Generator().manual_seed(0))
    if isinstance(value, (list, tuple)):
        return torch.as_tensor(value)
    return value


@BACKBONES.register_module()
class ModuleListStack(PretrainedStack):
    """Expose any ``nn.Module`` that runs a list of layers as a stack.

    Args:
        module: the network, an ``nn.Module`` or a MODELS config. A module
            built from a config that is an mmengine ``BaseModule`` gets its
            ``init_weights()`` called here (so a ``Pretrained`` ``init_cfg``
            loads now).
        layers: dotted path of the layer list inside ``module``, e.g.
            ``'encoder.layer'`` (BERT), ``'transformer.resblocks'`` (CLIP),
            ``'blocks'`` (timm ViT). Must be an ``nn.ModuleList`` or
            ``nn.Sequential``.
        output_module: optional dotted path of a module applied to the last
            layer's output by :meth:`finalize` (e.g. a final LayerNorm);
            ``None`` means the identity.
        forward_method: name of the method of ``module`` that :meth:`embed`
            calls (default ``'forward'``; e.g. ``'encode_text'``).
        hidden_arg: keyword name of the hidden state for layers that the
            network calls with it as a keyword argument (e.g.
            ``'hidden_states'``); by default the first positional argument.
        width: channel width of every layer output (int) or one per layer.
        input_width: width of the hidden state layer 0 receives.
        layout: ``'tokens'`` ``(B, K, D)`` or ``'feature_map'``
            ``(B, C, H, W)``; inferred from a probe forward when given,
            else ``'tokens'``.
        key_padding_mask_arg: optional keyword name of the layer argument
            that holds a ``(B, K)`` key padding mask (e.g.
            ``'src_key_padding_mask'`` for ``nn.TransformerEncoderLayer``);
            it is then also put in the context as ``key_padding_mask``
            (bool, True at padding; float masks: True where non-zero), and a
            context ``key_padding_mask`` of another length than the
            recorded one (a route that adds tokens) replaces it.
        probe_inputs: example inputs for one forward at construction that
            measures the widths (and the layout): a list of positional
            inputs or a dict of keyword inputs; each value a tensor, a
            nested list (``torch.as_tensor``) or ``dict(shape=[...],
            dtype='float'|'long')``.

    Widths are taken, in order, from ``width``/``input_width``, from a probe
    forward (``probe_inputs``), from a config attribute of the network
    (``hidden_size``, ``d_model``, ``width``, ``embed_dim``, ``hidden_dim``,
    ``dim`` on ``module.config`` or ``module``), and last from the layers'
    structure (the last normalisation / Linear / convolution of each layer).
    ``width_source`` says which one was used.

    The context holds ``args`` and ``kwargs``: what layer 0 received besides
    its hidden state (and ``key_padding_mask`` with ``key_padding_mask_arg``).
    Every layer is called with them, so the wrapper fits networks whose
    layers all receive the same extra arguments (BERT, RoBERTa, ViT, CLIP,
    ``nn.TransformerEncoder``); T5, whose first block computes a position
    bias that it hands to the later ones, needs :class:`HFT5EncoderStack`
    instead.
    """

    def __init__(self, module: nn.Module | dict, layers: str, output_module: str | None = None,
                 forward_method: str = 'forward', hidden_arg: str | None = None,
                 width: int | Sequence[int] | None = None, input_width: int | None = None,
                 layout: str | None = None, key_padding_mask_arg: str | None = None,
                 probe_inputs: list | dict | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        if isinstance(module, dict):
            module = MODELS.build(copy.deepcopy(module))
            if isinstance(module, BaseModule):
                module.init_weights()
        if not isinstance(module, nn.Module):
            raise TypeError(f'{owner}: module must be an nn.Module or a MODELS config, got {type(module).__name__}')
        self.module = module
        found = get_submodule(module, layers, 'layers', owner)
        if not isinstance(found, (nn.ModuleList, nn.Sequential)):
            raise TypeError(f'{owner}: layers={layers!r} names a {type(found).__name__}, not an nn.ModuleList '
                            f'(or nn.Sequential) of layers')
        if len(found) == 0:
            raise ValueError(f'{owner}: layers={layers!r} is empty')
        self._layers_path = layers
        self.output_module = output_module
        if output_module is not None:
            get_submodule(module, output_module, 'output_module', owner)
        if not callable(getattr(module, forward_method, None)):
            raise AttributeError(f'{owner}: forward_method={forward_method!r} is not a method of '
                                 f'{type(module).__name__}')
        self.forward_method = forward_method
        self.hidden_arg = hidden_arg
        self.key_padding_mask_arg = key_padding_mask_arg
        if layout not in (None, 'tokens', 'feature_map'):
            raise ValueError(f"{owner}: layout must be 'tokens' or 'feature_map', got {layout!r}")
        self.layout = layout or 'tokens'
        self._widths, self._input_width, self.width_source = self._find_widths(width, input_width, probe_inputs,
                                                                               layout)

    # layers live inside the wrapped module: one path per parameter in state dicts
    @property
    def layers(self) -> nn.ModuleList:  # type: ignore[override]
        return self.module.get_submodule(self._layers_path)

    @layers.setter
    def layers(self, value: nn.ModuleList) -> None:
        set_submodule(self.module, self._layers_path, value)

    @property
    def widths(self) -> list[int]:
        return list(self._widths)

    @property
    def input_width(self) -> int:
        return self._input_width

    def _find_widths(self, width, input_width, probe_inputs, layout) -> tuple[list[int], int, str]:
        owner = type(self).__name__
        n = self.num_layers
        if width is not None:
            widths = [int(width)] * n if isinstance(width, int) else [int(w) for w in width]
            if len(widths) != n:
                raise ValueError(f'{owner}: width lists {len(widths)} widths for {n} layers')
            return widths, int(input_width if input_width is not None else widths[0]), 'option'
        if probe_inputs is not None:
            if isinstance(probe_inputs, dict):
                args, kwargs = (), {k: _to_probe_value(v) for k, v in probe_inputs.items()}
            else:
                args, kwargs = tuple(_to_probe_value(v) for v in probe_inputs), {}
            with eval_mode(self), torch.no_grad():
                hidden, context = self.embed(*args, **kwargs)
                if layout is None:
                    self.layout = 'feature_map' if hidden.dim() == 4 else 'tokens'
                channel = 1 if self.layout == 'feature_map' else -1
                first = hidden.shape[channel]
                widths = []
                for index in range(n):
                    hidden = self.run_layer(index, hidden, context)
                    widths.append(hidden.shape[channel])
            return widths, int(input_width if input_width is not None else first), 'probe'
        for holder_name, holder in (('module.config', getattr(self.module, 'config', None)), ('module', self.module)):
            for attr in _WIDTH_ATTRS:
                value = getattr(holder, attr, None) if holder is not None else None
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return [value] * n, int(input_width if input_width is not None else value), \
                        f'{holder_name}.{attr}'
        widths = [infer_width_from_structure(layer, last=True) for layer in self.layers]
        first = input_width if input_width is not None else infer_width_from_structure(self.layers[0], last=False)
        if any(w is None for w in widths) or first is None:
            raise ValueError(f'{owner}: cannot infer the layer widths of {type(self.module).__name__}; '
                             f'pass width= (and input_width=) or probe_inputs=')
        return [int(w) for w in widths], int(first), 'structure'

    def embed(self, *inputs: Any, **kwargs: Any) -> tuple[Tensor, dict]:
        """Run the network's forward up to layer 0 and return what layer 0 receives.

        Returns ``(hidden, context)`` with ``context = {'args': ..., 'kwargs':
        ..., 'hidden_arg': ...}`` (layer 0's other arguments; plus
        ``key_padding_mask`` when ``key_padding_mask_arg`` names one).
        """
        captured: dict[str, Any] = {}

        def hook(_module, args, kw):
            captured['args'], captured['kwargs'] = args, kw
            raise _StopForward

        handle = self.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            getattr(self.module, self.forward_method)(*inputs, **kwargs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f'{type(self).__name__}: {type(self.module).__name__}.{self.forward_method} finished '
                               f'without calling layer 0 of {self._layers_path!r}; check the layers option')
        args, kw = list(captured['args']), dict(captured['kwargs'])
        hidden_arg = None
        if self.hidden_arg is not None and self.hidden_arg in kw:
            hidden, hidden_arg = kw.pop(self.hidden_arg), self.hidden_arg
        elif args:
            hidden = args.pop(0)
        else:
            raise RuntimeError(f'{type(self).__name__}: layer 0 was called with keyword arguments only '
                               f'({sorted(kw)}); set hidden_arg to the name of its hidden-state argument')
        context = dict(args=tuple(args), kwargs=kw, hidden_arg=hidden_arg)
        mask = kw.get(self.key_padding_mask_arg) if self.key_padding_mask_arg else None
        if mask is not None:
            context['key_padding_mask'] = mask if mask.dtype == torch.bool else mask != 0
        return hidden, context

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        kwargs = dict(context.get('kwargs', {}))
        args = tuple(context.get('args', ()))
        arg, mask = self.key_padding_mask_arg, context.get('key_padding_mask')
        if arg and mask is not None and isinstance(kwargs.get(arg), Tensor) and kwargs[arg].shape != mask.shape:
            # a route changed the token count (e.g. prompts) and extended the
            # context's key_padding_mask: hand the layer that one, in its dtype
            original = kwargs[arg]
            kwargs[arg] = mask if original.dtype == torch.bool else \
                torch.zeros(mask.shape, dtype=original.dtype, device=mask.device).masked_fill(mask, float('-inf'))
        if context.get('hidden_arg'):
            kwargs[context['hidden_arg']] = hidden
            out = self.layers[index](*args, **kwargs)
        else:
            out = self.layers[index](hidden, *args, **kwargs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif hasattr(out, 'to_tuple'):  # a transformers ModelOutput
            out = out.to_tuple()[0]
        return out

    def finalize(self, hidden: Tensor, context: dict) -> Tensor:
        if self.output_module is None:
            return hidden
        return self.module.get_submodule(self.output_module)(hidden)

    @property
    def output_stage(self) -> str:
        # judged by the class name of output_module (LayerNorm, RMSNorm, T5LayerNorm ...): the wrapper
        # cannot know what an arbitrary module computes
        if self.output_module is None:
            return 'identity'
        name = type(self.module.get_submodule(self.output_module)).__name__
        return 'norm' if name.endswith('Norm') else 'other'


__all__ = ['ModuleListStack']
