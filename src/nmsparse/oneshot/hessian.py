"""A prunable layer as the matrix of its forward product, its calibration inputs as rows, and
the Gram matrix ``H = XᵀX`` those rows give, with a damped, retried Cholesky factorisation.

The matrix view follows DESIGN's layout (:mod:`nmsparse.layout`): ``nn.Linear`` ``(out, in)``;
a conv kernel ``(out, in, k...)`` as its implicit GEMM ``(out, k...·in)`` with the input channel
innermost, padded per kernel position to a multiple of m; Hugging Face's GPT-2 ``Conv1D`` (stored
``(in, out)``) through its transpose. Input rows are laid out the same way, so ``Y = X Wᵀ`` holds
for the padded matrices (padding columns of X are zero, hence "dead" inputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConvertError
from ..layout import is_hf_conv1d, matrix_layout

__all__ = ["MatrixView", "InputStats", "inverse_cholesky", "token_mask_of", "is_hf_conv1d"]


def token_mask_of(batch) -> Optional[torch.Tensor]:
    """A dict batch's 2-D ``attention_mask`` (True = a real token), else None."""
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask != 0
    return None


class MatrixView:
    """Map a layer's weight and inputs onto the padded ``(rows, cols)`` matrix the solvers use.

    Parameters
    ----------
    module : nn.Module
        ``nn.Linear``, ``nn.Conv1d/2d/3d`` or Hugging Face ``Conv1D``.
    m : int
        Group size (1 for unstructured densities); the grouped axis is padded to a multiple of m.
    tiles : bool
        Also pad the rows to a multiple of m (transposable patterns).
    """

    def __init__(self, module: nn.Module, m: int, tiles: bool):
        self.module = module
        self.hf = is_hf_conv1d(module)
        w = module.weight
        self.shape = (w.shape[1], w.shape[0]) if self.hf else tuple(w.shape)  # (out, in, k...) convention
        self.layout = matrix_layout(self.shape)
        self.m, self.tiles = m, tiles
        self.rows, self.cols = self.layout.padded_shape(m, tiles)
        # Layers of one kind fed the same tensor share its Gram (a conv's rows depend on its own kernel).
        self.kind = f"conv{id(module)}" if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else "matrix"
        self.in_pad = -(-self.layout.group_len // m) * m  # input channels per kernel position, padded

    # --- weights -------------------------------------------------------------------------------

    def oriented(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor of the stored weight's shape in the ``(out, in, k...)`` convention."""
        return t.t() if self.hf else t

    def stored(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`oriented`."""
        return t.t().contiguous() if self.hf else t

    def to_matrix(self, t_oriented: torch.Tensor, fill=0.0) -> torch.Tensor:
        return self.layout.to_matrix(t_oriented, self.m, self.tiles, fill=fill)

    def from_matrix(self, mat: torch.Tensor) -> torch.Tensor:
        return self.layout.from_matrix(mat, self.m)

    def weight_matrix(self) -> torch.Tensor:
        """The current weight as a padded fp64 matrix (a copy)."""
        return self.to_matrix(self.oriented(self.module.weight.detach()).double()).clone()

    def real(self, device=None) -> torch.Tensor:
        """Bool matrix: True at entries that exist in the weight, False at padding."""
        return self.to_matrix(torch.ones(self.shape, dtype=torch.bool, device=device), fill=False)

    def stored_from_matrix(self, mat: torch.Tensor) -> torch.Tensor:
        """A padded matrix back to the stored weight's shape."""
        return self.stored(self.from_matrix(mat))

    def bias_vector(self) -> Optional[torch.Tensor]:
        """The current bias as an fp64 vector of the padded matrix's ``rows`` (a copy; zeros for the
        padding rows a transposable pattern adds), or None without a bias. It pairs row by row with
        :meth:`weight_matrix`, e.g. as the column ``Θ = [W b]`` of the refits."""
        bias = getattr(self.module, "bias", None)
        if bias is None:
            return None
        b = bias.detach().double().reshape(-1)
        extra = self.rows - b.shape[0]
        return F.pad(b, (0, extra)) if extra > 0 else b.clone()

    def stored_bias(self, b: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`bias_vector`: crop the padding rows."""
        return b[: self.layout.rows]

    # --- inputs --------------------------------------------------------------------------------

    def rows_of(self, x: torch.Tensor, token_mask: Optional[torch.Tensor], dtype=torch.float64) -> torch.Tensor:
        """Calibration input ``x`` of the layer as rows ``(N, cols)`` of the matrix product (``dtype``)."""
        module = self.module
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self._conv_rows(x.detach()).to(dtype)
        rows = select_tokens(x.detach(), token_mask)
        rows = rows.reshape(-1, rows.shape[-1]).to(dtype)
        extra = self.cols - rows.shape[1]
        return F.pad(rows, (0, extra)) if extra else rows

    def _conv_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Implicit-GEMM rows of a conv input: one row per output position, columns ordered
        (kernel position, input channel) with the channel innermost, as the weight's matrix view."""
        c = self.module
        dims = len(c.kernel_size)
        x = x.double()
        if x.dim() == dims + 1:  # unbatched input
            x = x.unsqueeze(0)
        if isinstance(c.padding, str) or c.padding_mode != "zeros":
            mode = "constant" if c.padding_mode == "zeros" else c.padding_mode
            x = F.pad(x, c._reversed_padding_repeated_twice, mode=mode)
        else:
            x = F.pad(x, [p for q in reversed(c.padding) for p in (q, q)])
        for i, (k, s, d) in enumerate(zip(c.kernel_size, c.stride, c.dilation)):
            # Windows of the dilated kernel's span along spatial dim i, then every d-th tap.
            x = x.unfold(2 + i, (k - 1) * d + 1, s)[..., ::d]
        cin = x.shape[1]
        # (B, C, L1..Ld, k1..kd) -> (B, L1..Ld, k1..kd, C)
        x = x.permute(0, *range(2, 2 + 2 * dims), 1)
        k = 1
        for size in c.kernel_size:
            k *= size
        x = x.reshape(-1, k, cin)
        if self.in_pad > cin:
            x = F.pad(x, (0, self.in_pad - cin))
        return x.reshape(-1, k * self.in_pad)

    def sample_of(self, x: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """What AdaPrune fits on: a Linear's input rows (padding tokens dropped) or the raw conv input."""
        if isinstance(self.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return x.detach().clone()
        rows = select_tokens(x.detach(), token_mask)
        return rows.reshape(-1, rows.shape[-1]).clone()


def select_tokens(x: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Drop padding tokens: ``x`` ``(B, T, ...)`` whose leading dims match the attention mask."""
    if token_mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(token_mask.shape):
        return x[token_mask.to(x.device)]
    return x


class InputStats:
    """Accumulate the augmented Gram ``G = [X 1]ᵀ[X 1]`` (fp64) of one layer's calibration inputs,
    and, if asked, the input samples themselves (for AdaPrune).

    ``H = G[:-1, :-1]`` is SparseGPT's Hessian (up to a factor 2), ``G[-1, -1]`` the row count and
    ``G[:-1, -1]`` the column sums; with ``Θ = [W b]`` the layer's squared output norm over the
    calibration rows is ``tr(Θ G Θᵀ)``, so reconstruction errors need no stored activations.
    """

    def __init__(self, view: MatrixView, keep_samples: bool):
        self.view = view
        self.keep_samples = keep_samples
        self.gram: Optional[torch.Tensor] = None
        self.samples: List[torch.Tensor] = []
        self.calls = 0

    def add(self, x: torch.Tensor, token_mask: Optional[torch.Tensor], shared: Optional[dict] = None) -> None:
        """Add one call's inputs. ``shared`` (one dict per batch) lets layers fed the very same tensor
        (q/k/v, gate/up) compute its Gram once."""
        key = (id(x), self.view.cols, self.view.kind)
        hit = shared.get(key) if shared is not None else None
        if hit is not None and hit[0] is x:
            g = hit[1]
        else:
            # One batch's product in the input's precision (float32 for float32 models: half the cost
            # of float64), accumulated over batches in float64.
            rows = self.view.rows_of(x, token_mask, torch.float64 if x.dtype == torch.float64 else torch.float32)
            a = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
            g = (a.T @ a).double()
            if a.dtype != torch.float64 and not bool(torch.isfinite(g).all()):
                # float32 products overflow past ~1.8e19 per input while the layer's own forward may
                # not: redo this batch in float64 (inputs that are NaN/Inf stay so, and are refused later).
                a = a.double()
                g = a.T @ a
            if shared is not None:
                shared[key] = (x, g)
        self.gram = g.clone() if self.gram is None else self.gram.add_(g)
        self.calls += 1
        if self.keep_samples:
            self.samples.append(self.view.sample_of(x, token_mask))


def inverse_cholesky(h: torch.Tensor, damp: float, name: str) -> Tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` (``UᵀU = (H + λI)⁻¹``), ``λ = damp · mean(diag H)``.

    SparseGPT (Frantar & Alistarh 2023, Sec. 3.2) reads every OBS update from the rows of this
    factor. If a factorisation fails (``H`` numerically indefinite), the damping grows tenfold,
    up to ``λ = mean(diag H)`` (beyond that the updates would say little about ``H``). Returns
    ``(U, damp used)``.

    Raises
    ------
    ConvertError
        Naming the layer, if ``H`` has NaN/Inf or stays indefinite.
    """
    if not bool(torch.isfinite(h).all()):
        raise ConvertError(
            f"layer {name}: the Gram matrix XᵀX of its calibration inputs has NaN/Inf; the calibration data "
            "(or an earlier layer's output on it) is not finite. Check the inputs, or exclude the layer."
        )
    mean = float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    tries = [float(damp)] + [x for x in (1e-4, 1e-3, 1e-2, 1e-1, 1.0) if x > damp]
    if mean > 0:
        for d in tries:
            # With J the index reversal, J(H+λI)J = L̃L̃ᵀ gives H+λI = RRᵀ with R = J L̃ J upper
            # triangular, so (H+λI)⁻¹ = R⁻ᵀR⁻¹ and U = R⁻¹: one factorisation and one triangular
            # inverse, instead of factorising, inverting and factorising the inverse again.
            flipped, info = torch.linalg.cholesky_ex((h + (d * mean) * eye).flip(0, 1))
            if int(info) == 0:
                upper = torch.linalg.solve_triangular(flipped.flip(0, 1), eye, upper=True)
                if bool(torch.isfinite(upper).all()):
                    return upper, d
    raise ConvertError(
        f"layer {name}: H = XᵀX of its calibration inputs stays indefinite even with damping "
        f"{max(tries):g} × mean(diag H) (mean diag {mean:.3g}); check the calibration data (more samples), "
        "or exclude the layer."
    )
