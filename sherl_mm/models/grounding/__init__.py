"""MDETR-like visual grounding (referring-expression comprehension)."""
from .checkpoint import convert_mdetr_state_dict, load_mdetr_checkpoint, mdetr_key_map, read_mdetr_state_dict
from .detector import DEFAULT_TUNER, FeatureResizer, MDETRGrounding
from .head import MDETRHead
from .match_cost import SoftTokenCost
from .positive_map import char_to_token, create_positive_map, span_token_mask, tokenize

__all__ = ['DEFAULT_TUNER', 'FeatureResizer', 'MDETRGrounding', 'MDETRHead', 'SoftTokenCost', 'char_to_token',
           'convert_mdetr_state_dict', 'create_positive_map', 'load_mdetr_checkpoint', 'mdetr_key_map',
           'read_mdetr_state_dict', 'span_token_mask', 'tokenize']
