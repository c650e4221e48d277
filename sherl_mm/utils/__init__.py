"""Utilities shared by hooks and tools (memory measurement)."""
from .memory import (CPU_MALLOC_ENV, GIB, MIB, PeakMemoryMeter, PeakReading, RSSPeakSampler, SavedTensorCounter,
                     SavedTensorStats, cuda_current_bytes, cuda_peak_bytes, current_rss_bytes, memory_summary,
                     process_peak_rss_bytes, reset_cuda_peak, saved_tensor_bytes, to_gib, to_mib, to_paper_gb,
                     trim_host_memory)

__all__ = ['CPU_MALLOC_ENV', 'GIB', 'MIB', 'PeakMemoryMeter', 'PeakReading', 'RSSPeakSampler', 'SavedTensorCounter',
           'SavedTensorStats', 'cuda_current_bytes', 'cuda_peak_bytes', 'current_rss_bytes', 'memory_summary',
           'process_peak_rss_bytes', 'reset_cuda_peak', 'saved_tensor_bytes', 'to_gib', 'to_mib', 'to_paper_gb',
           'trim_host_memory']
