"""The forty tasks of bmi's benchmark ("Beyond Normal", Czyż et al., NeurIPS 2023), in
numpy: same names (bmi's ``BENCHMARK_TASKS`` keys), distributions and true MI.

bmi 0.1.3 pins jax 0.4.30, pydantic<2, pandas<2 and numpy 1.26, so it cannot live in
mi-probe's environment; the tasks are rebuilt here from bmi's source
(``bmi/benchmark/task_list.py`` and the samplers and transforms it uses), and
``tests/test_bench_estimators.py`` checks them against a fixture drawn from bmi itself.

A task is a root distribution with closed-form MI (a multivariate normal, a multivariate
Student-t, or X ~ U(0, 1) with Y = X + U(-ε, ε)) followed by a chain of product maps
f × g that are diffeomorphisms (or, for the Swiss roll, an embedding), so the MI is the
root's. Truths use bmi's formulas operation for operation (``np.linalg.det`` of the same
matrices), so they agree with bmi's to ~1e-15; bmi computes one truth, the additive
noise task with ε = 0.1, in float32 (jax), 5e-8 away from the float64 value given here.

Sampling is seeded by ``numpy.random.default_rng(seed)``: the numbers differ from bmi's
jax and scipy streams, the distributions do not. As in bmi, tasks that share a root draw
the same root sample for a seed (``half_cube-1v1-normal-0.75`` at seed 3 is the half-cube
of ``1v1-normal-0.75`` at seed 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

Array = np.ndarray
#: a map of one variable's samples, (N, d) -> (N, d') (vectorised over rows)
Map = Callable[[Array], Array]


# --------------------------------------------------------------------------- roots


@dataclass(frozen=True)
class Root:
    """A distribution of (X, Y) with closed-form MI."""

    kind: str  # normal | student | additive
    dim_x: int
    dim_y: int
    #: covariance (normal) or dispersion (student); None for additive
    matrix: Array | None = field(default=None, compare=False)
    df: int | None = None
    epsilon: float | None = None
    #: bivariate normal given by its correlation (bmi's BivariateNormalSampler formula)
    correlation: float | None = None

    def sample(self, n: int, rng: np.random.Generator) -> tuple[Array, Array]:
        if self.kind == "additive":
            assert self.epsilon is not None
            x = rng.uniform(0.0, 1.0, size=(n, 1))
            y = x + rng.uniform(-self.epsilon, self.epsilon, size=(n, 1))
            return x, y
        assert self.matrix is not None
        z = rng.standard_normal((n, self.dim_x + self.dim_y)) @ np.linalg.cholesky(
            self.matrix).T
        if self.kind == "student":
            assert self.df is not None
            # scipy's multivariate_t: N(0, Σ) / sqrt(W / ν), W ~ χ²(ν)
            z = z / np.sqrt(rng.chisquare(self.df, size=n) / self.df)[:, None]
        return z[:, :self.dim_x], z[:, self.dim_x:]

    def mutual_information(self) -> float:
        if self.kind == "additive":
            assert self.epsilon is not None
            eps = self.epsilon
            return 0.25 / eps if eps > 0.5 else eps - math.log(2 * eps)
        if self.correlation is not None:
            return float(-0.5 * np.log(1 - self.correlation ** 2))
        assert self.matrix is not None
        mi = _gaussian_mi(self.matrix, self.dim_x)
        if self.kind == "student":
            assert self.df is not None
            mi += _student_correction(self.df, self.dim_x, self.dim_y)
        return float(mi)


def _entropy(cov: Array) -> float:
    """Differential entropy of N(0, cov) in nats, as bmi's ``_Multinormal.entropy``."""
    return 0.5 * (np.log(np.linalg.det(cov)) + cov.shape[0] * (1 + np.log(2 * np.pi)))


def _gaussian_mi(cov: Array, dim_x: int) -> float:
    """bmi's ``SplitMultinormal.mutual_information``: H(X) + H(Y) − H(X, Y), ≥ 0."""
    mi = _entropy(cov[:dim_x, :dim_x]) + _entropy(cov[dim_x:, dim_x:]) - _entropy(cov)
    return max(0.0, mi)


def _t_entropy(k: int, dof: int) -> float:
    """Differential entropy of a standard k-dimensional Student-t with ``dof`` degrees of
    freedom (Arellano-Valle et al. 2013, eq. 7), bmi's ``_differential_entropy``."""
    from scipy.special import digamma, gamma

    half_sum = 0.5 * (dof + k)
    digamma_term = half_sum * (digamma(half_sum) - digamma(0.5 * dof))
    log_term = (-np.log(gamma(half_sum)) + np.log(gamma(0.5 * dof))
                + 0.5 * k * np.log(dof * np.pi))
    return log_term + digamma_term


