"""Shared pieces of the PETL baseline tuners (LoRA, Adapter, BitFit, prompt
tuning, linear probing): PEFT-style target matching, the frozen-stack base
class, and the forward-hook plumbing that injected modules use.

Injected modules (LoRA deltas, adapters) are attached as a *child* of the
module they modify (``<target>.lora``, ``<target>.adapter``) and act through
forward hooks on it. The pre-trained parameters therefore keep their names,
so a checkpoint of the frozen network (mmengine ``init_cfg=dict(type=
'Pretrained')``, ``load_state_dict``) still loads into a tuned model, and
``nn.TransformerEncoderLayer``'s inference fast path, which would skip the
sub-modules' forwards, turns itself off when hooks are attached.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence, Union

from torch import nn

from sherl_mm.backbones.base import BackboneStack

from .base import BaseTuner

#: ``target_modules`` as users write it: a regex (``re.fullmatch`` on the
#: module name, as PEFT does for a string), a list of names or dotted name
#: suffixes (``'self_attn'`` matches ``layers.0.self_attn``), or a predicate
#: ``(name, module) -> bool``.
Targets = Union[str, Sequence[str], Callable[[str, nn.Module], bool]]


class InjectedModule(nn.Module):
    """Base class of modules attached to a target by an ``inject_*`` function.

    ``hook_ids`` remembers the ids of the hooks registered on the target, so
    that :func:`remove_hooks` can take them off again (also after a deepcopy,
    which keeps the ids and rebinds the hook methods to the copied module).
    """

    def __init__(self) -> None:
        super().__init__()
        self.hook_ids: list[int] = []

    def extra_repr(self) -> str:
        return ''


def remove_hooks(target: nn.Module, injected: InjectedModule) -> None:
    """Remove every forward (pre-)hook that ``injected`` registered on ``target``."""
    for attr in ('_forward_hooks', '_forward_hooks_with_kwargs', '_forward_hooks_always_called',
                 '_forward_pre_hooks', '_forward_pre_hooks_with_kwargs'):
        hooks = getattr(target, attr, None)
        if hooks is None:
            continue
        for hook_id in injected.hook_ids:
            hooks.pop(hook_id, None)
    injected.hook_ids = []


def injected_module_ids(root: nn.Module) -> set[int]:
    """Ids of every module that lies inside an :class:`InjectedModule` under ``root``."""
    ids: set[int] = set()
    for module in root.modules():
        if isinstance(module, InjectedModule):
            ids.update(id(m) for m in module.modules())
    return ids


def _matcher(targets: Targets) -> Callable[[str, nn.Module], bool]:
    if callable(targets):
        return targets
    if isinstance(targets, str):
        pattern = re.compile(targets)
        return lambda name, module: pattern.fullmatch(name) is not None
    names = list(targets)
    if not names or not all(isinstance(t, str) for t in names):
        raise TypeError(f'target_modules must be a regex string, a non-empty list of module names or name '
                        f'suffixes, or a callable (name, module) -> bool; got {targets!r}')
    return lambda name, module: any(name == t or name.endswith('.' + t) for t in names)


def match_modules(root: nn.Module, targets: Targets, prefix: str = '') -> list[tuple[str, nn.Module]]:
    """Modules of ``root`` whose name matches ``targets`` the way PEFT matches.

    Names are relative to ``root`` with ``prefix`` in front (``prefix='layers.3'``
    gives ``layers.3.self_attn``). A module reachable by several paths (a stack
    whose ``layers`` is a sub-list of a wrapped model) matches if any of its
    names does and is returned once, under the first matching name. Modules
    inside already injected modules are never matched.
    """
    match = _matcher(targets)
    skip = injected_module_ids(root)
    found: dict[int, tuple[str, nn.Module]] = {}
    for name, module in root.named_modules(prefix=prefix, remove_duplicate=False):
        if not name or id(module) in skip or id(module) in found:
            continue
        if match(name, module):
            found[id(module)] = (name, module)
    return list(found.values())


def describe_modules(root: nn.Module, prefix: str = '', kinds: tuple[type, ...] = (), limit: int = 8) -> str:
    """A short list of module names in ``root`` for error messages: names of
    modules of ``kinds`` first, then the distinct last name components."""
    skip = injected_module_ids(root)
    named = [(n, m) for n, m in root.named_modules(prefix=prefix) if n and id(m) not in skip]
    preferred = [n for n, m in named if kinds and isinstance(m, kinds)] or [n for n, _ in named]
    leaves = sorted({n.rsplit('.', 1)[-1] for n, _ in named if not n.rsplit('.', 1)[-1].isdigit()})
    shown = ', '.join(repr(n) for n in preferred[:limit]) + (', ...' if len(preferred) > limit else '')
    return (f'module names there include {shown or "(none)"}; '
            f'name suffixes available: {leaves[:24]}{" ..." if len(leaves) > 24 else ""}')


def layer_roots(stack: BackboneStack, layers: Iterable[int] | None, option: str = 'layers'
                ) -> list[tuple[nn.Module, str]]:
    """``[(module, prefix)]`` to search for targets: the whole stack when
    ``layers`` is None, else the listed ``stack.layers[i]``, each under its
    name inside the stack (``layers.3``, or ``model.encoder.layer.3`` for a
    stack whose ``layers`` is a property onto a wrapped model), so that a
    regex matches the same names with and without ``layers``."""
    if layers is None:
        return [(stack, '')]
    if isinstance(layers, int):
        layers = [layers]
    indices = sorted({stack.check_layer_index(int(i), option) for i in layers})
    if not indices:
        raise ValueError(f'{option}: an empty list selects no layer; use None for all layers')
    names = {id(m): n for n, m in stack.named_modules() if n}
    return [(stack.layers[i], names.get(id(stack.layers[i]), f'layers.{i}')) for i in indices]


def set_norm_eval(module: nn.Module) -> None:
    """Put every normalisation layer with running statistics (BatchNorm,
    SyncBN, InstanceNorm with ``track_running_stats``) in eval mode, so that a
    frozen network's statistics do not drift while the tuner trains (they are
    buffers, which the tuner's weight file does not hold)."""
    for m in module.modules():
        if getattr(m, 'running_mean', None) is not None and getattr(m, 'track_running_stats', True):
            m.eval()


