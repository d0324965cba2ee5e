"""The spectral transforms T(U) of a direction, as registered objects: soft clip, hard clip, normalize (msign),
and NorMuon's row-normalised msign.

A :class:`Transform` maps one tensor U (a matrix, a batch of matrices stacked on the leading dims, a vector or a
scalar) to (T(U), sigma_bound), where sigma_bound is the estimate of sigma_max(U) that the method computes
anyway (per trailing matrix; ||u|| for vectors). It owns its capabilities: whether it is a unitarily invariant
map of each whole matrix (so it runs on row shards, see ``spectrakit.distributed.rows``), whether it reads the
threshold c, and the matmul FLOPs of one call (the distributed partition balances ranks by them). A transform
with per-parameter state (NorMuon's row second moments) adds a ``finish`` stage run on each parameter's slice.

- soft:      sigma -> sigma / sqrt(1 + sigma^2/c^2);  vectors u / sqrt(1 + ||u||^2/c^2) (``vector_rule="smooth"``)
             or, ``vector_rule="authors"``, u unchanged when ||u|| <= c (a torch.where on device, no host sync)
- hard:      sigma -> min(sigma, c);  vectors u * min(1, c/||u||)
- normalize: sigma -> 1 (msign, Muon's limit);  vectors u / ||u|| (0 stays 0)
- normalize_rows (NorMuon, Li et al. 2025, arXiv 2510.05491):  O = msign(U);
             v <- b2 v + (1 - b2) mean_cols(O * O) (one entry per row);  O' = O / (sqrt(v) + eps);
             T(U) = update_scale * sqrt(m n) * O' / ||O'||_F   (the update RMS is update_scale)

Methods: "auto" / "polar" / "newton_schulz" / "svd" as in spectrakit.linalg. For normalize, "svd" is the exact
polar factor, "newton_schulz" the Keller quintic and "auto"/"polar" Polar Express (``coefficients`` overrides
the set). ``dtype`` None means each linalg function's own default (msign: bfloat16 where bf16 matmuls are
fast, CUDA and CPUs with AMX or AVX512-BF16, float32 elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..linalg import hard_clip, msign, msign_svd, soft_clip
from ..linalg.clip import HARD_METHODS, SOFT_METHODS
from ..linalg.fast_clip import FAST_STEPS
from ..linalg.restart import HARD_MAX_RATIO, MAX_RATIO, WIDE, fixed_steps
from ..linalg.symmetric import block_count
from ._registry import Registry

VECTOR_RULES = ("smooth", "authors")
NORMALIZE_METHODS = ("auto", "polar", "newton_schulz", "svd")


class TransformOptions(NamedTuple):
    """How a transform computes: the matrix-function method, its steps and dtype, msign coefficients, the rule
    for vectors, and for the polar clips ``adaptive`` (False: the fixed accelerator schedule, no host read).
    None means the linalg function's own default."""

    method: str = "auto"
    steps: int | None = None
    dtype: torch.dtype | None = None
    coefficients: Any = None
    vector_rule: str = "smooth"
    adaptive: bool | None = None


DEFAULT_OPTIONS = TransformOptions()

ApplyFn = Callable[[Tensor, float, TransformOptions, bool], tuple[Tensor, "Tensor | None"]]
FinishFn = Callable[[Tensor, dict[str, Any], Mapping[str, Any]], Tensor]


