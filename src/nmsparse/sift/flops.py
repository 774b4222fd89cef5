"""Count the multiply-adds (MACs) of a forward pass, sparse layers at their mask density.

Only weight products are counted - ``nn.Linear`` and ``nn.Conv1d/2d/3d``, masked or not
- because they dominate and are what Sparse-IFT keeps constant (Sparse-IFT, Sec. 2:
FLOPs of a layer = its non-zero weights x the positions it is applied at). Biases, norms,
activations and pooling are not counted. A layer applied at P output positions (P = batch x
spatial positions for a conv, batch x leading dims for a linear) with K non-zero weights costs
K x P MACs; a dense layer counts every weight as non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Sequence

import torch
from torch import nn

from ..errors import ShapeError
from ..nn.entries import nmmask_of

__all__ = ["LayerFlops", "FlopReport", "count_flops"]

_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerFlops:
    """One layer's cost: ``macs`` at its mask density, ``dense_macs`` if every weight were kept."""

    macs: int
    dense_macs: int
    density: float
    calls: int


@dataclass
class FlopReport:
    """Per-layer and total multiply-adds of one forward pass.

    Attributes
    ----------
    layers : dict of str -> LayerFlops
        Keyed by module name, in the order layers first ran.
    total : int
        Sum of ``macs`` over layers.
    """

    layers: Dict[str, LayerFlops] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(l.macs for l in self.layers.values())

    @property
    def dense_total(self) -> int:
        return sum(l.dense_macs for l in self.layers.values())

    def group(self, prefix: str) -> int:
        """MACs of the layer ``prefix`` and every layer below it (e.g. all branches of a
        transformed ``conv2``)."""
        return sum(l.macs for n, l in self.layers.items() if n == prefix or n.startswith(prefix + "."))

    def table(self) -> str:
        """A Markdown table: layer, MACs, density, share of the total."""
        total = max(self.total, 1)
        lines = ["| layer | MACs | density | share |", "|---|---:|---:|---:|"]
        for name, l in self.layers.items():
            lines.append(f"| {name} | {l.macs:,} | {l.density:.4f} | {l.macs / total:.1%} |")
        lines.append(f"| **total** | {self.total:,} | | |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int]) -> FlopReport:
    """Multiply-adds of ``model(torch.zeros(input_shape))``, per layer and in total.

    Parameters
    ----------
    model : nn.Module
        Any module; Linear/Conv layers are counted wherever they sit. A layer whose weight carries
        an ``NMMask`` (from Sparse-IFT, ``sparsify_`` or ``attach_mask_``) counts its mask's kept entries.
    input_shape : sequence of int
        Shape of the input *including* the batch dimension, e.g. ``(1, 1, 8, 8)``.

    Returns
    -------
    FlopReport
        ``.layers[name].macs``, ``.total``; ``.group(name)`` sums a transformed layer's parts.

    Examples
    --------
    >>> report = count_flops(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (5, 4))
    >>> report.total  # 5 * (4*3 + 3*2)
    90
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ShapeError(f"count_flops: input_shape must be positive integers including the batch dimension, got {tuple(input_shape)}.")
    names = {m: n for n, m in model.named_modules()}
    acc: Dict[str, list] = {}

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nm = nmmask_of(module, "weight")
        numel = nm.mask.numel() if nm is not None else module.weight.numel()
        nnz = int(nm.mask.sum()) if nm is not None else numel
        out_features = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        positions = output.numel() // out_features
        entry = acc.setdefault(names[module], [0, 0, nnz / numel, 0])
        entry[0] += nnz * positions
        entry[1] += numel * positions
        entry[3] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    param = next(model.parameters(), None)
    x = torch.zeros(shape, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return FlopReport({n: LayerFlops(int(a[0]), int(a[1]), float(a[2]), int(a[3])) for n, a in acc.items()})
