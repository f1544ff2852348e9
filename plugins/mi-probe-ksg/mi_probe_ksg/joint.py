"""Joint KSG: Kraskov et al. (2004, Phys. Rev. E 69 066138) estimator 1 of I(X; Y) for
multivariate X (N, dx) and Y (N, dy), on float64 NumPy arrays, with the neighbour search
done by a library made for it.

Conventions (those of :func:`mi_probe_ksg.ksg.pair_mi_cc`, of scikit-learn's
``_compute_mi_cc`` and of bmi's ``KSGEnsembleFirstEstimator`` with the Chebyshev metric):

* the max-norm in X, in Y and in the joint space (the larger of the two);
* ``d_i`` = joint distance to the k-th neighbour, the point itself excluded (the
  (k+1)-th smallest distance with it);
* ``n_x,i`` = #{j : ||x_i - x_j|| <= nextafter(d_i, 0)}, the point itself included, i.e.
  the points strictly closer than ``d_i`` (bmi's ``(dist < d).sum() - 1`` plus one);
* ``I = psi(N) + psi(k) - <psi(n_x)> - <psi(n_y)>``, clipped at 0.

Every distance is ``max_t |fl(a_t - b_t)|`` in float64, which is what the KD tree and
the 1-D kernel compare, so all counts are exact comparisons and every backend gives the
same numbers (and, at dx = dy = 1, those of ``pair_mi_cc``):

* ``kdtree``: ``sklearn.neighbors.KDTree(metric="chebyshev")``: a (k+1)-neighbour query
  and a radius count (``count_only``), queries split over threads (the tree releases the
  GIL);
* ``faiss`` (optional extra ``mi-probe-ksg[faiss]``): ``faiss.IndexFlat`` with
  ``METRIC_Linf``, a float32 brute force, used only to find candidates. Its distances
  are within ``2^-20 max|x - mean|`` of the float64 ones (:func:`_float32_frame`), so a
  k-th distance is certified when every other point is provably no closer, and a count
  is the float64 re-test of a range search widened by that bound; the few points that
  cannot be certified are answered by the KD tree.

``auto`` picks the KD tree: it was the faster at every size and dimension measured
(N 5000-50000, dx + dy 2-100; benchmarks/bench_ksg_scale.py).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.special import digamma

if TYPE_CHECKING:
    from sklearn.neighbors import KDTree

Backend = Literal["auto", "kdtree", "faiss"]
BACKENDS: tuple[str, ...] = ("auto", "kdtree", "faiss")

#: bound on |float32 - float64| max-norm distance, in units of max|x - mean| (the
#: derivation in :func:`_float32_frame` gives 2^-22; 4x margin)
_F32_ERR = 2.0 ** -20
#: candidates beyond the k + 1 the faiss backend asks for (certifies almost every point)
_EXTRA = 8
#: queries per faiss range search (sorted by radius, so that one radius fits them all)
_RANGE_BATCH = 1024
#: fewest queries worth a thread of their own
_MIN_PER_THREAD = 2048


def choose_backend(n: int, dims: int) -> str:
    """The backend ``auto`` uses for ``n`` rows of ``dims`` joint dimensions: the KD
    tree, measured faster than faiss's float32 brute force everywhere (N 5000-50000,
    2-100 dimensions; at N = 20000 in 20-D one neighbour query took 4.1 s vs 17 s)."""
    return "kdtree"


def faiss_available() -> bool:
    """Whether the optional ``faiss`` backend can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _threaded(fn, queries: np.ndarray, workers: int) -> np.ndarray:
    """``fn`` over row blocks of ``queries`` on up to ``workers`` threads, concatenated
    (the results do not depend on the split)."""
    n = queries.shape[0]
    parts = max(1, min(workers, n // _MIN_PER_THREAD))
    if parts == 1:
        return fn(queries)
    bounds = np.linspace(0, n, parts + 1).astype(int)
    with ThreadPoolExecutor(parts) as pool:
        out = list(pool.map(lambda i: fn(queries[bounds[i]:bounds[i + 1]]), range(parts)))
    return np.concatenate(out)


def _kdtree(points: np.ndarray) -> KDTree:
    from sklearn.neighbors import KDTree

    return KDTree(points, metric="chebyshev")


def _kdtree_kth(z: np.ndarray, k: int, workers: int, rows: np.ndarray | None = None
                ) -> np.ndarray:
    tree = _kdtree(z)
    queries = z if rows is None else z[rows]
    return _threaded(lambda q: tree.query(q, k=k + 1)[0][:, k], queries, workers)


def _kdtree_count(x: np.ndarray, radius: np.ndarray, workers: int) -> np.ndarray:
    tree = _kdtree(x)
    idx = np.arange(x.shape[0])
    return _threaded(lambda i: tree.query_radius(x[i], radius[i], count_only=True),
                     idx, workers).astype(np.int64)


def _float32_frame(z: np.ndarray) -> tuple[np.ndarray, int]:
    """``z`` centred and scaled by ``2^-e`` (exact) into [-1, 1], as float32 for faiss,
    and ``e``. In those units |float32 distance - float64 distance| <= 2^-22: per
    coordinate, centring in float64 errs by <= 2^-52, rounding to float32 by 2 * 2^-24
    (two points), faiss's float32 difference by 2 * 2^-24, and the float64 difference of
    the raw values by 2^-52; the max over coordinates keeps the bound."""
    c = z - z.mean(axis=0)
    m = float(np.abs(c).max()) if c.size else 0.0
    e = math.frexp(m)[1] if m > 0 else 0  # m = f * 2^e, 0.5 <= f < 1
    return np.ascontiguousarray(np.ldexp(c, -e), dtype=np.float32), e


def _faiss_index(c32: np.ndarray):
    import faiss

    index = faiss.IndexFlat(c32.shape[1], faiss.METRIC_Linf)
    index.add(c32)
    return index


def _linf(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise max-norm distance in float64, the KD tree's arithmetic."""
    return np.abs(a - b).max(axis=-1)


def _faiss_kth(z: np.ndarray, k: int, workers: int) -> np.ndarray:
    n = z.shape[0]
    c32, e = _float32_frame(z)
    kk = min(n, k + 1 + _EXTRA)
    dist32, ids = _faiss_index(c32).search(c32, kk)
    cand = np.empty((n, kk))
    step = max(1, (1 << 22) // (kk * z.shape[1]))
    for s in range(0, n, step):
        cand[s:s + step] = _linf(z[s:s + step, None, :], z[ids[s:s + step]])
    d = np.partition(cand, k, axis=1)[:, k]
    if kk == n:  # every point was a candidate
        return d
    # every point outside the candidates is at float32 distance >= the last one's, so at
    # float64 distance >= that minus the error bound
    floor = np.ldexp(dist32[:, -1].astype(np.float64) - _F32_ERR, e)
    bad = np.flatnonzero(floor < d)
    if bad.size:
        d[bad] = _kdtree_kth(z, k, workers, rows=bad)
    return d


def _faiss_count(x: np.ndarray, radius: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    c32, e = _float32_frame(x)
    index = _faiss_index(c32)
    counts = np.empty(n, dtype=np.int64)
    order = np.argsort(radius, kind="stable")
    for s in range(0, n, _RANGE_BATCH):
        q = order[s:s + _RANGE_BATCH]
        # widened by twice the bound: float32 rounding of the radius costs < 2^-23
        r32 = np.float32(np.ldexp(float(radius[q].max()), -e) + 2 * _F32_ERR)
        lims, _, ids = index.range_search(c32[q], float(r32))
        owner = np.repeat(np.arange(q.size), np.diff(lims.astype(np.int64)))
        inside = _linf(x[q[owner]], x[ids]) <= radius[q[owner]]
        counts[q] = np.bincount(owner, weights=inside, minlength=q.size).astype(np.int64)
    return counts


def _resolve(backend: str, n: int, dims: int) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown neighbour backend {backend!r}; valid: {list(BACKENDS)}")
    return choose_backend(n, dims) if backend == "auto" else backend


def kth_distance(z: np.ndarray, k: int, backend: str = "auto", workers: int = 1) -> np.ndarray:
    """(N,) max-norm distance of every row of ``z`` (N, D) to its k-th neighbour (itself
    excluded), exact in float64 whatever the backend."""
    backend = _resolve(backend, *z.shape)
    if backend == "faiss":
        return _faiss_kth(z, k, workers)
    return _kdtree_kth(z, k, workers)


def count_within(x: np.ndarray, radius: np.ndarray, backend: str = "auto",
                 workers: int = 1) -> np.ndarray:
    """(N,) int64: for every row i of ``x`` (N, D), #{j : ||x_i - x_j||_max <= radius_i}
    (itself included), exact in float64 whatever the backend."""
    backend = _resolve(backend, *x.shape)
    if backend == "faiss":
        return _faiss_count(x, radius)
    return _kdtree_count(x, radius, workers)


def joint_mi_cc(x: np.ndarray, y: np.ndarray, k: int, backend: str = "auto",
                workers: int = 1) -> float:
    """Kraskov et al. (2004) estimator 1 of I(X; Y) in nats for float64 ``x`` (N, dx) and
    ``y`` (N, dy), clipped at 0. Raises ``ValueError`` for N <= k or an unknown backend."""
    n = x.shape[0]
    if n <= k:
        raise ValueError(f"KSG needs more than k={k} samples, got {n}")
    d = kth_distance(np.hstack([x, y]), k, backend, workers)
    radius = np.nextafter(d, 0.0)
    nx = count_within(x, radius, backend, workers)
    ny = count_within(y, radius, backend, workers)
    value = (digamma(n) + digamma(k) - digamma(nx.astype(np.float64)).mean()
             - digamma(ny.astype(np.float64)).mean())
    return max(0.0, float(value))