@dataclass(frozen=True)
class Transform:
    """A spectral transform of a (stack of) matrices: ``apply(U, c, options, need_bound) -> (T(U), bound)``.

    Attributes:
        name: the ``clip`` value that selects it.
        methods: the ``clip_method`` values it accepts.
        uses_threshold: whether c matters (False: c is ignored).
        rows_capable: T is a unitarily invariant map of each whole matrix, T(Q R) = Q T(R), so it can run on
            row shards without gathering the matrix.
        products: (q, p, options) -> matmul FLOPs of one call on a q x p matrix in the wide orientation.
        vector: the 1 x n case for vectors, (u, c, options) -> (T(u), ||u||).
        finish: optional per-parameter stage with state, (T(U) of one parameter, its state, group) -> update.
        vector_rows: optional, the vector rule on a stack (k, n) of k vectors, each row on its own:
            (U, c, options) -> (T(U), the k norms). With it the step engine stacks same-length vectors into one
            call; without it (a transform registered before this existed) each vector takes ``vector`` alone.
    """

    name: str
    methods: tuple[str, ...]
    uses_threshold: bool
    rows_capable: bool
    apply: ApplyFn
    products: Callable[[int, int, TransformOptions], float]
    vector: Callable[[Tensor, float, TransformOptions], tuple[Tensor, Tensor]]
    finish: FinishFn | None = None
    vector_rows: Callable[[Tensor, float, TransformOptions], tuple[Tensor, Tensor]] | None = None

    def check_method(self, method: object, key: str = "clip_method") -> None:
        """Raise ValueError naming ``key`` unless ``method`` exists for this transform."""
        if method not in self.methods:
            raise ValueError(f"{key} must be one of {self.methods} for clip={self.name!r}, got {method!r}")

    def __call__(self, U: Tensor, c: float, options: TransformOptions = DEFAULT_OPTIONS, *,
                 vector: bool | None = None, need_bound: bool = True) -> tuple[Tensor, Tensor | None]:
        """(T(U), sigma_bound); ``vector`` treats U as one vector (default: U.dim() < 2)."""
        if vector if vector is not None else U.dim() < 2:
            return self.vector(U, c, options)
        # not math.isinf: c may be a symbolic float under torch.compile; a tensor c is not read on the host
        if self.uses_threshold and not isinstance(c, Tensor) and c == math.inf:
            return U, torch.linalg.matrix_norm(U.float())
        return self.apply(U, c, options, need_bound)

    def flops(self, shape: tuple[int, ...], options: TransformOptions = DEFAULT_OPTIONS) -> float:
        """Estimated matmul FLOPs of one call on a tensor of ``shape`` (vectors: their length)."""
        if len(shape) < 2:
            return float(math.prod(shape))
        m, n = shape[-2], shape[-1]
        return float(math.prod(shape[:-2])) * self.products(min(m, n), max(m, n), options)


#: The registered transforms by name: ``register_transform(t)`` adds one, ``transform_named(name)`` reads one.
TRANSFORMS: Registry[Transform] = Registry(Transform, "clip")
register_transform = TRANSFORMS.register
transform_named = TRANSFORMS.named


def check_method(kind: str, method: str, name: str = "clip_method") -> None:
    """Raise ValueError naming the argument ``name`` unless ``method`` exists for clip ``kind``."""
    transform_named(kind).check_method(method, name)


# ------------------------------------------------------------------------------------------- vectors
def _vector_rule(kind: str, rows: bool = False) -> Callable[[Tensor, float, TransformOptions], tuple[Tensor, Tensor]]:
    """The rule for one vector (its norm over every entry), or with ``rows`` for each row of a (k, n) stack."""
    def rule(u: Tensor, c: float, options: TransformOptions) -> tuple[Tensor, Tensor]:
        uf = u.to(torch.promote_types(u.dtype, torch.float32))  # float64 vectors stay float64
        norm = torch.linalg.vector_norm(uf, dim=-1, keepdim=True) if rows else torch.linalg.vector_norm(uf)
        if kind == "normalize":
            scale = 1 / norm.clamp_min(1e-30)
        elif kind == "hard":
            scale = torch.clamp(c / norm.clamp_min(1e-30), max=1.0)
        else:
            scale = torch.rsqrt(1 + (norm / c) ** 2)
            if options.vector_rule == "authors":
                scale = torch.where(norm <= c, torch.ones_like(scale), scale)
        return (uf * scale).to(u.dtype), norm.squeeze(-1) if rows else norm
    return rule


