"""FrogLinear: a frozen linear layer plus a trainable sparse delta on selected weights."""

from __future__ import annotations

import warnings
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from spectune.errors import SpectuneError

#: Above this fraction of trainable entries the delta's gradient is taken from the dense
#: weight gradient (one GEMM) instead of the sampled product (cheaper below it).
SPARSE_GRAD_MAX_DENSITY = 0.25

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (splitmix64 steps): stable across runs/platforms."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        z = (h ^ (int(part) & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


def name_seed(seed: int, name: str, purpose: str) -> int:
    """A per-layer seed derived from the run seed, the module name and a purpose tag."""
    return mix_seed(seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode()))


class FrogLinear(nn.Module):
    """A linear layer whose frozen weight W gets a trainable sparse delta D on K entries.

    Formula (x: (..., M), W: (N, M), b: (N,), K selected entries with flat indices p_k = i*M + j
    and trainable values d_k)::

        D = scatter(indices, delta)                      (N, M), zero outside the K entries
        y = x (W + E_t + D)^T + b                        (..., N)
        E_t = c_t * noise_scale * S_masked * Z_t,  Z_t ~ N(0, noise_sigma^2) i.i.d.  (N, M)

    E_t is the guided noise: only in training mode (``self.training``), drawn fresh for every
    forward pass from a generator seeded by (seed, module name, t) so that a run is
    reproducible and a resumed run continues the same noise sequence; it is zero on the K
    trainable entries (noise goes to the *frozen* weights) and is never written into W.
    c_t = max(0, 1 - t / noise_decay_steps) (or 1 without decay), t = the number of training
    forward passes so far (``noise_step``, settable with :meth:`set_noise_step`). In eval
    mode E = 0 and the output equals that of ``nn.Linear`` with weight W + D
    (:meth:`to_linear`). With gradient checkpointing, the recomputed forward counts as another
    pass and draws other noise than the first: do not combine the two.

    Only ``delta`` (shape (K,)) is a trainable parameter, so an optimizer keeps state for K
    numbers. Storage: to avoid copying W at every step, the ``weight`` tensor holds W + D,
    and the exact pretrained values of the K selected entries are kept in the buffer
    ``base_values`` (K,); before each forward the K entries are rewritten from
    base_values + delta (O(K) work, and only when delta changed). So W is never trained and
    stays exactly recoverable (:meth:`base_weight`), the forward is ``F.linear`` on the stored
    weight with no O(N M) copy, and merging (:meth:`to_linear`) costs nothing. Note that the
    model's original weight tensor is shared, so after ``apply_frog`` it holds W + D too.
    Backward computes dL/dx with the same stored weight and dL/d_delta_k =
    sum_tokens dL/dy_i x_j only on the K entries with a sampled dense-dense product
    (``torch.sparse.sampled_addmm``, O(tokens * K)) instead of the full N x M weight-gradient
    GEMM (above a density of 25% the dense GEMM is used). With guided noise on, the forward
    uses W + D + E, one N x M copy per layer, kept until backward.

    Precision: ``delta`` is float32 for float16/bfloat16 weights (updates smaller than the
    half-precision spacing of W would otherwise be lost) and W's dtype otherwise.

    Memory of guided noise: ``noise_scores`` holds S for every weight of W in its own dtype
    (float32: as much as W itself; bfloat16/float16 halve it), plus one N x M noise tensor
    per layer alive from forward to backward during training. Without noise none of it exists.

    Args:
        weight: W, shape (N, M), frozen (requires_grad is switched off); kept as is, not
            copied, when it is already an ``nn.Parameter`` (its K selected entries are then
            overwritten with W + D, see above).
        bias: b, shape (N,), or None; kept as is.
        indices: flat indices i*M + j of the K trainable entries, shape (K,), strictly
            increasing, in [0, N*M).
        values: initial delta values, shape (K,); None = zeros (start at W exactly).
        noise_scores: S, shape (N, M), needed when noise_scale > 0; entries at ``indices``
            are treated as zero.
        noise_scale: beta of the guided noise (0 = off).
        noise_sigma: sigma_noise of the guided noise.
        noise_decay_steps: linear decay of the noise to zero over this many training forward
            passes (None = constant).
        seed: run seed of the guided noise.
        name: the module's name in its model (seeds the noise, names tensors in errors).

    Raises:
        SpectuneError: inconsistent shapes, indices out of range / unsorted / repeated, or
            noise_scale > 0 without noise_scores.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        indices: torch.Tensor,
        values: torch.Tensor | None = None,
        *,
        noise_scores: torch.Tensor | None = None,
        noise_scale: float = 0.0,
        noise_sigma: float = 1.0,
        noise_decay_steps: int | None = None,
        seed: int = 0,
        name: str = "",
    ) -> None:
        super().__init__()
        label = name or "FrogLinear"
        if weight.ndim != 2 or not weight.is_floating_point():
            raise SpectuneError(
                f"{label}.weight must be a 2-D float matrix, got shape {tuple(weight.shape)} "
                f"dtype {weight.dtype}"
            )
        n_out, n_in = weight.shape
        self.name = name
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
        self.weight.requires_grad_(False)
        if not self.weight.is_contiguous():
            self.weight.data = self.weight.data.contiguous()
        if bias is not None and not isinstance(bias, nn.Parameter):
            bias = nn.Parameter(bias, requires_grad=False)
        if bias is not None and tuple(bias.shape) != (n_out,):
            raise SpectuneError(f"{label}.bias has shape {tuple(bias.shape)}, expected ({n_out},)")
        self.bias = bias

        idx = _check_indices(indices, n_out * n_in, f"{label}.indices").to(weight.device)
        self.register_buffer("indices", idx)
        rows = torch.div(idx, n_in, rounding_mode="floor")
        crow = torch.zeros(n_out + 1, dtype=torch.int64, device=weight.device)
        crow[1:] = torch.bincount(rows, minlength=n_out).cumsum(0)
        self.register_buffer("_crow", crow, persistent=False)  # (N+1,) CSR row pointers
        self.register_buffer("_col", idx % n_in, persistent=False)  # (K,) column of each entry

        k = idx.numel()
        delta_dtype = (
            torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        )
        if values is None:
            init = torch.zeros(k, dtype=delta_dtype, device=weight.device)
        else:
            if tuple(values.shape) != (k,):
                raise SpectuneError(
                    f"{label}: {k} indices but {tuple(values.shape)} delta values; they must match"
                )
            init = values.detach().to(device=weight.device, dtype=delta_dtype).clone()
        self.delta = nn.Parameter(init)

        if noise_scale > 0 and noise_scores is None:
            raise SpectuneError(f"{label}: noise_scale > 0 needs noise_scores (the S matrix)")
        scores = None
        if noise_scores is not None:
            if tuple(noise_scores.shape) != (n_out, n_in):
                raise SpectuneError(
                    f"{label}: noise_scores has shape {tuple(noise_scores.shape)}, expected "
                    f"{(n_out, n_in)}"
                )
            scores = noise_scores.detach().to(weight.device)
            if k and bool(scores.reshape(-1)[idx].any()):  # noise only on frozen entries
                scores = scores.clone()
                scores.view(-1)[idx] = 0
        self.register_buffer("noise_scores", scores, persistent=False)
        # exact W at the K entries; from here on the weight tensor holds W + D there
        self.register_buffer("base_values", self.weight.detach().reshape(-1)[idx].clone())
        self._sync()
        self.noise_scale = float(noise_scale)
        self.noise_sigma = float(noise_sigma)
        self.noise_decay_steps = noise_decay_steps
        self.noise_step = 0
        self.seed = int(seed)

    # -- shapes ------------------------------------------------------------------------------

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def num_trainable(self) -> int:
        """K, the number of trainable entries."""
        return self.indices.numel()

    # -- noise -------------------------------------------------------------------------------

    def set_noise_step(self, step: int) -> None:
        """Set t, the number of training forward passes already done (e.g. when resuming)."""
        self.noise_step = int(step)

    def noise_factor(self, step: int) -> float:
        """c_t: 1 without decay, else max(0, 1 - t / noise_decay_steps)."""
        if self.noise_decay_steps is None:
            return 1.0
        return max(0.0, 1.0 - step / self.noise_decay_steps)

    def noise(self, step: int) -> torch.Tensor | None:
        """E_t for training forward pass ``step``, shape (N, M) float32, or None when zero."""
        if self.noise_scale == 0 or self.noise_scores is None:
            return None
        factor = self.noise_factor(step)
        if factor == 0:
            return None
        gen = torch.Generator(device=self.weight.device)
        gen.manual_seed(mix_seed(name_seed(self.seed, self.name, "noise"), step))
        z = torch.randn(
            self.weight.shape, generator=gen, device=self.weight.device, dtype=torch.float32
        )
        return z.mul_(self.noise_scores).mul_(self.noise_scale * self.noise_sigma * factor)

    # -- weights -----------------------------------------------------------------------------

    @torch.no_grad()
    def _sync(self, delta: torch.Tensor | None = None) -> None:
        """Write W + delta into the K selected entries of ``weight`` if they differ (O(K))."""
        if self.indices.numel() == 0:
            return
        delta = self.delta if delta is None else delta
        new = (self.base_values.to(delta.dtype) + delta).to(self.weight.dtype)
        flat = self.weight.view(-1)
        if not torch.equal(flat.index_select(0, self.indices), new):
            flat.index_copy_(0, self.indices, new)

    @torch.no_grad()
    def base_weight(self) -> torch.Tensor:
        """The frozen pretrained W, shape (N, M) (a new tensor)."""
        w = self.weight.detach().clone()
        w.view(-1)[self.indices] = self.base_values
        return w

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + D, shape (N, M), W's dtype (a copy of exactly the weight the eval forward uses)."""
        self._sync()
        return self.weight.detach().clone()

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """D as a dense matrix, shape (N, M), in delta's dtype (for analysis of the update)."""
        d = torch.zeros(self.weight.numel(), dtype=self.delta.dtype, device=self.delta.device)
        return d.index_add_(0, self.indices, self.delta).view(self.weight.shape)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight W + D (the stored tensor, no copy) and the bias."""
        self._sync()
        linear = nn.Linear(
            self.in_features, self.out_features, self.bias is not None, device="meta"
        )
        linear.weight = nn.Parameter(self.weight.detach(), requires_grad=False)
        linear.bias = self.bias
        return linear

    #: :mod:`spectune.models.flops` counts this layer's product as a linear layer's
    counts_as_linear = True

    def weight_grad_flops(self, rows: int) -> float:
        """FLOPs of :meth:`_delta_grad` for ``rows`` input rows: 2 rows K sampled entries, or
        the dense (N, M) product above :data:`SPARSE_GRAD_MAX_DENSITY`; 0 when the delta is
        frozen."""
        if not self.delta.requires_grad:
            return 0.0
        n_out, n_in = self.weight.shape
        k = self.indices.numel()
        dense = k > SPARSE_GRAD_MAX_DENSITY * n_out * n_in
        return 2.0 * rows * (n_out * n_in if dense else k)

    def _delta_grad(self, grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """dL/d_delta: sum over tokens of grad_out[:, i] * x[:, j] at the K entries, shape (K,)."""
        n_out, n_in = self.weight.shape
        g = grad_out.reshape(-1, n_out)  # (B, N)
        a = x.reshape(-1, n_in)  # (B, M)
        dtype = torch.float64 if g.dtype == a.dtype == torch.float64 else torch.float32
        g, a = g.to(dtype), a.to(dtype)
        k = self.indices.numel()
        if k == 0:
            return torch.zeros(0, dtype=dtype, device=g.device)
        if k > SPARSE_GRAD_MAX_DENSITY * n_out * n_in:
            return (g.mT @ a).reshape(-1).index_select(0, self.indices)  # dense (N, M) GEMM
        with warnings.catch_warnings():  # "sparse CSR is beta", "invariant checks disabled"
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(
                self._crow,
                self._col,
                torch.ones(k, dtype=dtype, device=g.device),
                (n_out, n_in),
            )
            return torch.sparse.sampled_addmm(pattern, g.mT, a, beta=0.0).values()  # (K,)

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x (W + D + E)^T + b; x: (..., M) -> y: (..., N)."""
        if self.weight.requires_grad:
            raise SpectuneError(
                f"{self.name or 'FrogLinear'}.weight requires grad; FROG trains only the delta "
                "values: keep the weight frozen (merge_frog() first to train all weights)"
            )
        self._sync()
        noise = None
        if self.training:
            noise = self.noise(self.noise_step)
            self.noise_step += 1
        if torch.is_grad_enabled() and self.delta.requires_grad:
            return _FrogLinearFunction.apply(x, self.delta, self.bias, self, noise)
        weight = self.weight if noise is None else self.weight + noise.to(self.weight.dtype)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        pct = 100.0 * self.num_trainable / self.weight.numel()
        text = (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, trainable={self.num_trainable} ({pct:.3g}%)"
        )
        if self.noise_scale:
            text += f", noise_scale={self.noise_scale:g}, noise_sigma={self.noise_sigma:g}"
        return text


