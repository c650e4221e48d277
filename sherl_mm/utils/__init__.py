"""Utilities shared across sherl_mm: memory measurement (:mod:`.memory`) and
small helpers on ``nn.Module`` (:mod:`.modules`)."""
from .memory import (CPU_MALLOC_ENV, GIB, MIB, PeakMemoryMeter, PeakReading, RSSPeakSampler, SavedTensorCounter,
                     SavedTensorStats, cuda_current_bytes, cuda_peak_bytes, current_rss_bytes, process_peak_rss_bytes,
                     reset_cuda_peak, saved_tensor_bytes, to_gib, to_mib, to_paper_gb, trim_host_memory)
from .modules import ParameterCount, count_parameters, eval_mode

__all__ = ['CPU_MALLOC_ENV', 'GIB', 'MIB', 'ParameterCount', 'PeakMemoryMeter', 'PeakReading', 'RSSPeakSampler',
           'SavedTensorCounter', 'SavedTensorStats', 'count_parameters', 'cuda_current_bytes', 'cuda_peak_bytes',
           'current_rss_bytes', 'eval_mode', 'process_peak_rss_bytes', 'reset_cuda_peak', 'saved_tensor_bytes',
           'to_gib', 'to_mib', 'to_paper_gb', 'trim_host_memory']
