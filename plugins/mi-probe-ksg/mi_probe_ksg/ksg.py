"""Pure torch kernels of the Kraskov–Stögbauer–Grassberger (KSG) family of k-nearest-
neighbour MI estimators, batched over channels.

* :func:`label_mi_cd` — continuous feature vs discrete label, the mixed estimator of
  Ross (2014, PLoS ONE 9(2) e87357), one value per column of ``x``;
* :func:`pair_mi_cc` — continuous vs continuous, Kraskov et al. (2004, Phys. Rev. E 69
  066138) estimator 1 with the max-norm, one value per column of ``y`` against one
  column ``x``.

Both follow scikit-learn's ``sklearn.feature_selection._mutual_info`` (``_compute_mi_cd``
and ``_compute_mi_cc``) convention for convention, so on the same float64 data they
give the same numbers (up to summation order, ~1e-15):

* the k-th neighbour distance ``d`` excludes the point itself; ``radius =
  nextafter(d, 0)`` (the next float towards zero), and a neighbour count is the number
  of points ``j`` (the point itself included) with ``|x_i - x_j| <= radius``, i.e. strictly
  closer than ``d`` (for ``d = 0``, the exact duplicates of ``x_i``);
* ``label_mi_cd``: points whose class has a single sample are dropped from everything
  (``N`` included); a class of ``n_c`` samples uses ``k_c = min(k, n_c - 1)``;
  ``I = psi(N) + <psi(k_c)> - <psi(n_c)> - <psi(m)>``;
* ``pair_mi_cc``: ``I = psi(N) + psi(k) - <psi(n_x)> - <psi(n_y)>`` with ``n_x``,
  ``n_y`` the marginal counts (self included, which is sklearn's ``nx + 1``);
* results below zero are clipped to 0.

Ties: the plugin (``jitter: true``, the default) first adds scikit-learn's tiny seeded
noise with :func:`add_tie_noise`, as ``mutual_info_classif`` does; the kernels below
take the values as given.

Distances are the float64 differences ``|fl(x_i - x_j)|``, which is what sklearn's KD
trees compare (``sqrt(fl(t*t)) == |t|``, and ``fl(t*t) <= fl(r*r)`` iff ``|t| <= r`` for
floats). The radius counts are exact: a ``searchsorted`` of ``x ± radius`` is corrected
by testing the data values next to each bound with the same rounded difference, so no
tolerance enters the counts. (One sklearn detail is *not* reproduced: for a class of
``n_c <= 2 k_c + 1`` samples, ``NearestNeighbors(algorithm="auto")`` switches to brute
force, whose ``|a|^2 - 2ab + |b|^2`` distances carry rounding error, so the k-th
neighbour can be counted inside its own radius; this kernel uses the exact difference,
as sklearn's KD tree path does. The two agree exactly when every class is larger, or
when the arithmetic is exact, e.g. values on a dyadic grid.)

Everything runs on the input's device; there is no loop over samples.
"""

from __future__ import annotations

import math

import torch

#: default bound on the number of float64 elements of one batched intermediate
DEFAULT_CHUNK_SIZE = 1 << 24  # 128 MiB


