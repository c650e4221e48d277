"""Transfer-learning methods, one file per method, registered in TUNERS."""
from .base import (BaseTuner, build_tuned_stacks, load_trainable, parameter_report, print_trainable_parameters,
                   save_trainable, trainable_parameters, tuner_buffers)
# PETL baselines (one file per method)
from .adapter import Adapter, BottleneckAdapter, inject_adapters, remove_adapters
from .bitfit import BitFit
from .full import FullFineTune
from .linear_probe import LinearProbe
from .lora import LoRA, inject_lora, merge_lora, remove_lora, unmerge_lora
from .prompt import PromptTuning, prepend_tokens, strip_tokens

__all__ = ['BaseTuner', 'build_tuned_stacks', 'load_trainable', 'parameter_report', 'print_trainable_parameters',
           'save_trainable', 'trainable_parameters', 'tuner_buffers']
__all__ += ['Adapter', 'BitFit', 'BottleneckAdapter', 'FullFineTune', 'LinearProbe', 'LoRA', 'PromptTuning',
            'inject_adapters', 'inject_lora', 'merge_lora', 'prepend_tokens', 'remove_adapters', 'remove_lora',
            'strip_tokens', 'unmerge_lora']
# SHERL and its comparison methods; the frozen-route feature cache
from .feature_cache import EarlyRouteCache, FeatureCacheMixin
from .lst import LST, lst_gate
from .mtsa import MTSA, l1norm, l2norm, redundancy
from .sherl import SHERL
from .unipt import UniPT, UniPTModule, linear_attention, masked_mean
from .unipt_mdetr import UniPTMDETR

__all__ += ['EarlyRouteCache', 'FeatureCacheMixin', 'LST', 'MTSA', 'SHERL', 'UniPT', 'UniPTMDETR', 'UniPTModule',
            'l1norm', 'l2norm', 'linear_attention', 'lst_gate', 'masked_mean', 'redundancy']