# ------------------------------------------------------------------------------------------ matrices
def _clip(kind: str) -> ApplyFn:
    fn = soft_clip if kind == "soft" else hard_clip

    def apply(U: Tensor, c: float, options: TransformOptions, need_bound: bool) -> tuple[Tensor, Tensor | None]:
        return fn(U, c, method=options.method, steps=options.steps, dtype=options.dtype, return_bound=True,
                  adaptive=options.adaptive)
    return apply


def _normalize(U: Tensor, c: float, options: TransformOptions, need_bound: bool) -> tuple[Tensor, Tensor | None]:
    bound = torch.linalg.matrix_norm(U.float()) if need_bound else None  # Frobenius: an upper bound on sigma_max
    if options.method == "svd":
        return msign_svd(U), bound
    coefficients = options.coefficients
    if coefficients is None:
        coefficients = "keller" if options.method == "newton_schulz" else "polar_express"
    return msign(U, coefficients=coefficients, steps=options.steps, dtype=options.dtype), bound


def _normalize_rows_finish(O: Tensor, state: dict[str, Any], group: Mapping[str, Any]) -> Tensor:
    """NorMuon's row normalisation of one parameter's O = msign(U) (see the module docstring)."""
    if O.dim() < 2:  # vectors: the normalized vector already has RMS 1/sqrt(n); scale it like a 1 x n matrix
        return O * (group["update_scale"] * math.sqrt(O.numel()))
    work = torch.promote_types(O.dtype, torch.float32)
    Of = O.to(work)
    if "row_second_moment" not in state:
        state["row_second_moment"] = torch.zeros(O.shape[:-1], dtype=work, device=O.device)
    v = state["row_second_moment"]
    v.lerp_(Of.square().mean(dim=-1), 1 - group["beta2"])
    normed = Of / (v.sqrt().unsqueeze(-1) + group["eps"])
    m, n = O.shape[-2:]
    rms_scale = group["update_scale"] * math.sqrt(m * n) / torch.linalg.matrix_norm(normed).clamp_min(1e-30)
    return (normed * rms_scale[..., None, None]).to(O.dtype)


# ---------------------------------------------------------------------------------------- FLOP counts
def _clip_products(kind: str) -> Callable[[int, int, TransformOptions], float]:
    """Matmul FLOPs of a clip on the accelerator path (``adaptive=False``), counted from its products; a
    symmetric product does the fraction f = (k + 1) / (2k) of a full one, k = ``symmetric.block_count(q)`` row
    blocks (at least 4 for the Gram products X X^T where p >= WIDE q: f_w). Soft (restart.py, t factor-phase
    steps of the fixed schedule): X X^T, Y Y^T (f_w) and Q X, M Y (full), 2 (2 f_w + 2) q^2 p; G^2, 8 Gram-phase
    products, Q^2, R_K^2 and 2 (t - 1) Gram matrices of the factor phase (f), and t factor products (full),
    2 ((11 + 2 (t - 1)) f + t) q^3. Hard (hard_accel.py): its soft clip (t one larger), W (f_w) and the final
    product, 2 (f_w + 1) q^2 p, and ~37.5 symmetric q x q products (E^2, the sign and inverse-square-root
    iterations), 75 f q^3. Within 5% of FlopCounterMode on the meta device (tests/test_distributed_api.py).
    The soft clip's fast mode (dtype bfloat16, fast_clip.py: X X^T, row-blocked to 62.5% where p >= 4 q, and Q X;
    G^2 and 4 q x q products per step after the first) (2 or 1.25) q^2 p + 2 q^2 p + (2 + 8 (k - 1)) q^3, k steps
    (3); the authors' method (SPEC 1.3) 4 q^2 p + 6 k q^3, k = 10.
    Exact SVD ~ 4 q^2 p + 22 q^3."""
    def fraction(k: int) -> float:
        return (k + 1) / (2 * k)

    def products(q: int, p: int, options: TransformOptions) -> float:
        if options.method == "svd":
            return 4.0 * q * q * p + 22.0 * q**3
        if kind == "soft" and options.method == "newton_schulz":
            return 4.0 * q * q * p + 6.0 * (options.steps or 10) * q**3
        if kind == "soft" and options.dtype == torch.bfloat16:
            gram = 2.0 * fraction(4 if p >= WIDE * q else 1)
            return (gram + 2.0) * q * q * p + (2.0 + 8.0 * ((options.steps or FAST_STEPS) - 1)) * q**3
        k = block_count(q, torch.float32)
        f, f_w = fraction(k), fraction(max(4, k) if p >= WIDE * q else k)
        t = fixed_steps(MAX_RATIO if kind == "soft" else HARD_MAX_RATIO)[1]
        soft = 2.0 * (2.0 * f_w + 2.0) * q * q * p + 2.0 * ((11 + 2 * (t - 1)) * f + t) * q**3
        return soft if kind == "soft" else soft + 2.0 * (f_w + 1.0) * q * q * p + 75.0 * f * q**3
    return products