def _inf_like(t: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    return torch.full((), sign * math.inf, dtype=t.dtype, device=t.device)


#: bound on the correction rounds of :func:`count_within` (each round moves a search
#: bound past one distinct data value that float rounding put on the wrong side; in
#: practice 0 or 1 rounds are needed)
_MAX_ROUNDS = 10_000


def _take(sorted_rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if sorted_rows.ndim == 1:
        return sorted_rows[idx]
    return torch.gather(sorted_rows, -1, idx)


def _nudge_bounds(x: torch.Tensor, radius: torch.Tensor, steps: int = 2
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x ± radius`` moved (at most ``steps`` floats) inside ``|fl(v - x)| <= radius``: a
    good first guess for the search bounds (the exact fix is in :func:`count_within`)."""
    hi, lo = x + radius, x - radius
    pos, neg = _inf_like(x), _inf_like(x, -1.0)
    for _ in range(steps):
        hi = torch.where((hi - x) > radius, torch.nextafter(hi, neg), hi)
        lo = torch.where((x - lo) > radius, torch.nextafter(lo, pos), lo)
    return lo, hi


def count_within(sorted_rows: torch.Tensor, x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """For ascending ``sorted_rows`` (B, N) (or (N,) shared by all rows) and query points
    ``x``, ``radius`` (B, M): the number of ``j`` with
    ``|fl(sorted_rows[b, j] - x[b, i])| <= radius[b, i]``, shape (B, M).

    ``fl(s - x)`` is monotone in ``s``, so the points counted form one run of the sorted
    row: ``hi`` = #{j: fl(s_j - x) <= r} minus ``lo`` = #{j: fl(x - s_j) > r}. Both start
    from a ``searchsorted`` of ``x ± r`` and are then corrected by testing the data values
    next to each bound with the exact rounded difference, so the count is exactly the one
    the floating-point comparison defines (tied values move as a group).
    """
    n = sorted_rows.shape[-1]
    last = n - 1
    lo0, hi0 = _nudge_bounds(x, radius)
    hi = torch.searchsorted(sorted_rows, hi0, right=True)
    lo = torch.searchsorted(sorted_rows, lo0, right=False)
    for _ in range(_MAX_ROUNDS):
        nxt = _take(sorted_rows, hi.clamp(max=last))
        prv = _take(sorted_rows, (hi - 1).clamp(min=0))
        hi_up = (hi < n) & ((nxt - x) <= radius)  # next value is inside: move past it
        hi_down = (hi > 0) & ((prv - x) > radius)  # last counted value is outside
        nxt_l = _take(sorted_rows, lo.clamp(max=last))
        prv_l = _take(sorted_rows, (lo - 1).clamp(min=0))
        lo_up = (lo < n) & ((x - nxt_l) > radius)  # first kept value is outside
        lo_down = (lo > 0) & ((x - prv_l) <= radius)  # last dropped value is inside
        if not bool((hi_up | hi_down | lo_up | lo_down).any()):
            return hi - lo
        hi = torch.where(hi_up, torch.searchsorted(sorted_rows, nxt, right=True), hi)
        hi = torch.where(hi_down, torch.searchsorted(sorted_rows, prv, right=False), hi)
        lo = torch.where(lo_up, torch.searchsorted(sorted_rows, nxt_l, right=True), lo)
        lo = torch.where(lo_down, torch.searchsorted(sorted_rows, prv_l, right=False), lo)
    raise RuntimeError("count_within did not converge")  # pragma: no cover


def _as_float64(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.to(torch.float64)


#: relative size of the tie-breaking noise: scikit-learn's ``1e-10`` (after scaling each
#: variable to unit standard deviation)
TIE_NOISE = 1e-10


def add_tie_noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` (N, C) as float64 plus Gaussian noise of standard deviation
    ``1e-10 * max(std_c, mean_c |x|)`` per column: scikit-learn's preprocessing in
    ``mutual_info_classif`` / ``_regression`` (scale to unit std, add
    ``1e-10 * max(1, mean|x|)`` noise) expressed in the column's own units.

    Exact ties (a ReLU's zeros, values on a grid) make k-th neighbour distances 0 and
    the neighbour counts those of whole atoms, which biases KSG (down to 0 on a half-zero
    ReLU channel, up on gridded independent data); the noise breaks the ties in a random
    order, which is what the estimator's theory assumes, and is far too small to move a
    neighbour of tie-free data. Constant columns are returned unchanged (their MI is 0).
    The noise is drawn on the CPU from ``generator`` as a (C, N) matrix, row c for
    column c, then moved to ``x``'s device, so it does not depend on the device."""
    x = _as_float64(x)
    n, channels = x.shape
    if x.numel() == 0:
        return x
    std = x.std(dim=0, correction=0)
    scale = TIE_NOISE * torch.maximum(std, x.abs().mean(dim=0))
    constant = x.amax(dim=0) == x.amin(dim=0)
    scale = torch.where(constant, torch.zeros_like(scale), scale)
    noise = torch.randn(channels, n, generator=generator, dtype=torch.float64)
    return x + noise.T.to(x.device) * scale


def _psi(value: float, device: torch.device) -> torch.Tensor:
    return torch.special.digamma(torch.tensor(float(value), dtype=torch.float64, device=device))


def _kth_of_merged(left: list[torch.Tensor], right: list[torch.Tensor], kk: int) -> torch.Tensor:
    """kk-th smallest of the union of two ascending lists of tensors (elementwise):
    ``min over i of max(left_i, right_{kk-i})`` (1-based, ``x_0 = -inf``)."""
    best = None
    for i in range(kk + 1):
        j = kk - i
        if i == 0:
            cand = right[j - 1]
        elif j == 0:
            cand = left[i - 1]
        else:
            cand = torch.maximum(left[i - 1], right[j - 1])
        best = cand if best is None else torch.minimum(best, cand)
    assert best is not None  # kk >= 1
    return best


def label_mi_cd(x: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Ross (2014) KSG estimate of I(X_c; Y) in nats for every column of ``x`` (N, C)
    against integer ``labels`` (N,) in ``[0, num_classes)``; returns (C,) float64.

    Per chunk of columns: two stable sorts put each column in class segments, ascending
    inside each segment; the k-th same-class neighbour distance is the k-th smallest of
    the k gaps to the left and the k to the right (1-D); ``m`` comes from
    :func:`count_within` on the column sorted by value. Work O(C N log N), memory about
    ``12 N`` float64 per column of a chunk.

    Raises ``ValueError`` when no class has two samples (nothing to estimate from).
    """
    x = _as_float64(x)
    channels = x.shape[1]
    device = x.device
    counts = torch.bincount(labels, minlength=num_classes)
    keep = counts[labels] > 1  # sklearn: points with a unique label are ignored
    if not bool(keep.any()):
        raise ValueError("every class has a single sample; KSG needs a class with >= 2")
    if not bool(keep.all()):
        x, labels = x[keep], labels[keep]
    n = x.shape[0]

    # channel-independent terms, in the label-grouped layout used below
    lab_sorted, _ = torch.sort(labels, stable=True)
    n_c = counts[lab_sorted]  # (n,) class size of the point at each grouped position
    k_pos = torch.clamp(n_c - 1, max=k)  # (n,) sklearn's min(k, count - 1)
    const = (_psi(n, device) + torch.special.digamma(k_pos.double()).mean()
             - torch.special.digamma(n_c.double()).mean())
    small_ks = [int(v) for v in torch.unique(k_pos).tolist() if v < k]
    same = [lab_sorted[o:] == lab_sorted[:-o] for o in range(1, min(k, n - 1) + 1)]

    out = torch.empty(channels, dtype=torch.float64, device=device)
    step = max(1, min(channels, chunk_size // (12 * n)))
    zero = torch.zeros((), dtype=torch.float64, device=device)
    pos = _inf_like(x)
    for start in range(0, channels, step):
        xc = x[:, start:start + step].T.contiguous()  # (cc, n)
        cc = xc.shape[0]
        values, order = torch.sort(xc, dim=1, stable=True)
        _, order2 = torch.sort(labels[order], dim=1, stable=True)
        xs = torch.gather(values, 1, order2)  # class segments, ascending inside (cc, n)
        del order, order2
        # in 1-D the k nearest same-class neighbours are within k sorted positions:
        # left[o-1] / right[o-1] = gap to the neighbour o places left / right (inf if the
        # place is in another class or off the end); both ascend in o
        left, right = [], []
        for o in range(1, k + 1):
            if o >= n:
                left.append(torch.full_like(xs, math.inf))
                right.append(torch.full_like(xs, math.inf))
                continue
            gap = torch.where(same[o - 1], xs[:, o:] - xs[:, :-o], pos)  # fl(x_p - x_{p-o})
            fill = torch.full((cc, o), math.inf, dtype=torch.float64, device=device)
            left.append(torch.cat([fill, gap], dim=1))
            right.append(torch.cat([gap, fill], dim=1))
        d = _kth_of_merged(left, right, k)
        for kk in small_ks:  # classes with fewer than k + 1 samples use k_c = n_c - 1
            sel = k_pos == kk
            d[:, sel] = _kth_of_merged([t[:, sel] for t in left], [t[:, sel] for t in right], kk)
        del left, right
        radius = torch.nextafter(d, zero)  # sklearn: np.nextafter(r, 0)
        m = count_within(values, xs, radius)
        out[start:start + cc] = const - torch.special.digamma(m.double()).mean(dim=1)
    return out.clamp_min(0.0)


#: first half-width of the x-order window searched for joint-space neighbours, times
#: sqrt(N): the x-order distance to the k-th max-norm neighbour grows like sqrt(N)
#: (median 0.9 sqrt(N), 90th percentile 1.6 sqrt(N) for independent Gaussians, k = 3)
_FIRST_WINDOW = 1.5
_GROWTH = 2  # window growth factor per retry


def _kth_smallest(dist: torch.Tensor, k: int) -> torch.Tensor:
    """k-th smallest along the last dimension (``topk`` is much faster than ``kthvalue``
    or a sort for the wide rows used here)."""
    return torch.topk(dist, k, dim=-1, largest=False, sorted=False).values.amax(dim=-1)


def _kth_joint_distance(xs: torch.Tensor, ys: torch.Tensor, k: int, chunk_size: int
                        ) -> torch.Tensor:
    """k-th neighbour max-norm distance (self excluded) of every point of each column pair
    ``(xs, ys[c])``, where ``xs`` (n,) is ascending and ``ys`` (cc, n) is in the same
    order; returns (cc, n).

    Exact, with a certified window search: the k-th smallest distance ``u`` to the ``W``
    (first ``1.5 sqrt(n)``) points on each side in x order bounds the answer from above,
    and it *is* the answer when the first points outside the window are at least ``u`` away in x (every point
    further out is then at distance >= u). Uncertified points are retried with a window
    ``_GROWTH`` times wider, ending in a full search, so the result never depends on the
    window.
    """
    cc, n = ys.shape
    device = ys.device
    flat_y = ys.reshape(-1)
    d = torch.empty(cc * n, dtype=torch.float64, device=device)
    width = max(k, 16, int(_FIRST_WINDOW * math.sqrt(n)))
    if 2 * width >= n - 1:
        todo = torch.arange(cc * n, device=device)
    else:
        # first round for every point at once: sliding windows (views) of the padded
        # rows, the point itself in the middle (distance 0, hence k + 1 below)
        span = 2 * width + 1
        pad = torch.full((width,), math.inf, dtype=torch.float64, device=device)
        xwin = torch.cat([pad, xs, pad]).unfold(0, span, 1)  # (n, span)
        dx = (xwin - xs[:, None]).abs_()
        ok = torch.ones(cc, n, dtype=torch.bool, device=device)
        u = torch.empty(cc, n, dtype=torch.float64, device=device)
        per = max(1, chunk_size // (2 * n * span))
        for c0 in range(0, cc, per):
            yc = ys[c0:c0 + per]
            ywin = torch.cat([pad.expand(yc.shape[0], width), yc,
                              pad.expand(yc.shape[0], width)], dim=1).unfold(1, span, 1)
            dist = torch.maximum((ywin - yc[:, :, None]).abs_(), dx)
            u[c0:c0 + per] = _kth_smallest(dist, k + 1)
            del dist, ywin
        idx = torch.arange(n, device=device)
        e_lo, e_hi = idx - width - 1, idx + width + 1
        gap_lo = torch.where(e_lo >= 0, xs - xs[e_lo.clamp(min=0)], math.inf)
        gap_hi = torch.where(e_hi < n, xs[e_hi.clamp(max=n - 1)] - xs, math.inf)
        ok = (gap_lo >= u) & (gap_hi >= u)
        d.view(cc, n)[ok] = u[ok]
        todo = (~ok).reshape(-1).nonzero().squeeze(1)
        width *= _GROWTH
    while todo.numel():
        if 2 * width >= n - 1:  # the window holds every point: plain full search
            per = max(1, chunk_size // (4 * n))
            for s0 in range(0, todo.numel(), per):
                f = todo[s0:s0 + per]
                p = f % n
                dist = torch.maximum((xs[p][:, None] - xs[None, :]).abs_(),
                                     (flat_y[f][:, None] - ys[f // n]).abs_())
                # (k+1)-th smallest with the point itself (distance 0) = k-th neighbour
                d[f] = _kth_smallest(dist, k + 1)
            break
        offs = torch.cat([torch.arange(-width, 0, device=device),
                          torch.arange(1, width + 1, device=device)])
        per = max(1, chunk_size // (4 * offs.numel()))
        undone = []
        for s0 in range(0, todo.numel(), per):
            f = todo[s0:s0 + per]
            p = f % n
            base = f - p  # c * n
            q = p[:, None] + offs
            valid = (q >= 0) & (q < n)
            q = q.clamp(0, n - 1)
            dist = torch.maximum((xs[p][:, None] - xs[q]).abs_(),
                                 (flat_y[f][:, None] - flat_y[base[:, None] + q]).abs_())
            dist.masked_fill_(~valid, math.inf)
            u = _kth_smallest(dist, k)
            del dist, q, valid
            e_lo, e_hi = p - width - 1, p + width + 1
            ok = (((e_lo < 0) | ((xs[p] - xs[e_lo.clamp(min=0)]) >= u))
                  & ((e_hi >= n) | ((xs[e_hi.clamp(max=n - 1)] - xs[p]) >= u)))
            d[f[ok]] = u[ok]
            undone.append(f[~ok])
        todo = torch.cat(undone)
        width *= _GROWTH
    return d.view(cc, n)


def pair_mi_cc(x: torch.Tensor, y: torch.Tensor, k: int,
               chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Kraskov et al. (2004) estimator 1 (max-norm) of I(x; y_c) in nats for one column
    ``x`` (N,) against every column of ``y`` (N, C); returns (C,) float64.

    The joint-space k-th neighbour comes from :func:`_kth_joint_distance` (exact, a
    certified window in x order: about O(N sqrt(N)) per column for smooth data, O(N^2)
    at worst); the marginal counts from :func:`count_within`.
    """
    x = _as_float64(x).reshape(-1)
    y = _as_float64(y)
    n, channels = y.shape
    if n <= k:
        raise ValueError(f"KSG needs more than k={k} samples, got {n}")
    device = x.device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    xs, perm = torch.sort(x, stable=True)
    psi_n_k = _psi(n, device) + _psi(k, device)
    out = torch.empty(channels, dtype=torch.float64, device=device)
    step = max(1, min(channels, chunk_size // (12 * n)))
    for start in range(0, channels, step):
        ys = y[perm, start:start + step].T.contiguous()  # (cc, n), x order
        cc = ys.shape[0]
        radius = torch.nextafter(_kth_joint_distance(xs, ys, k, chunk_size), zero)
        nx = count_within(xs, xs.expand(cc, n), radius)  # self included = sklearn nx + 1
        ny = count_within(torch.sort(ys, dim=1).values, ys, radius)
        out[start:start + cc] = (psi_n_k - torch.special.digamma(nx.double()).mean(dim=1)
                                 - torch.special.digamma(ny.double()).mean(dim=1))
    return out.clamp_min(0.0)
