"""Runner hooks of sherl_mm, registered in sherl_mm.registry.HOOKS."""
from .memory import PeakMemoryHook
from .params import ParameterTableHook, parameter_rows, parameter_table

__all__ = ['ParameterTableHook', 'PeakMemoryHook', 'parameter_rows', 'parameter_table']