def _student_correction(df: int, dim_x: int, dim_y: int) -> float:
    """The part of a Student-t's MI that does not depend on the dispersion."""
    return (_t_entropy(dim_x, df) + _t_entropy(dim_y, df) - _t_entropy(dim_x + dim_y, df))


def bivariate_normal(correlation: float) -> Root:
    cov = np.asarray([[1.0, correlation], [correlation, 1.0]])
    return Root("normal", 1, 1, matrix=cov, correlation=correlation)


def dense_covariance(dim_x: int, dim_y: int, off_diag: float = 0.5) -> Array:
    return np.eye(dim_x + dim_y) * (1 - off_diag) + off_diag


def sparse_correlation(dim_x: int, dim_y: int, n_interacting: int = 2,
                       strength: float = 2.0) -> Array:
    """bmi's ``GaussianLVMParametrization(alpha=0, beta=0, lambd=eta=strength,
    epsilon=1).correlation``: X_i and Y_i (i < n_interacting) correlated by
    strength² / (1 + strength²), every other pair independent, built as bmi builds it."""
    n = dim_x + dim_y
    cov = np.zeros((n, n))
    cov[np.diag_indices(n)] += 1.0  # epsilon²
    for i in range(n_interacting):
        j = dim_x + i
        cov[i, j] += strength ** 2
        cov[j, i] += strength ** 2
        cov[i, i] += strength ** 2
        cov[j, j] += strength ** 2
    for i in range(n_interacting, dim_x):
        cov[i, i] += strength ** 2
    for j in range(n_interacting + dim_x, n):
        cov[j, j] += strength ** 2
    var = np.diag(cov)
    return cov / np.sqrt(np.outer(var, var))


# --------------------------------------------------------------------------- maps


def normal_cdf(x: Array) -> Array:
    from scipy.special import erf

    return 0.5 * (1 + erf(x / 2 ** 0.5))


def half_cube(x: Array) -> Array:
    """x·sqrt(|x|): a signed x^(3/2), long tails from Gaussian ones."""
    return x * np.sqrt(np.abs(x))


def asinh(x: Array) -> Array:
    return np.arcsinh(x)


def wiggly_x(x: Array) -> Array:
    return x + 0.4 * np.sin(1.0 * x) + 0.2 * np.sin(1.7 * x + 1) + 0.03 * np.sin(3.3 * x - 2.5)


def wiggly_y(x: Array) -> Array:
    return (x - 0.4 * np.sin(0.4 * x) + 0.17 * np.sin(1.3 * x + 3.5)
            + 0.02 * np.sin(4.3 * x - 2.5))


def swissroll(x: Array) -> Array:
    """(N, 1) in [0, 1] -> (N, 2) on a Swiss roll (bmi's ``swissroll2d``)."""
    t = 1.5 * np.pi * (1 + 2 * x[:, 0])
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 21.0


def _inverse_cdf(cdf: Callable[[Array], Array], lo: float = -10.0, hi: float = 10.0,
                 iterations: int = 100) -> Map:
    """The inverse of an increasing ``cdf`` by bisection on [lo, hi] (bmi's
    ``invert_cdf``, vectorised, in float64)."""

    def inverse(u: Array) -> Array:
        a, b = np.full(u.shape, lo), np.full(u.shape, hi)
        for _ in range(iterations):
            m = (a + b) / 2
            below = cdf(m) < u
            a, b = np.where(below, m, a), np.where(below, b, m)
        return (a + b) / 2

    return inverse


bimodal_x = _inverse_cdf(lambda t: 0.3 * normal_cdf(t) + 0.7 * normal_cdf(t - 5))
bimodal_y = _inverse_cdf(lambda t: 0.5 * normal_cdf(t + 1) + 0.5 * normal_cdf(t - 3))


def spiral(dim: int, i: int, j: int, speed: float) -> Map:
    """bmi's ``Spiral``: x -> exp(speed·‖x‖²·G) x with G the (i, j) generator of so(dim),
    i.e. a rotation of coordinates (i, j) by the angle speed·‖x‖²."""

    def apply(x: Array) -> Array:
        theta = speed * np.einsum("ni,ni->n", x, x)
        c, s = np.cos(theta), np.sin(theta)
        out = x.copy()
        out[:, i] = c * x[:, i] - s * x[:, j]
        out[:, j] = s * x[:, i] + c * x[:, j]
        return out

    return apply


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Step:
    """One product map f × g of a task's chain (None: identity)."""

    name: str
    fx: Map | None
    fy: Map | None
    add_dim_x: int = 0


