"""Where and how a step computes: threads, determinism, the device, and the memory allocator.

Every step that runs torch calls :func:`setup_execution` first with the ``execution``
settings; what it changes is process-wide, so it is called once, at the start of a step.
"""

from __future__ import annotations

import ctypes
import os

import torch

from ptycho_torch.config import ExecutionConfig
from ptycho_torch.config_factory import ConfigError


# (glibc mallopt parameter, value) that keep_freed_memory sets: M_MMAP_THRESHOLD (-3), blocks
# up to 32 MiB come from the heap; M_TRIM_THRESHOLD (-1), the heap is trimmed only once more
# than 1 GiB of it is free; M_TOP_PAD (-2), it grows 256 MiB at a time.
MALLOC_SETTINGS = ((-3, 32 << 20), (-1, 1 << 30), (-2, 256 << 20))


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next tensors (:data:`MALLOC_SETTINGS`);
    False where there is no glibc (nothing changes there).

    PyTorch's CPU allocator caches nothing: each large tensor is a malloc, and glibc hands
    big freed blocks back to the kernel (``munmap``, heap trimming), so the next one arrives
    as fresh pages that the kernel must fault in and zero. Keeping them trades some peak
    memory for far fewer page faults (docs/findings.md has the measurements). The process
    keeps its peak memory until it ends, which a step's short life allows.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS)


def setup_execution(ex: ExecutionConfig) -> torch.device:
    """Apply threads/determinism, :func:`keep_freed_memory`, and pick the device (``auto``:
    CUDA if visible).

    Deterministic cuBLAS needs a fixed workspace: ``CUBLAS_WORKSPACE_CONFIG`` is set
    (unless it is already) before any CUDA work. The flag is ATen's alone:
    ``torch.use_deterministic_algorithms`` also sets the compiler's (nothing here
    compiles), and importing ``torch._inductor`` for it would slow every step's start.
    """
    if ex.threads:
        torch.set_num_threads(ex.threads)
    keep_freed_memory()
    if ex.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["execution.device: 'cuda' was asked for but no CUDA device is "
                           "visible (use 'auto' or 'cpu')"])
    device = torch.device("cuda" if ex.device != "cpu" and torch.cuda.is_available() else "cpu")
    if ex.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch._C._set_deterministic_algorithms(ex.deterministic)
    return device
