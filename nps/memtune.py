"""Keep glibc's malloc from mapping and unmapping memory for every large relay buffer.

A relay moves data in buffers of up to 256 KiB (one socket read, one
encrypted record, one decrypted record), each a fresh Python C{bytes}.  With
glibc's defaults such a buffer is often served by C{mmap} or by growing the
heap, and freed by C{munmap} or by trimming it again, so every buffer costs
page faults and page clearing in the kernel: on a busy tunnel that is a
fifth of the process's time.  Raising the mmap threshold and the trim
threshold lets freed buffers be reused straight from the heap.  The cost
is that up to L{TRIM_THRESHOLD} bytes of freed memory may stay mapped.

Nothing is changed when the user set glibc's own tunables in the
environment, or on a C library other than glibc.
"""
from __future__ import annotations

import ctypes
import os
import platform

#: Allocations below this come from the heap, not from their own mmap.
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Free memory at the top of the heap is returned to the kernel only above this.
TRIM_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def tune_malloc() -> bool:
    """Apply the thresholds; True if they were set."""
    if any(name in os.environ for name in _USER_TUNABLES):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