@dataclass(frozen=True)
class Task:
    """A bmi benchmark task: ``name`` is bmi's task id, ``title`` its display name."""

    name: str
    title: str
    root: Root
    chain: tuple[Step, ...] = ()

    @property
    def dim_x(self) -> int:
        return self.root.dim_x + sum(s.add_dim_x for s in self.chain)

    @property
    def dim_y(self) -> int:
        return self.root.dim_y

    @property
    def truth(self) -> float:
        """True I(X;Y) in nats (the root's: every step keeps it)."""
        return self.root.mutual_information()

    def transform(self, x: Array, y: Array) -> tuple[Array, Array]:
        """The chain applied to root samples."""
        for step in self.chain:
            x = step.fx(x) if step.fx is not None else x
            y = step.fy(y) if step.fy is not None else y
        return x, y

    def sample_root(self, n: int, seed: int) -> tuple[Array, Array]:
        return self.root.sample(n, np.random.default_rng(seed))

    def sample(self, n: int, seed: int) -> tuple[Array, Array]:
        """(n, dim_x) and (n, dim_y) float64 samples; the same ``seed`` gives the same
        numbers on every machine."""
        return self.transform(*self.sample_root(n, seed))


def _normal_cdf(task: Task) -> Task:
    return Task(f"normal_cdf-{task.name}", f"Normal CDF @ {task.title}", task.root,
                task.chain + (Step("normal_cdf", normal_cdf, normal_cdf),))


def _half_cube(task: Task) -> Task:
    return Task(f"half_cube-{task.name}", f"Half-cube @ {task.title}", task.root,
                task.chain + (Step("half_cube", half_cube, half_cube),))


def _asinh(task: Task) -> Task:
    return Task(f"asinh-{task.name}", f"Asinh @ {task.title}", task.root,
                task.chain + (Step("asinh", asinh, asinh),))


def _wiggly(task: Task) -> Task:
    return Task(f"wiggly-{task.name}", f"Wiggly @ {task.title}", task.root,
                task.chain + (Step("wiggly", wiggly_x, wiggly_y),))


def _spiral(task: Task, speed: float = 1.0) -> Task:
    """bmi's ``transform_spiral_task``: X rotated in its (0, 1) plane, Y in its (1, 2)
    plane, speeds normalised by the dimensions."""
    dx, dy = task.dim_x, task.dim_y
    step = Step("spiral", spiral(dx, 0, 1, speed / dx), spiral(dy, 1, 2, speed / dy))
    return Task(f"spiral-{task.name}", f"Spiral @ {task.title}", task.root,
                task.chain + (step,))


def _swissroll(task: Task, title: str) -> Task:
    return Task(f"swissroll_x-{task.name}", title, task.root,
                task.chain + (Step("swissroll", swissroll, None, add_dim_x=1),))


def _bimodal(correlation: float) -> Task:
    base = _normal_cdf(_binormal(correlation))
    return Task(f"1v1-bimodal-{correlation}", "Bimodal 1 × 1", base.root,
                base.chain + (Step("bimodal", bimodal_x, bimodal_y),))


def _binormal(correlation: float) -> Task:
    return Task(f"1v1-normal-{correlation}", "Bivariate normal 1 × 1",
                bivariate_normal(correlation))


def _additive(epsilon: float) -> Task:
    return Task(f"1v1-additive-{epsilon}", f"Uniform 1 × 1 (additive noise={epsilon})",
                Root("additive", 1, 1, epsilon=epsilon))


def _dense(dim_x: int, dim_y: int, off_diag: float = 0.5) -> Task:
    return Task(f"multinormal-dense-{dim_x}-{dim_y}-{off_diag}",
                f"Multinormal {dim_x} × {dim_y} (dense)",
                Root("normal", dim_x, dim_y, matrix=dense_covariance(dim_x, dim_y, off_diag)))


def _two_pair(dim_x: int, dim_y: int, strength: float = 2.0) -> Task:
    return Task(f"multinormal-sparse-{dim_x}-{dim_y}-2-{strength}",
                f"Multinormal {dim_x} × {dim_y} (2-pair)",
                Root("normal", dim_x, dim_y,
                     matrix=sparse_correlation(dim_x, dim_y, 2, strength)))