class FrozenStackTuner(BaseTuner):
    """:class:`BaseTuner` whose frozen stack keeps its normalisation statistics.

    Args:
        stack: the backbone stack or its BACKBONES config.
        norm_eval: keep BatchNorm-like layers of the stack in eval mode in
            training (their running statistics are frozen weights too).
    """

    def __init__(self, stack: BackboneStack | dict, norm_eval: bool = True, init_cfg: dict | None = None) -> None:
        super().__init__(stack, init_cfg=init_cfg)
        self.norm_eval = norm_eval

    def train(self, mode: bool = True) -> 'FrozenStackTuner':
        super().train(mode)
        if mode and self.norm_eval:
            set_norm_eval(self.stack)
        return self


__all__ = ['FrozenStackTuner', 'InjectedModule', 'Targets', 'describe_modules', 'injected_module_ids',
           'layer_roots', 'match_modules', 'remove_hooks', 'set_norm_eval']


def check_output_width(tuner: str, out_channels: int | None, width: int, finalize_output: bool) -> int:
    """The side output's width: ``out_channels`` or the last layer's ``width``.
    The stack's output stage expects ``width``, so another width is refused
    unless the output stage is skipped."""
    if out_channels is not None and out_channels != width and finalize_output:
        raise ValueError(f"{tuner}: out_channels={out_channels} differs from the stack's last layer width {width}, "
                         f'which its output stage expects; set finalize_output=False to return the side output')
    return out_channels or width
