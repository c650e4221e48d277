"""Transfer-learning methods, one file per method, registered in TUNERS.

Shared pieces: :mod:`.base` (the abstract :class:`BaseTuner`), :mod:`.options`
(option dataclasses, validated once), :mod:`.injection` (attaching modules to
a frozen network), :mod:`.layers` (widths and layer selection), :mod:`.frozen`
(the frozen stack, also ``LinearProbe``), :mod:`.build` (a model's ``tuner=``
config) and :mod:`.weights` (a tuner's own weights). See docs/tuners.md.
"""
from .base import BaseTuner
from .build import build_tuned_stacks
from .options import OptionError, TunerOptions
from .weights import (load_trainable, parameter_report, print_trainable_parameters, save_trainable,
                      trainable_parameters, tuner_buffers)
# PETL baselines (one file per method)
from .adapter import Adapter, AdapterConfig, BottleneckAdapter, inject_adapters, remove_adapters
from .bitfit import BitFit
from .frozen import FrozenStack, LinearProbe
from .full import FullFineTune
from .lora import LoRA, LoRAConfig, inject_lora, merge_lora, remove_lora, unmerge_lora
from .prompt import PromptTuning, prepend_tokens, strip_tokens
# SHERL and its comparison methods
from .lst import LST, lst_gate
from .mtsa import MTSA, MTSAConfig, l1norm, l2norm, redundancy
from .sherl import SHERL
from .unipt import UniPT, UniPTModule, linear_attention, masked_mean
from .unipt_mdetr import UniPTMDETR

__all__ = ['BaseTuner', 'OptionError', 'TunerOptions', 'build_tuned_stacks', 'load_trainable', 'parameter_report',
           'print_trainable_parameters', 'save_trainable', 'trainable_parameters', 'tuner_buffers']
__all__ += ['Adapter', 'AdapterConfig', 'BitFit', 'BottleneckAdapter', 'FrozenStack', 'FullFineTune',
            'LinearProbe', 'LoRA', 'LoRAConfig', 'PromptTuning', 'inject_adapters', 'inject_lora', 'merge_lora',
            'prepend_tokens', 'remove_adapters', 'remove_lora', 'strip_tokens', 'unmerge_lora']
__all__ += ['LST', 'MTSA', 'MTSAConfig', 'SHERL', 'UniPT', 'UniPTMDETR', 'UniPTModule', 'l1norm', 'l2norm',
            'linear_attention', 'lst_gate', 'masked_mean', 'redundancy']