def _student(dim_x: int, dim_y: int, df: int) -> Task:
    return Task(f"student-identity-{dim_x}-{dim_y}-{df}",
                f"Student-t {dim_x} × {dim_y} (dof={df})",
                Root("student", dim_x, dim_y, matrix=np.eye(dim_x + dim_y), df=df))


def _benchmark_tasks() -> list[Task]:
    """bmi's ``BENCHMARK_TASKS_LIST``, in its order."""
    binormal = _binormal(0.75)
    uniform = _normal_cdf(binormal)
    bistudent = _student(1, 1, 1)
    one_dim = [binormal, uniform, _additive(0.1), _additive(0.75), _bimodal(0.75),
               _wiggly(binormal), _half_cube(binormal), bistudent, _asinh(bistudent)]
    embeddings = [_swissroll(uniform, "Swiss roll 2 × 1")]
    multinormal = ([_dense(d, d) for d in (2, 3, 5, 25, 50)]
                   + [_two_pair(d, d) for d in (2, 3, 5, 25)])
    student = [_student(2, 2, 1), _student(2, 2, 2), _student(3, 3, 2), _student(3, 3, 3),
               _student(5, 5, 2), _student(5, 5, 3)]
    pairs = [_two_pair(d, d) for d in (3, 5, 25)]
    transformed = ([_normal_cdf(t) for t in pairs] + [_half_cube(t) for t in pairs]
                   + [_spiral(t) for t in pairs] + [_spiral(_normal_cdf(t)) for t in pairs]
                   + [_asinh(_student(2, 2, 1)), _asinh(_student(3, 3, 2)),
                      _asinh(_student(5, 5, 2))])
    return one_dim + embeddings + multinormal + student + transformed


#: every task by bmi's name, in bmi's order
TASKS: dict[str, Task] = {t.name: t for t in _benchmark_tasks()}

#: named task lists: ``all`` (bmi's 40), ``v1`` (the 39 of bmi's
#: workflows/benchmark/v1/config.py, which leaves out 1v1-additive-0.1), bmi's groups,
#: and ``ci``, small and quick (two Gaussian, one long-tailed, one over a histogram's
#: joint-dimension cap)
SUBSETS: dict[str, tuple[str, ...]] = {
    "all": tuple(TASKS),
    "v1": tuple(name for name in TASKS if name != "1v1-additive-0.1"),
    "ci": ("1v1-normal-0.75", "half_cube-1v1-normal-0.75", "student-identity-2-2-1",
           "multinormal-sparse-5-5-2-2.0"),
    "1v1": tuple(list(TASKS)[:9]),
    "embeddings": ("swissroll_x-normal_cdf-1v1-normal-0.75",),
    "multinormal": tuple(n for n in TASKS if n.startswith("multinormal-")),
    "student": tuple(n for n in TASKS if n.startswith("student-identity-")
                     and not n.endswith("-1-1-1")),
    "transformed": tuple(list(TASKS)[25:]),
}


def standardize(x: Array) -> Array:
    """Columns scaled to mean 0 and standard deviation 1 (ddof 0; constant columns only
    centred), as sklearn's ``preprocessing.scale``: bmi's v1 protocol rescales every
    sample this way before any estimator sees it (an invertible map: MI unchanged)."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def select(names: Sequence[str] | None = None, subset: str | None = None) -> list[Task]:
    """Tasks by name and/or a named subset (bmi's order; duplicates dropped). Raises
    ``SpecError`` with a did-you-mean for an unknown name or subset."""
    from mi_probe.errors import SpecError
    from mi_probe._core.plugins import unknown_name_message

    wanted: list[str] = []
    if subset is not None:
        if subset not in SUBSETS:
            raise SpecError(unknown_name_message("task subset", subset, SUBSETS))
        wanted += SUBSETS[subset]
    for name in names or ():
        if name in SUBSETS and name not in TASKS:
            wanted += SUBSETS[name]
        elif name not in TASKS:
            raise SpecError(unknown_name_message("bmi task", name, TASKS)
                            + "; or a subset: " + ", ".join(SUBSETS))
        else:
            wanted.append(name)
    if not wanted:
        raise SpecError("no tasks: name tasks (bmi task ids) or a subset ("
                        + ", ".join(SUBSETS) + ")")
    chosen = set(wanted)
    return [task for name, task in TASKS.items() if name in chosen]
