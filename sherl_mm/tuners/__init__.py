"""Transfer-learning methods, one file per method, registered in TUNERS."""
from .base import (BaseTuner, build_tuned_stacks, load_trainable, parameter_report, print_trainable_parameters,
                   save_trainable, trainable_parameters)

__all__ = ['BaseTuner', 'build_tuned_stacks', 'load_trainable', 'parameter_report', 'print_trainable_parameters',
           'save_trainable', 'trainable_parameters']
