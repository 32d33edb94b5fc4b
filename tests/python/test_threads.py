"""A workspace sized once stays valid when the thread count changes before
the call (issue 12.1): dynmoe.workspace_size does not depend on OpenMP's
thread count, and the CPU backend's result does not either (bitwise).

torch.set_num_threads sets the count of the OpenMP runtime torch loaded. The
PyPI wheel's libgomp.so.1 has the soname of the system's, so the process has
one runtime and that call alone reached dynmoe (on the base commit the size
then grew from 420608 to 685824 bytes and the call failed); where torch brings
another runtime, the test also sets the count of the libgomp.so.1 dynmoe
loaded, through ctypes. Skipped without torch."""
import ctypes
import os

import pytest

import dynmoe

torch = pytest.importorskip("torch")

E, K, H, I, T = 16, 4, 64, 40, 37


def _gomp():
    """The libgomp dynmoe's library runs on, when one is loaded (else None)."""
    try:
        return ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
    except OSError:
        return None


def test_workspace_survives_thread_count_changes():
    g = torch.Generator().manual_seed(12)
    router = dynmoe.Router(num_experts=E, top_k=K, norm="selected")
    experts = dynmoe.Experts(torch.randn(E, 2 * I, H, generator=g) / H**0.5,
                             torch.randn(E, H, I, generator=g) / I**0.5)
    x = torch.randn(T, H, generator=g)
    logits = torch.randn(T, E, generator=g)
    gomp = _gomp()
    saved = torch.get_num_threads()
    saved_gomp = gomp.omp_get_max_threads() if gomp else None

    def set_threads(n):
        torch.set_num_threads(n)
        if gomp:
            gomp.omp_set_num_threads(n)

    try:
        set_threads(1)
        size = dynmoe.workspace_size(router, experts, T)
        ws = torch.empty(size, dtype=torch.uint8)
        want = dynmoe.moe_forward(x, logits, router, experts, workspace=ws)
        for n in (2 * (os.cpu_count() or 1) + 1, 2, 1):
            set_threads(n)
            assert dynmoe.workspace_size(router, experts, T) == size, f"{n} threads"
            got = dynmoe.moe_forward(x, logits, router, experts, workspace=ws)
            assert torch.equal(got, want), f"{n} threads: not bitwise the result of 1 thread"
    finally:
        torch.set_num_threads(saved)
        if gomp:
            gomp.omp_set_num_threads(saved_gomp)
