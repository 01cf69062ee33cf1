"""BLAS syrk and LAPACK syevr that release the GIL, so two matrices can be solved at once.

SciPy's Python wrappers (``scipy.linalg.blas.dsyrk``, ``scipy.linalg.eigvalsh``) hold the
GIL for the whole call, so threads computing different matrices run one after another
(measured: 0.96x on two threads). The same routines are exported for Cython by
``scipy.linalg.cython_blas`` / ``cython_lapack`` as C function pointers; called through
``ctypes`` (which drops the GIL during a foreign call) they run in parallel (1.7x on two
threads). Same library, same arguments, same results.

If the pointers cannot be had (an unusual SciPy build), :func:`gram_upper` and
:func:`eigvalsh_upper` fall back to SciPy's wrappers: correct, only not parallel.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import numpy as np

_P = ctypes.c_void_p


@cache
def _routines() -> dict[str, Any] | None:
    """C function pointers of d/s syrk and syevr from SciPy's Cython exports, or None."""
    try:
        import scipy.linalg.cython_blas as blas
        import scipy.linalg.cython_lapack as lapack

        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
        get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
        get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]

        def fn(module: Any, name: str, nargs: int) -> Any:
            capsule = module.__pyx_capi__[name]
            return ctypes.CFUNCTYPE(None, *([_P] * nargs))(get_ptr(capsule, get_name(capsule)))

        return {
            "dsyrk": fn(blas, "dsyrk", 10),
            "ssyrk": fn(blas, "ssyrk", 10),
            "dsyevr": fn(lapack, "dsyevr", 21),
            "ssyevr": fn(lapack, "ssyevr", 21),
        }
    except Exception:  # pragma: no cover - depends on the SciPy build
        return None


def _ref(value: Any) -> Any:
    return ctypes.byref(value)


def _ptr(array: np.ndarray) -> Any:
    return array.ctypes.data_as(_P)


def gram_upper(x: np.ndarray, c: np.ndarray, *, tall: bool) -> None:
    """``c += x^T x`` (tall) or ``c += x x^T`` (wide) on the upper triangle of ``c``.

    Args:
        x: C-contiguous float64 or float32 block, (rows, k) when tall, (k, cols) when wide.
        c: Fortran-ordered (k, k) array of the same dtype, updated in place.
    """
    routines = _routines()
    if routines is None:  # pragma: no cover - depends on the SciPy build
        from scipy.linalg import blas

        syrk = blas.dsyrk if x.dtype == np.float64 else blas.ssyrk
        c[...] = syrk(1.0, x.T, beta=1.0, c=c, trans=0 if tall else 1, lower=0)
        return
    double = x.dtype == np.float64
    scalar = ctypes.c_double if double else ctypes.c_float
    k = c.shape[0]
    # x.T is Fortran-contiguous: (k, rows) when tall -> syrk 'N' gives x.T x.T^T = x^T x;
    # (cols, k) when wide -> syrk 'T' gives (x.T)^T x.T = x x^T
    inner = x.shape[0] if tall else x.shape[1]
    lda = k if tall else inner
    routines["dsyrk" if double else "ssyrk"](
        _ref(ctypes.c_char(b"U")), _ref(ctypes.c_char(b"N" if tall else b"T")),
        _ref(ctypes.c_int(k)), _ref(ctypes.c_int(inner)), _ref(scalar(1.0)), _ptr(x),
        _ref(ctypes.c_int(lda)), _ref(scalar(1.0)), _ptr(c), _ref(ctypes.c_int(k)),
    )  # fmt: skip


def eigvalsh_upper(c: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric matrix whose upper triangle is in ``c``.

    ``c`` (Fortran-ordered, float64 or float32) is overwritten. LAPACK syevr, eigenvalues only.

    Raises:
        np.linalg.LinAlgError: LAPACK reports a failure.
    """
    routines = _routines()
    if routines is None:  # pragma: no cover - depends on the SciPy build
        from scipy.linalg import eigvalsh

        return eigvalsh(c, lower=False, driver="evr", overwrite_a=True, check_finite=False)
    double = c.dtype == np.float64
    scalar = ctypes.c_double if double else ctypes.c_float
    n = c.shape[0]
    w = np.empty(n, dtype=c.dtype)
    z = np.empty(1, dtype=c.dtype)
    isuppz = np.empty(max(1, 2 * n), dtype=np.int32)
    m, info = ctypes.c_int(0), ctypes.c_int(0)
    fn = routines["dsyevr" if double else "ssyevr"]

    def call(work: np.ndarray, lwork: int, iwork: np.ndarray, liwork: int) -> None:
        fn(
            _ref(ctypes.c_char(b"N")), _ref(ctypes.c_char(b"A")), _ref(ctypes.c_char(b"U")),
            _ref(ctypes.c_int(n)), _ptr(c), _ref(ctypes.c_int(max(1, n))),
            _ref(scalar(0.0)), _ref(scalar(0.0)), _ref(ctypes.c_int(0)), _ref(ctypes.c_int(0)),
            _ref(scalar(0.0)), _ref(m), _ptr(w), _ptr(z), _ref(ctypes.c_int(1)), _ptr(isuppz),
            _ptr(work), _ref(ctypes.c_int(lwork)), _ptr(iwork), _ref(ctypes.c_int(liwork)),
            _ref(info),
        )  # fmt: skip

    query_w, query_i = np.empty(1, dtype=c.dtype), np.empty(1, dtype=np.int32)
    call(query_w, -1, query_i, -1)  # workspace query
    lwork, liwork = max(1, int(query_w[0])), max(1, int(query_i[0]))
    call(np.empty(lwork, dtype=c.dtype), lwork, np.empty(liwork, dtype=np.int32), liwork)
    if info.value != 0 or m.value != n:
        raise np.linalg.LinAlgError(
            f"LAPACK syevr failed (info={info.value}, found {m.value} of {n})"
        )
    return w
