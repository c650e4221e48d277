"""Measuring memory: tensors saved for backward, allocator peaks, process RSS.

Three kinds of figure, from the most to the least repeatable:

* **Bytes saved for backward** (:class:`SavedTensorCounter`,
  :func:`saved_tensor_bytes`). Every tensor that autograd keeps for the
  backward pass goes through :func:`torch.autograd.graph.saved_tensors_hooks`;
  the counter records each one's storage, counts a storage saved twice (``x *
  x`` saves ``x`` twice; a view and its base share one storage) once, and
  splits the bytes into parameters (memory the model holds anyway) and
  activations (memory that exists only because a backward pass will follow).
  The figure is exact, independent of the device, of the allocator and of
  other processes, and it is the quantity memory-efficient tuning (SHERL,
  UniPT, LST) reduces: a frozen early layer whose output does not need a
  gradient saves nothing.
* **CUDA allocator peak** (:func:`cuda_peak_bytes`):
  ``torch.cuda.max_memory_allocated``, resettable with
  ``torch.cuda.reset_peak_memory_stats``. It excludes the CUDA context and
  cached-but-free blocks (it reads lower than nvidia-smi). The SHERL/UniPT
  code reads this counter and never resets it (``docs/method.md``, memory).
* **Process resident memory on the CPU.** :func:`process_peak_rss_bytes` is
  ``getrusage(RUSAGE_SELF).ru_maxrss``: the peak RSS since the process
  started. **The kernel offers no way to reset it**, so it only says something
  about a phase when the phase sets a new high. :class:`RSSPeakSampler` reads
  the current RSS (``/proc/self/statm``) from a background thread and keeps
  the maximum since its last :meth:`~RSSPeakSampler.reset`; it is resettable
  but sampled, so a spike shorter than the sampling period can be missed.
  :class:`PeakMemoryMeter` combines both. RSS also counts memory the C
  allocator keeps after ``free`` (glibc returns large blocks to the kernel
  only above its mmap threshold); see :data:`CPU_MALLOC_ENV` for making RSS
  track live tensors closely in a dedicated process.

Units: figures are bytes; :func:`to_gib` gives GiB (``2**30`` bytes), which
is what sherl_mm logs. The SHERL paper's "GB" is ``bytes / 2**20 / 1000``
(MiB/1000, :func:`to_paper_gb`), i.e. 1 GiB = 1.024 paper-GB.
"""
from __future__ import annotations

import gc
import os
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

GIB = 2 ** 30
MIB = 2 ** 20

#: Environment for a *fresh* process in which RSS should follow live tensors:
#: glibc then serves every allocation above 64 KiB with its own mmap and gives
#: it back to the kernel on free (by default the threshold grows up to 32 MiB
#: and freed blocks stay in the heap, so RSS keeps its high-water mark). It
#: must be set before the process starts; the benchmark tool sets it for its
#: CPU workers.
CPU_MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536', 'MALLOC_TRIM_THRESHOLD_': '65536'}


def to_gib(num_bytes: float | None) -> float | None:
    """Bytes to GiB (``2**30`` bytes)."""
    return None if num_bytes is None else num_bytes / GIB


def to_mib(num_bytes: float | None) -> float | None:
    """Bytes to MiB (``2**20`` bytes)."""
    return None if num_bytes is None else num_bytes / MIB


def to_paper_gb(num_bytes: float | None) -> float | None:
    """Bytes to the SHERL/UniPT papers' "GB": MiB / 1000 (``docs/benchmarks.md``)."""
    return None if num_bytes is None else num_bytes / MIB / 1000


# ----------------------------------------------------------------------------
# Tensors saved for backward
# ----------------------------------------------------------------------------

@dataclass
class SavedTensorStats:
    """What a :class:`SavedTensorCounter` saw.

    Attributes:
        num_saved: tensors autograd saved (every pack call, duplicates included).
        num_storages: distinct storages among them.
        bytes: bytes of the distinct storages that are not parameters'
            (activations and inputs: memory a backward pass costs).
        param_bytes: bytes of the distinct storages that belong to the
            parameters / tensors given as ``exclude`` (held by the model anyway).
        total_bytes: ``bytes + param_bytes``.
        by_device: ``bytes`` split by device (``'cpu'``, ``'cuda:0'`` ...).
    """

    num_saved: int = 0
    num_storages: int = 0
    bytes: int = 0
    param_bytes: int = 0
    total_bytes: int = 0
    by_device: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _storage_key(tensor: torch.Tensor) -> tuple[Any, int, int]:
    """``(device, data pointer, bytes)`` of the storage behind ``tensor``."""
    try:
        storage = tensor.untyped_storage()
        return str(tensor.device), storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        # Sparse, nested or other storage-less tensors: count the tensor itself.
        return str(tensor.device), id(tensor), tensor.numel() * tensor.element_size()