def _msign_products(q: int, p: int, options: TransformOptions) -> float:
    """A polar step on X (q x p): X X^T (2 q^2 p), its square (2 q^3) and B X (2 q^2 p); Polar Express 8 steps,
    Keller 5 by default."""
    if options.method == "svd":
        return 4.0 * q * q * p + 22.0 * q**3
    steps = options.steps or (5 if options.method == "newton_schulz" or options.coefficients == "keller" else 8)
    return steps * (4.0 * q * q * p + 2.0 * q**3)


for _transform in (
    Transform("soft", SOFT_METHODS, True, True, _clip("soft"), _clip_products("soft"), _vector_rule("soft"),
              vector_rows=_vector_rule("soft", rows=True)),
    Transform("hard", HARD_METHODS, True, True, _clip("hard"), _clip_products("hard"), _vector_rule("hard"),
              vector_rows=_vector_rule("hard", rows=True)),
    Transform("normalize", NORMALIZE_METHODS, False, True, _normalize, _msign_products, _vector_rule("normalize"),
              vector_rows=_vector_rule("normalize", rows=True)),
    # the finish stage's Frobenius norm spans the whole matrix: not computable from one rank's rows alone
    Transform("normalize_rows", NORMALIZE_METHODS, False, False, _normalize, _msign_products,
              _vector_rule("normalize"), finish=_normalize_rows_finish,
              vector_rows=_vector_rule("normalize", rows=True)),
):
    register_transform(_transform)
del _transform

#: The transforms ``Spectra(clip=...)`` and ``SpectraWrapper(clip=...)`` accept: those without per-parameter
#: state (the wrapper keeps none of its own).
CLIP_KINDS = ("soft", "hard", "normalize")


def spectral_transform(U: Tensor, kind: str, c: float, *, method: str = "auto", steps: int | None = None,
                       dtype: torch.dtype | None = None, coefficients: Any = None,
                       vector_rule: str = "smooth", vector: bool | None = None,
                       need_bound: bool = True) -> tuple[Tensor, Tensor | None]:
    """(T(U), sigma_bound) for one direction tensor with the registered transform ``kind`` (stateless ones);
    ``c`` is ignored by normalize.

    ``vector``: treat U as one vector (default: U.dim() < 2). c = inf returns U unchanged (soft/hard).
    ``need_bound=False`` lets normalize skip its extra Frobenius norm (the bound is then None).
    """
    transform = transform_named(kind)
    if transform.finish is not None:
        raise ValueError(f"clip={kind!r} keeps per-parameter state; use it through an optimizer (NorMuon)")
    return transform(U, c, TransformOptions(method, steps, dtype, coefficients, vector_rule), vector=vector,
                     need_bound=need_bound)
