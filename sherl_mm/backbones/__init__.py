"""Wrappers that expose a frozen pre-trained network as an ordered stack of layers."""
from .base import BackboneStack, StackOutput, count_parameters, freeze, map_to_tokens, tokens_to_map

__all__ = ['BackboneStack', 'StackOutput', 'count_parameters', 'freeze', 'map_to_tokens', 'tokens_to_map']
