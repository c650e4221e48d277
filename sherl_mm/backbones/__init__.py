"""Wrappers that expose a frozen pre-trained network as an ordered stack of layers."""
from .base import BackboneStack, StackOutput, map_to_tokens, tokens_to_map

from .cnn import EfficientNetStack, ResNetStack
from .detr import DetrDecoderStack, DetrEncoderStack
from .generic import ModuleListStack
from .hf import HFEncoderStack, HFT5DecoderStack, HFT5EncoderStack
from .open_clip import OpenCLIPTextStack, OpenCLIPVisionStack

__all__ = ['BackboneStack', 'StackOutput', 'map_to_tokens', 'tokens_to_map',
           'EfficientNetStack', 'ResNetStack', 'ModuleListStack', 'HFEncoderStack', 'HFT5DecoderStack',
           'HFT5EncoderStack', 'OpenCLIPTextStack', 'OpenCLIPVisionStack', 'DetrDecoderStack', 'DetrEncoderStack']
