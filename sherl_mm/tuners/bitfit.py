"""BitFit (Ben Zaken et al., ACL 2022): only the bias terms of the stack train."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from sherl_mm.backbones.base import BackboneStack
from sherl_mm.registry import TUNERS

from ._common import FrozenStackTuner, Targets, describe_modules, layer_roots, match_modules

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


@TUNERS.register_module()
class BitFit(FrozenStackTuner):
    """Train the bias terms of the frozen stack.

    Args:
        stack: the backbone stack or its BACKBONES config.
        include_norm_bias: also train the biases (β) of normalisation layers
            (the BitFit paper trains all biases, LayerNorm's included).
        target_modules: restrict to the biases inside these modules (regex /
            names / suffixes / predicate, as for LoRA); None: the whole stack.
        layers: indices of ``stack.layers`` to restrict to (None: all, and
            the input / output stages).
        norm_eval: keep BatchNorm statistics of the stack frozen in training.
    """

    def __init__(self, stack: BackboneStack | dict, include_norm_bias: bool = True,
                 target_modules: Targets | None = None, layers: Sequence[int] | None = None,
                 norm_eval: bool = True, init_cfg: dict | None = None) -> None:
        super().__init__(stack, norm_eval=norm_eval, init_cfg=init_cfg)
        self.tuner_cfg = dict(type='BitFit', include_norm_bias=include_norm_bias, target_modules=target_modules,
                              layers=None if layers is None else list(layers))
        self.trained: list[str] = []
        seen: set[int] = set()
        roots = layer_roots(self.stack, layers)
        for root, prefix in roots:
            scopes = [(prefix, root)] if target_modules is None else match_modules(root, target_modules, prefix)
            for name, scope in scopes:
                for p_name, param in bias_parameters(scope, include_norm_bias, name):
                    if id(param) not in seen:
                        seen.add(id(param))
                        param.requires_grad_(True)
                        self.trained.append(p_name)
        if not self.trained:
            root, prefix = roots[0]
            raise ValueError(f'BitFit: no bias parameter found (target_modules={target_modules!r}, layers={layers}, '
                             f'include_norm_bias={include_norm_bias}) in {type(self.stack).__name__}; '
                             f'{describe_modules(root, prefix)}')


__all__ = ['BitFit', 'bias_parameters', 'is_bias', 'is_norm']