def _excluded_pointers(exclude: nn.Module | Iterable[torch.Tensor] | None) -> set[tuple[str, int]]:
    if exclude is None:
        return set()
    tensors = list(exclude.parameters()) + list(exclude.buffers()) if isinstance(exclude, nn.Module) \
        else list(exclude)
    return {_storage_key(t)[:2] for t in tensors}


class SavedTensorCounter:
    """Context manager that counts the tensors saved for backward inside it.

    Example::

        with SavedTensorCounter(exclude=model) as counter:
            loss = model(x).sum()
        print(counter.stats.bytes)   # activation bytes the backward will need
        loss.backward()

    Storages are deduplicated by (device, data pointer); the counter keeps a
    reference to every saved tensor until it exits, so that a storage freed
    and reused inside the block is not mistaken for a duplicate (under normal
    use the autograd graph holds these tensors anyway).

    Args:
        exclude: a module (its parameters and buffers) or tensors whose
            storages count as ``param_bytes`` instead of ``bytes``.
    """

    def __init__(self, exclude: nn.Module | Iterable[torch.Tensor] | None = None) -> None:
        self._excluded = _excluded_pointers(exclude)
        self._seen: dict[tuple[str, int], int] = {}
        self._keep: list[torch.Tensor] = []
        self._hooks = None
        self.stats = SavedTensorStats()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        device, ptr, nbytes = _storage_key(tensor)
        stats = self.stats
        stats.num_saved += 1
        key = (device, ptr)
        if key not in self._seen:
            self._seen[key] = nbytes
            self._keep.append(tensor)
            stats.num_storages += 1
            stats.total_bytes += nbytes
            if key in self._excluded:
                stats.param_bytes += nbytes
            else:
                stats.bytes += nbytes
                stats.by_device[device] = stats.by_device.get(device, 0) + nbytes
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> 'SavedTensorCounter':
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._hooks.__exit__(*exc_info)
        self._hooks = None
        self._keep.clear()


def saved_tensor_bytes(fn: Callable[..., Any], *args: Any,
                       exclude: nn.Module | Iterable[torch.Tensor] | None = None,
                       **kwargs: Any) -> SavedTensorStats:
    """Run ``fn(*args, **kwargs)`` and return what it saved for backward.

    The output of ``fn`` (and with it the autograd graph) is dropped; use
    :class:`SavedTensorCounter` to keep it and call backward. Give the model
    as ``exclude`` to report its saved weights separately (``param_bytes``).
    """
    with SavedTensorCounter(exclude=exclude) as counter:
        out = fn(*args, **kwargs)
    del out
    return counter.stats


# ----------------------------------------------------------------------------
# CUDA allocator peak
# ----------------------------------------------------------------------------

def reset_cuda_peak(device: Any = None) -> None:
    """``torch.cuda.reset_peak_memory_stats(device)`` (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_bytes(device: Any = None, reset: bool = False) -> int:
    """``torch.cuda.max_memory_allocated(device)``: the allocator peak since
    the last reset (or process start), in bytes; optionally reset it after
    reading. Returns 0 without CUDA."""
    if not torch.cuda.is_available():
        return 0
    peak = torch.cuda.max_memory_allocated(device)
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return int(peak)


def cuda_current_bytes(device: Any = None) -> int:
    """``torch.cuda.memory_allocated(device)`` in bytes (0 without CUDA)."""
    return int(torch.cuda.memory_allocated(device)) if torch.cuda.is_available() else 0


# ----------------------------------------------------------------------------
# Host (CPU) resident memory
# ----------------------------------------------------------------------------

_PAGE_SIZE = os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started, in bytes
    (``getrusage(RUSAGE_SELF).ru_maxrss``). **It cannot be reset.**"""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(maxrss if sys.platform == 'darwin' else maxrss * 1024)


def current_rss_bytes() -> int:
    """Current resident set size in bytes (``/proc/self/statm``; on systems
    without procfs it falls back to the peak, :func:`process_peak_rss_bytes`)."""
    try:
        with open('/proc/self/statm', 'rb') as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return process_peak_rss_bytes()


