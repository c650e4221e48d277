"""Helpers shared by the stack wrappers (not part of the public API)."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from .base import BackboneStack


class PretrainedStack(BackboneStack):
    """A stack whose weights are complete once ``__init__`` returns.

    mmengine's ``BaseModule.init_weights`` (which the Runner calls on the
    whole model before training) recurses into every child that has an
    ``init_weights`` method. For a wrapped pre-trained network that would
    re-initialise it: mmdet's ResNet blocks, for instance, zero the weight of
    their last BN (``zero_init_residual``) when they are initialised. A stack
    therefore loads or initialises its network in ``__init__`` and its
    ``init_weights`` only applies the stack's own ``init_cfg`` (e.g.
    ``dict(type='Pretrained', checkpoint=..., prefix=...)``), without
    recursing into the wrapped network.
    """

    def init_weights(self) -> None:
        if not self._is_init and self.init_cfg:
            from mmengine.model import initialize
            initialize(self, self.init_cfg)
        self._is_init = True

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module.__setattr__ registers modules without consulting
        # properties; route assignments to a property (``layers``) through
        # its setter so that they reach the wrapped network.
        prop = getattr(type(self), name, None)
        if isinstance(prop, property):
            if prop.fset is None:
                raise AttributeError(f'{type(self).__name__}.{name} cannot be assigned')
            prop.fset(self, value)
            return
        super().__setattr__(name, value)


def get_submodule(root: nn.Module, path: str, option: str, owner: str) -> nn.Module:
    """``root.get_submodule(path)`` with an error naming the option at fault."""
    if not isinstance(path, str) or not path:
        raise ValueError(f'{owner}: {option} must be a dotted module path such as "encoder.layer", got {path!r}')
    try:
        return root.get_submodule(path)
    except AttributeError as err:
        children = [name for name, _ in root.named_children()]
        raise ValueError(f'{owner}: {option}={path!r} does not name a submodule of {type(root).__name__} '
                         f'({err}); its top-level children are {children}') from None


def set_submodule(root: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, name = path.rpartition('.')
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, value)


def check_dir(path: str | os.PathLike, option: str, owner: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f'{owner}: {option} directory {path!r} does not exist. Put {what} there '
                                f'(models cannot be downloaded at run time), or leave {option}=None to build '
                                f'the network with random weights from a config.')
    return path


def load_state_dict_file(path: str | os.PathLike, option: str, owner: str, prefix: str | None = None,
                         weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict.

    Accepts a plain state dict or a dict holding one under ``state_dict``,
    ``model`` or ``module`` (mmengine, DETR/MDETR, torchvision). ``prefix``
    (e.g. ``'backbone.'``) keeps only the keys that start with it, stripped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{owner}: {option} checkpoint {path!r} does not exist. Put the weights file there '
                                f'(checkpoints cannot be downloaded at run time), or set {option}=None for '
                                f'random weights.')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        ckpt: Any = load_file(path)
    else:
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=weights_only)
        except Exception as err:  # UnpicklingError under weights_only=True, or a corrupt file
            raise RuntimeError(f'{owner}: could not read {option} checkpoint {path!r}: {err}. Checkpoints that pickle '
                               f'Python objects (e.g. argparse.Namespace) need weights_only=False, only for files '
                               f'you trust.') from err
    for key in ('state_dict', 'model', 'module'):
        if isinstance(ckpt, Mapping) and key in ckpt and isinstance(ckpt[key], Mapping):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, Mapping):
        raise TypeError(f'{owner}: {option} checkpoint {path!r} does not hold a state dict')
    state = {k[7:] if k.startswith('module.') else k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise KeyError(f'{owner}: no key of {option} checkpoint {path!r} starts with prefix {prefix!r}')
    return state


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], option: str, owner: str, path: str,
              ignore_missing: tuple[str, ...] = ('num_batches_tracked',)) -> None:
    """``load_state_dict(strict=False)`` that fails clearly on missing weights."""
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(ignore_missing)]
    if missing:
        raise KeyError(f'{owner}: {option} checkpoint {path!r} lacks {len(missing)} weights of the network, e.g. '
                       f'{missing[:5]}; unexpected keys in the file: {result.unexpected_keys[:5]} '
                       f'(set a key prefix if the file holds a whole detector)')


def infer_width_from_structure(module: nn.Module, last: bool = True) -> int | None:
    """Guess the channel width a layer outputs (``last=True``) or takes in.

    Looks at the last (or first) normalisation, ``Linear`` or convolution in
    registration order; returns ``None`` when it finds none.
    """
    found = []
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm):
            found.append(sub.normalized_shape[-1])
        elif isinstance(sub, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            found.append(sub.num_features if hasattr(sub, 'num_features') else sub.num_channels)
        elif isinstance(sub, nn.Linear):
            found.append(sub.out_features if last else sub.in_features)
        elif isinstance(sub, nn.modules.conv._ConvNd):
            found.append(sub.out_channels if last else sub.in_channels)
    if not found:
        return None
    return int(found[-1] if last else found[0])
