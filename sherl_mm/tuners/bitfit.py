"""BitFit (Ben Zaken et al., ACL 2022): only the bias terms of the stack train."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import TUNERS

from .base import BaseTuner
from .injection import Targets, describe_modules, layer_roots, match_modules
from .options import NormEvalOption, flag, layer_indices, option, targets

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._BatchNorm,
               nn.modules.instancenorm._InstanceNorm)


def is_norm(module: nn.Module) -> bool:
    """Normalisation layers: torch's, and any class whose name contains 'Norm'
    (Hugging Face / mmcv / timm variants)."""
    return isinstance(module, _NORM_TYPES) or 'norm' in type(module).__name__.lower()


def is_bias(name: str) -> bool:
    """``bias`` and fused biases such as ``nn.MultiheadAttention.in_proj_bias``."""
    return name == 'bias' or name.endswith('_bias')


def bias_parameters(module: nn.Module, include_norm_bias: bool = True, prefix: str = ''
                    ) -> list[tuple[str, nn.Parameter]]:
    """``[(name, parameter)]`` of the bias terms under ``module``."""
    found, seen = [], set()
    for mod_name, mod in module.named_modules(prefix=prefix):
        if not include_norm_bias and is_norm(mod):
            continue
        for p_name, param in mod.named_parameters(recurse=False):
            if is_bias(p_name) and id(param) not in seen:
                seen.add(id(param))
                found.append((f'{mod_name}.{p_name}' if mod_name else p_name, param))
    return found


@dataclass(frozen=True, kw_only=True)
class BitFitOptions(NormEvalOption):
    """Options of :class:`BitFit`.

    Attributes:
        include_norm_bias: also train the biases (β) of normalisation layers
            (the BitFit paper trains all biases, LayerNorm's included). Default True.
        target_modules: restrict to the biases inside these modules (regex /
            names / suffixes / predicate, as for LoRA); None: the whole stack.
        layers: indices of ``stack.layers`` to restrict to (None: all, and
            the input / output stages).
        norm_eval: see :class:`~sherl_mm.tuners.options.NormEvalOption`.
    """

    include_norm_bias: bool = option(True, flag)
    target_modules: Targets | None = option(None, targets)
    layers: list[int] | int | None = option(None, layer_indices)


@TUNERS.register_module()
class BitFit(BaseTuner):
    """Train the bias terms of the frozen stack.

    Args:
        stack: the backbone stack or its BACKBONES config.
        **options: :class:`BitFitOptions`.
    """

    options_class = BitFitOptions
    options: BitFitOptions

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(stack, init_cfg=init_cfg, **options)
        config = self.options
        self.trained: list[str] = []
        seen: set[int] = set()
        roots = layer_roots(self.stack, config.layers)
        for root, prefix in roots:
            scopes = [(prefix, root)] if config.target_modules is None else \
                match_modules(root, config.target_modules, prefix)
            for name, scope in scopes:
                for p_name, param in bias_parameters(scope, config.include_norm_bias, name):
                    if id(param) not in seen:
                        seen.add(id(param))
                        param.requires_grad_(True)
                        self.trained.append(p_name)
        if not self.trained:
            root, prefix = roots[0]
            raise ValueError(f'BitFit: no bias parameter found (target_modules={config.target_modules!r}, '
                             f'layers={config.layers}, include_norm_bias={config.include_norm_bias}) in '
                             f'{type(self.stack).__name__}; {describe_modules(root, prefix)}')

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        """The stack's plain route (its biases train)."""
        return self.stack(*inputs, return_intermediates=return_intermediates, **kwargs)


__all__ = ['BitFit', 'BitFitOptions', 'bias_parameters', 'is_bias', 'is_norm']