def trim_host_memory() -> None:
    """Collect garbage and ask glibc to give free heap memory back to the
    kernel (``malloc_trim(0)``), so that a following RSS reading is close to
    the live memory. A no-op where glibc is absent."""
    gc.collect()
    if sys.platform.startswith('linux'):
        try:
            import ctypes
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass


class RSSPeakSampler:
    """Tracks the maximum current RSS from a background thread.

    Unlike ``ru_maxrss`` its peak can be :meth:`reset`. It samples every
    ``interval`` seconds (the thread reads ``/proc/self/statm``; torch ops
    release the GIL, so it runs during them), so a peak shorter than the
    interval can be missed; :class:`PeakMemoryMeter` also consults
    ``ru_maxrss`` to catch those when they set a new process high.
    """

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> int:
        rss = current_rss_bytes()
        with self._lock:
            if rss > self._peak:
                self._peak = rss
        return rss

    @property
    def peak_bytes(self) -> int:
        self.sample()
        with self._lock:
            return self._peak

    def reset(self) -> None:
        with self._lock:
            self._peak = 0
        self.sample()

    def start(self) -> 'RSSPeakSampler':
        if self._thread is None:
            self._stop.clear()
            self.reset()
            self._thread = threading.Thread(target=self._run, name='rss-peak-sampler', daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample()

    def __enter__(self) -> 'RSSPeakSampler':
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


@dataclass
class PeakReading:
    """A :class:`PeakMemoryMeter` result, in bytes.

    Attributes:
        peak: the highest reading during the phase (CUDA: allocator peak; CPU:
            highest RSS, sampled and from ``ru_maxrss``).
        baseline: the reading when the phase started (CUDA: allocated bytes;
            CPU: current RSS).
        delta: ``peak - baseline`` (never negative).
        method: how it was measured, in words.
    """

    peak: int
    baseline: int
    delta: int
    method: str


class PeakMemoryMeter:
    """Peak memory of a phase, on CUDA or on the CPU::

        meter = PeakMemoryMeter('cpu')
        with meter:
            run_phase()
        meter.reading.delta    # bytes above the memory in use when it started

    * CUDA: resets the allocator peak on entry, reads
      ``max_memory_allocated`` on exit (``peak``; weights, gradients,
      optimiser state and activations) and ``memory_allocated`` on entry
      (``baseline``).
    * CPU: ``baseline`` is the RSS on entry (after :func:`trim_host_memory`);
      ``peak`` the larger of the sampled RSS maximum and ``ru_maxrss`` when
      the phase raised it (the process high is then known to lie inside the
      phase).
    """

    def __init__(self, device: Any = 'cpu', sample_interval: float = 0.0005) -> None:
        self.device = torch.device(device)
        self.sample_interval = sample_interval
        self.reading: PeakReading | None = None
        self._sampler: RSSPeakSampler | None = None
        self._baseline = 0
        self._maxrss_before = 0

    def __enter__(self) -> 'PeakMemoryMeter':
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self._baseline = cuda_current_bytes(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            trim_host_memory()
            self._baseline = current_rss_bytes()
            self._maxrss_before = process_peak_rss_bytes()
            self._sampler = RSSPeakSampler(self.sample_interval).start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            peak = cuda_peak_bytes(self.device)
            method = 'torch.cuda.max_memory_allocated (reset at phase start)'
        else:
            self._sampler.stop()
            peak = self._sampler.peak_bytes
            maxrss = process_peak_rss_bytes()
            if maxrss > self._maxrss_before:
                peak = max(peak, maxrss)
            method = 'process RSS: max of /proc/self/statm samples and ru_maxrss'
        self.reading = PeakReading(peak=int(peak), baseline=int(self._baseline),
                                   delta=int(max(0, peak - self._baseline)), method=method)


__all__ = ['CPU_MALLOC_ENV', 'GIB', 'MIB', 'PeakMemoryMeter', 'PeakReading', 'RSSPeakSampler',
           'SavedTensorCounter', 'SavedTensorStats', 'cuda_current_bytes', 'cuda_peak_bytes', 'current_rss_bytes',
           'process_peak_rss_bytes', 'reset_cuda_peak', 'saved_tensor_bytes', 'to_gib', 'to_mib',
           'to_paper_gb', 'trim_host_memory']
