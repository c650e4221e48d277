"""Attaching trainable modules to a frozen network, PEFT-style.

Injected modules (LoRA deltas, adapters) are attached as a *child* of the
module they modify (``<target>.lora``, ``<target>.adapter``) and act through
forward hooks on it. The pre-trained parameters therefore keep their names,
so a checkpoint of the frozen network (mmengine ``init_cfg=dict(type=
'Pretrained')``, ``load_state_dict``) still loads into a tuned model, and
``nn.TransformerEncoderLayer``'s inference fast path, which would skip the
sub-modules' forwards, turns itself off when hooks are attached.

Targets are found by :func:`match_modules` from ``target_modules`` as users
write it (see :data:`Targets`). This module depends on torch only; a stack is
used through its ``layers``, ``check_layer_index`` and ``named_modules``.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Iterable, Sequence, Union

from torch import nn

if TYPE_CHECKING:
    from sherl_mm.backbones.base import BackboneStack

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


def targets_problem(targets: object) -> str | None:
    """Why ``targets`` is not a valid :data:`Targets` value, or None when it is."""
    if callable(targets) or isinstance(targets, str):
        return None
    if isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets):
        return None
    return ('a regex string, a non-empty list of module names or name suffixes, or a callable '
            '(name, module) -> bool')


def _matcher(targets: Targets) -> Callable[[str, nn.Module], bool]:
    problem = targets_problem(targets)
    if problem:
        raise TypeError(f'target_modules must be {problem}; got {targets!r}')
    if callable(targets):
        return targets
    if isinstance(targets, str):
        pattern = re.compile(targets)
        return lambda name, module: pattern.fullmatch(name) is not None
    names = list(targets)
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


def layer_roots(stack: BackboneStack, layers: Iterable[int] | int | None, option: str = 'layers'
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


def inject_into_layers(stack: BackboneStack, layers: Iterable[int] | int | None,
                       inject: Callable[[nn.Module, str], list[str]], option: str = 'layers'
                       ) -> tuple[list[str], list[tuple[nn.Module, str]]]:
    """Run ``inject(root, prefix)`` (non-strict: it returns the names it
    adapted, maybe none) on every root of :func:`layer_roots`; returns
    ``(adapted names, roots)`` so that the caller can describe the roots
    when nothing matched."""
    roots = layer_roots(stack, layers, option)
    names: list[str] = []
    for root, prefix in roots:
        names += inject(root, prefix)
    return names, roots


__all__ = ['InjectedModule', 'Targets', 'describe_modules', 'inject_into_layers', 'injected_module_ids',
           'layer_roots', 'match_modules', 'remove_hooks', 'targets_problem']