class _FrogLinearFunction(torch.autograd.Function):
    """F.linear(x, W + D + E, b) with a sparse gradient for the delta values."""

    @staticmethod
    def forward(ctx, x, delta, bias, layer, noise):  # type: ignore[override]
        layer._sync(delta)
        weight = layer.weight if noise is None else layer.weight + noise.to(layer.weight.dtype)
        ctx.layer = layer
        ctx.noisy_weight = None if noise is None else weight
        ctx.save_for_backward(x, delta)  # autograd checks delta is not changed before backward
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, delta = ctx.saved_tensors
        layer: FrogLinear = ctx.layer
        grad_x = grad_delta = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = ctx.noisy_weight
            if weight is None:
                layer._sync(delta)  # O(K), a no-op unless another forward changed it since
                weight = layer.weight
            grad_x = grad_out.matmul(weight.to(grad_out.dtype)).to(x.dtype)  # (..., M)
        if ctx.needs_input_grad[1]:
            grad_delta = layer._delta_grad(grad_out, x).to(delta.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(layer.bias.dtype)
        ctx.noisy_weight = None
        return grad_x, grad_delta, grad_bias, None, None


def _check_indices(indices: torch.Tensor, size: int, name: str) -> torch.Tensor:
    """Flat indices as int64, checked: 1-D, strictly increasing, in [0, size)."""
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.ndim != 1:
        raise SpectuneError(f"{name} must be a 1-D integer tensor of flat positions")
    idx = indices.detach().to(torch.int64)
    if idx.numel():
        if int(idx[0]) < 0 or int(idx[-1]) >= size:
            raise SpectuneError(
                f"{name} holds positions outside [0, {size}) (min {int(idx.min())}, max "
                f"{int(idx.max())}); was the adapter made for a matrix of another shape?"
            )
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise SpectuneError(f"{name} must be strictly increasing (sorted, no repeats)")
    return idx
