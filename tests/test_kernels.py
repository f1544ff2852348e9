"""The histogram MI kernels on every path: compiled CPU counting, torch (any device),
one-hot matmuls, and (marked ``cuda``, skipped without a GPU) the CUDA paths.

The contract: every path gives the codes of ``floor((x − lo) / (hi − lo) · B)`` in
float64 bit for bit, and MI equal to ``sklearn.metrics.mutual_info_score`` on those
codes to 1e-9 (in practice ~1e-15). Results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from mi_probe.functional import histogram as F
from mi_probe.functional import pairwise as P

EXACT = 1e-9
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def activations(n: int, c: int, k: int, seed: int, dtype=torch.float32):
    """ReLU-like channels with label signal, ties (exact zeros), a constant channel and
    values on a coarse grid (many samples exactly on bin edges)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.relu(torch.randn(n, c, generator=g) + y[:, None] * torch.rand(c, generator=g))
    x[:, 0] = 2.5                                            # constant
    x[:, 1] = torch.randint(0, 21, (n,), generator=g) / 4.0  # grid: bin edges hit exactly
    x[:, 2] = -x[:, 2] * 1e-30                               # tiny negative range
    return x.to(dtype), y


@pytest.fixture
def threads():
    """Restore torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32,
                                   torch.float64, torch.int32])
@pytest.mark.parametrize("bins", [2, 7, 20, 300])
@pytest.mark.parametrize("quantile", [None, 0.05])
def test_compiled_binning_equals_the_torch_reference_bit_for_bit(dtype, bins, quantile):
    x, _ = activations(500, 9, 4, seed=bins, dtype=torch.float32)
    x = (x * 40).to(dtype) if dtype == torch.int32 else x.to(dtype)
    got = F.bin_uniform(x, bins, quantile)
    assert got.dtype == torch.int64 and got.shape == x.shape
    assert torch.equal(got, F._bin_uniform_torch(x, bins, quantile))
    narrow = F.narrow_codes(x, bins, quantile)
    assert narrow.dtype == (np.uint8 if bins <= 256 else np.uint16)
    assert np.array_equal(narrow.T, got.numpy())


def test_codes_on_bin_edges_and_tiny_ranges_follow_the_reference_quotient():
    """The kernel multiplies by B / width and recomputes values near an edge by the
    reference quotient: grid values that land exactly on edges, a range so narrow that
    B / width overflows, and subnormal values all keep the reference codes."""
    g = torch.Generator().manual_seed(0)
    grid = torch.randint(0, 1001, (4000, 6), generator=g).to(torch.float64) / 1000 * 3 - 1
    grid[:, 1] *= 7.3e-3
    tiny = torch.tensor([[0.0], [1e-310], [2e-310], [3e-310], [5e-324]], dtype=torch.float64)
    for x, bins in ((grid, 20), (grid, 7), (grid.float(), 64), (tiny, 4), (tiny, 20)):
        assert torch.equal(F.bin_uniform(x, bins), F._bin_uniform_torch(x, bins))


def test_compiled_binning_handles_ranges_beyond_the_largest_double():
    x = torch.tensor([[-1.7e308, 0.0], [0.0, 1.0], [1.7e308, 2.0], [1e307, 3.0]],
                     dtype=torch.float64)
    got = F.bin_uniform(x, 10)
    assert torch.equal(got, F._bin_uniform_torch(x, 10))
    assert got[:, 0].tolist() == [0, 5, 9, 5]


def test_compiled_binning_refuses_non_finite_values_naming_them():
    x = torch.ones(6, 3)
    x[1, 2], x[4, 0] = float("nan"), float("-inf")
    with pytest.raises(ValueError, match=r"found 1 NaN, 0 \+inf and 1 -inf values in 2 of 3"):
        F.bin_uniform(x, 5)
    with pytest.raises(ValueError, match="found 1 NaN"):
        F.channel_statistics(x, None, 5)
    with pytest.raises(ValueError, match="at least one sample"):
        F.bin_uniform(torch.ones(0, 3), 5)


# ---------------------------------------------------------------------------------------
# per-channel label MI
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,c,bins,k", [(1, 3, 4, 2), (50, 5, 2, 2), (700, 33, 20, 10),
                                        (400, 6, 300, 3)])
def test_channel_statistics_match_sklearn_and_the_torch_path(n, c, bins, k):
    x, y = activations(n, c, k, seed=n + c)
    stats = F.channel_statistics(x, y, bins, k)
    codes = F._bin_uniform_torch(x, bins)
    ref = np.array([mutual_info_score(y.numpy(), codes[:, j].numpy()) for j in range(c)])
    assert np.abs(stats.label_mi.numpy() - ref).max() <= EXACT
    assert stats.label_mi[0] == 0 and stats.entropy[0] == 0  # constant channel: exactly 0
    # the torch path (the one CUDA runs) counts the same table; its float64 entropies
    # sum the cells in another order
    torch_joint = F.joint_counts_from_codes(codes, y, bins, k)
    close = dict(atol=1e-12, rtol=0)
    assert torch.allclose(stats.label_mi, F.label_mi_from_joint(torch_joint), **close)
    assert torch.allclose(stats.entropy, F.entropy_from_joint(torch_joint), **close)
    assert torch.equal(stats.label_mi_mm, F.miller_madow_mi_correction(codes, y, bins, k))
    assert torch.equal(stats.occupied, F.occupied(codes, bins))


def test_channel_statistics_in_chunks_are_identical():
    x, y = activations(300, 37, 7, seed=3)
    whole = F.channel_statistics(x, y, 20, 7)
    for max_cells in (1, 150, 1000):  # 1 channel per chunk, uneven chunks with a tail
        part = F.channel_statistics(x, y, 20, 7, max_cells=max_cells)
        for a, b in zip(vars(whole).values(), vars(part).values()):
            assert torch.equal(a, b)


def test_results_do_not_depend_on_the_thread_count(threads, monkeypatch):
    from mi_probe.functional import counting

    monkeypatch.setattr(counting, "PARALLEL_MIN_STEPS", 0)  # split even this small input
    x, y = activations(600, 64, 10, seed=5)
    results = []
    for t in (1, 3):
        torch.set_num_threads(t)
        results.append((F.channel_statistics(x, y, 20, 10).label_mi, F.bin_uniform(x, 20),
                        P.pair_mi(x, x, 20), P.pair_mi(x[:, :20], x, 20)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_labels_are_checked():
    x, y = activations(40, 3, 4, seed=1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); found \[0, 3\]"):
        F.channel_statistics(x, y, 5, 3)
    with pytest.raises(ValueError, match=r"labels must have shape \(40,\), got \(39,\)"):
        F.channel_statistics(x, y[:39], 5, 4)


# ---------------------------------------------------------------------------------------
# channel pairs
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bins", [2, 5, 20, 300])
def test_pair_kernels_match_sklearn_and_each_other(bins):
    a, _ = activations(400, 7, 3, seed=bins)
    b, _ = activations(400, 5, 3, seed=bins + 1)
    ca, cb = F._bin_uniform_torch(a, bins), F._bin_uniform_torch(b, bins)
    ref = np.array([[mutual_info_score(ca[:, i].numpy(), cb[:, j].numpy()) for j in range(5)]
                    for i in range(7)])
    counting = P.pair_mi(a, b, bins, method="counting")
    onehot = P.pair_mi(a, b, bins, method="onehot")
    for got in (counting, onehot, P.pair_mi_from_codes(ca, cb, bins, method="counting"),
                P.pair_mi_from_codes(ca, cb, bins, method="onehot")):
        assert got.dtype == torch.float64 and got.shape == (7, 5)
        assert np.abs(got.numpy() - ref).max() <= EXACT
    assert torch.equal(counting[0], torch.zeros(5, dtype=torch.float64))  # constant channel
    assert torch.allclose(counting, onehot, atol=1e-12, rtol=0)


def test_a_layer_with_itself_counts_each_pair_once_and_mirrors_it():
    x, _ = activations(500, 12, 3, seed=9)
    same = P.pair_mi(x, x, 20, method="counting")
    apart = P.pair_mi(x, x.clone(), 20, method="counting")  # not the same tensor: all pairs
    assert torch.equal(same, same.T)
    assert torch.allclose(same, apart, atol=1e-12, rtol=0)
    entropies = F.channel_statistics(x, None, 20).entropy
    assert torch.allclose(same.diagonal(), entropies, atol=1e-12, rtol=0)  # I(X;X) = H(X)


def test_pair_inputs_are_checked():
    x, _ = activations(30, 3, 2, seed=2)
    with pytest.raises(ValueError, match="same samples, got 30 and 29"):
        P.pair_mi(x, x[:29], 5)
    with pytest.raises(ValueError, match=r"unknown pair method 'fast'; valid: \['auto'"):
        P.pair_mi(x, x, 5, method="fast")
    codes = F.bin_uniform(x, 5)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\); found \[0, 4\]"):
        P.pair_mi_from_codes(codes, codes, 4, method="counting")


def test_cost_model_picks_matmuls_on_accelerators_and_counting_at_usual_cpu_sizes():
    assert P.pair_method("cuda", 3925, 20) == "onehot"
    assert P.pair_method("cpu", 3925, 20) == "counting"
    assert P.pair_method("cpu", 2000, 30) == "counting"
    # two bins: 8 flops per sample beat a scattered increment
    assert P.pair_method("cpu", 2000, 2) == "onehot"


# ---------------------------------------------------------------------------------------
# CUDA: the same numbers as the CPU (run by benchmarks/gpu_check.sh on a GPU machine)
# ---------------------------------------------------------------------------------------

@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("quantile", [None, 0.01])
def test_cuda_binning_and_label_mi_equal_the_cpu(quantile):
    x, y = activations(3000, 64, 10, seed=11)
    gx, gy = x.cuda(), y.cuda()
    assert torch.equal(F.bin_uniform(gx, 20, quantile).cpu(), F.bin_uniform(x, 20, quantile))
    cpu = F.channel_statistics(x, y, 20, 10, quantile)
    gpu = F.channel_statistics(gx, gy, 20, 10, quantile)
    for a, b in zip(vars(cpu).values(), vars(gpu).values()):
        assert b.device.type == "cuda"
        assert torch.allclose(a, b.cpu(), atol=1e-12, rtol=0)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("bins", [2, 20, 64])
def test_cuda_pair_mi_equals_the_cpu_counting_kernel(bins):
    a, _ = activations(4000, 48, 3, seed=bins)
    b, _ = activations(4000, 40, 3, seed=bins + 1)
    cpu = P.pair_mi(a, b, bins, method="counting")
    gpu = P.pair_mi(a.cuda(), b.cuda(), bins)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-12, rtol=0)
    ga = a.cuda()
    assert torch.allclose(P.pair_mi(ga, ga, bins).cpu(), P.pair_mi(a, a, bins, method="counting"),
                          atol=1e-12, rtol=0)


@pytest.mark.cuda
@cuda
def test_cuda_pair_counts_stay_exact_under_reduced_precision_matmul_settings():
    """TF32 / bf16-internal float32 matmuls keep 0/1 inputs exact and accumulate in
    float32, so the counts (hence the MI) do not change."""
    a, _ = activations(5000, 16, 3, seed=4)
    ref = P.pair_mi(a, a, 20, method="counting")
    before = torch.get_float32_matmul_precision()
    try:
        for precision in ("high", "medium"):
            torch.set_float32_matmul_precision(precision)
            got = P.pair_mi(a.cuda(), a.cuda().clone(), 20)
            assert torch.allclose(got.cpu(), ref, atol=1e-12, rtol=0)
    finally:
        torch.set_float32_matmul_precision(before)


def test_without_numba_the_cpu_falls_back_to_the_torch_kernels(monkeypatch):
    from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
    from mi_probe.functional import counting

    x, y = activations(300, 8, 4, seed=6)
    est = HistogramEstimator(HistogramParams(bins=20))
    fast = (est.label_mi(x, y, 4), est.pair_mi(x, x))
    monkeypatch.setattr(counting, "available", lambda: False)
    assert P.pair_method("cpu", 3925, 20) == "onehot"
    slow = (est.label_mi(x, y, 4), est.pair_mi(x, x))
    for a, b in zip(fast, slow):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="counting kernel needs numba"):
        P.pair_mi(x, x, 20, method="counting")


def test_the_gpu_check_is_ready_to_run(pm):
    """benchmarks/gpu_check.sh parses and its VGG-16 spec validates (it runs on a GPU)."""
    import subprocess
    from pathlib import Path

    from mi_probe._core.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    assert subprocess.run(["bash", "-n", str(root / "benchmarks/gpu_check.sh")]).returncode == 0
    spec = load_spec(root / "benchmarks/specs/gpu_layer_mi_vgg16.yaml", pm=pm)
    assert spec.device == "cuda" and spec.model.arch == "vgg16"
    assert spec.data.image_size == 224


def test_first_calls_on_several_threads_compile_and_load_safely(tmp_path):
    """numba's compile / cache-load step is not thread-safe (two threads loading one
    kernel from the cache at once failed in numba's typing registry); the kernels' first
    call in a fresh process splits work over threads at once. Twice: compiling into an
    empty cache, then loading from it. A race: without the lock this does not fail on
    every run, so it guards the fix rather than proving it."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from mi_probe.functional import counting, histogram as F, pairwise as P\n"
        "counting.PARALLEL_MIN_STEPS = 0\n"
        "torch.set_num_threads(4)\n"
        "x = torch.rand(200, 40)\n"
        "y = torch.randint(0, 3, (200,))\n"
        "F.channel_statistics(x, y, 20, 3)\n"
        "F.bin_uniform(x, 20)\n"
        "P.pair_mi(x, x, 20, method='counting')\n"
        "print('ok')\n")
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    for attempt in ("compile", "load"):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=env, timeout=600)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", (attempt, proc.stderr[-3000:])
    assert any(tmp_path.rglob("*.nbi"))  # the cache was written and then used
