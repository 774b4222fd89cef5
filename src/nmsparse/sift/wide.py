"""Sparse Wide: widen a chain of layers by k = sqrt(1/(1-s)) and make the widened layers sparse.

Sparse-IFT, Sec. 3 ("Sparse Wide"): widening both the inputs and the outputs of a layer by k
multiplies its dense cost by k^2; at density ``1 - s = 1/k^2`` the cost is unchanged. Widths are
integers, and the layers kept dense (first, last) also grow by k on their widened side, so the
per-layer identity does not make the *network* iso-FLOP. We therefore fix the widths at
``round(k * width)`` and solve for the one density d of the sparse layers that makes the whole
network's forward MACs equal the dense network's:

    F(d) = A + d * B = F_dense,   A = MACs of the (widened) dense layers,
                                  B = MACs of the widened sparse layers at full density,

so d = (F_dense - A) / B and the actual sparsity is 1 - d (a bit above s). Each sparse layer
keeps round(d * numel) weights, which matches F_dense to well within 0.1 %.

Under an N:M pattern the density is fixed at n/m, so instead the widths are searched: every widened width
is a multiple of m (full groups and tiles), rounded down or up independently around k * width for
a grid of factors k, and the width tuple whose network MACs are closest to F_dense wins. Whole-network iso-FLOP is then only as close as width steps of m allow
(``sift_info`` reports the relative error).

Which dimensions widen: every hidden dimension (between two consecutive weight layers of the
chain) next to at least one transformed layer; norms on a widened dimension widen with it. The
model must be an ``nn.Sequential`` chain (nested Sequentials allowed) of Linear/Conv1d/2d/3d, norms and
parameter-free modules (activations, pooling, flatten, dropout). New layers are freshly
initialised (seeded); sparse ones get the sparsity-aware 1/sqrt(density) scale (Evci et al. 2022).
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ShapeError
from ..pattern import NMPattern
from ._common import CONVS, WEIGHT_TYPES, conv_class, init_sparse_, round_width, set_parent

__all__ = ["apply_wide"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _leaves(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise ShapeError(
            f"transform(family='wide'): Sparse Wide widens consecutive layers together and needs an "
            f"nn.Sequential chain, got {type(model).__name__}. Use family 'parallel', 'factorized' or "
            f"'doped' (layer-local), or wrap the model as an nn.Sequential."
        )
    out: List[Tuple[str, nn.Module]] = []

    def walk(mod: nn.Module, prefix: str) -> None:
        for key, child in mod._modules.items():
            name = prefix + key
            if isinstance(child, nn.Sequential):
                walk(child, name + ".")
            else:
                out.append((name, child))

    walk(model, "")
    return out


def _layer_cost(layer: nn.Module, c_in: int, c_out: int) -> int:
    """Weights of ``layer`` re-shaped to ``c_in -> c_out`` (features or channels)."""
    if isinstance(layer, CONVS):
        return c_in * c_out * math.prod(layer.kernel_size)
    return c_in * c_out


def apply_wide(model: nn.Module, selected: Sequence[str], sparsity: float, pattern: Optional[NMPattern],
               generator: torch.Generator, input_shape: Optional[Sequence[int]]) -> Dict[str, object]:
    """Widen ``model`` in place (see the module docstring); returns the sizes chosen."""
    from .flops import count_flops

    leaves = _leaves(model)
    selected = set(selected)
    weights = [i for i, (_, m) in enumerate(leaves) if isinstance(m, WEIGHT_TYPES)]
    for name, m in leaves:
        if isinstance(m, (*WEIGHT_TYPES, *_NORMS)):
            continue
        if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
            raise ShapeError(
                f"transform(family='wide'): layer {name!r} ({type(m).__name__}) has parameters and cannot be "
                f"widened; supported: Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d and parameter-free modules."
            )
    if input_shape is None:
        if any(isinstance(leaves[i][1], CONVS) for i in weights):
            raise ShapeError("transform(family='wide'): the model has convolutions, so the whole-network FLOP match "
                             "needs the input shape; pass input_shape=(1, C, H, W).")
        input_shape = (1, leaves[weights[0]][1].in_features)
    dense = count_flops(model, input_shape)
    f_dense = dense.total
    # positions[j]: where weight layer j is applied (MACs / weights); widths[j]: its output width.
    positions, widths, spread = [], [], []
    prev_out = None
    for j, i in enumerate(weights):
        name, m = leaves[i]
        positions.append(dense.layers[name].dense_macs // m.weight.numel())
        width_in = m.in_channels if isinstance(m, CONVS) else m.in_features
        if prev_out is None:
            spread.append(1)
        elif width_in % prev_out:
            raise ShapeError(f"transform(family='wide'): layer {name!r} takes {width_in} inputs, not a multiple of the "
                             f"previous layer's {prev_out} outputs; cannot widen this chain.")
        else:
            if isinstance(m, CONVS) and width_in != prev_out:
                raise ShapeError(f"transform(family='wide'): conv layer {name!r} takes {width_in} channels but the "
                                 f"previous layer gives {prev_out}; cannot widen this chain.")
            spread.append(width_in // prev_out)  # a Linear after Flatten sees C x H x W inputs
        prev_out = m.out_channels if isinstance(m, CONVS) else m.out_features
        widths.append(prev_out)
    names = [leaves[i][0] for i in weights]
    is_sparse = [n in selected for n in names]
    widen = [is_sparse[j] or is_sparse[j + 1] for j in range(len(weights) - 1)] + [False]
    first_in = leaves[weights[0]][1]
    first_in = first_in.in_channels if isinstance(first_in, CONVS) else first_in.in_features

    def sizes(k: float) -> List[int]:
        return [round_width(k * w, pattern) if widen[j] else w for j, w in enumerate(widths)]

    def costs(new_widths: List[int]) -> Tuple[int, int]:
        a = b = 0
        for j, i in enumerate(weights):
            c_in = first_in if j == 0 else new_widths[j - 1] * spread[j]
            c = positions[j] * _layer_cost(leaves[i][1], c_in, new_widths[j])
            if is_sparse[j]:
                b += c
            else:
                a += c
        return a, b

    if pattern is None:
        k = math.sqrt(1.0 / (1.0 - sparsity))
        new_widths = sizes(k)
        a, b = costs(new_widths)
        density = (f_dense - a) / b
        if density <= 0:
            raise ShapeError(f"transform(family='wide'): at sparsity {sparsity} the widened dense layers alone cost "
                             f"{a} MACs, more than the dense network's {f_dense}; use a lower sparsity or "
                             f"transform the first/last layers too (include=[...]).")
        density = min(density, 1.0)
    else:
        density = pattern.n / pattern.m if sparsity > 0 else 1.0
        # Each widened dimension may round down or up to a multiple of m independently; over a
        # grid of width factors, keep the width tuple whose MACs are closest to the dense ones.
        best, seen = None, set()
        top = 3.0 * math.sqrt(1.0 / (1.0 - sparsity))
        for step in range(201):
            k = 1.0 + step * (top - 1.0) / 200
            options = [sorted({max(pattern.m, pattern.m * math.floor(k * w / pattern.m)),
                               max(pattern.m, pattern.m * math.ceil(k * w / pattern.m))}) if widen[j] else [w]
                       for j, w in enumerate(widths)]
            for cand in itertools.product(*options):
                if cand in seen:
                    continue
                seen.add(cand)
                a, b = costs(list(cand))
                err = abs(a + density * b - f_dense)
                if best is None or err < best[0]:
                    best = (err, k, list(cand))
        _, k, new_widths = best
    _rebuild(model, leaves, weights, new_widths, spread, first_in, is_sparse, density, pattern, generator)
    return {"width_factor": k, "widths": dict(zip(names, new_widths)), "density": density,
            "dense_flops": f_dense, "flops": count_flops(model, input_shape).total}


def _rebuild(model, leaves, weights, new_widths, spread, first_in, is_sparse, density, pattern, generator) -> None:
    current = first_in
    j = 0
    for name, m in leaves:
        if isinstance(m, WEIGHT_TYPES):
            c_in = first_in if j == 0 else new_widths[j - 1] * spread[j]
            c_out = new_widths[j]
            if isinstance(m, CONVS):
                new = conv_class(m)(c_in, c_out, m.kernel_size, m.stride, m.padding, m.dilation, 1, m.bias is not None,
                                m.padding_mode)
            else:
                new = nn.Linear(c_in, c_out, m.bias is not None)
            new.to(device=m.weight.device, dtype=m.weight.dtype)
            if is_sparse[j]:
                init_sparse_(new, density=density, pattern=pattern if density < 1 else None,
                             generator=generator, scale=True)
            set_parent(model, name, new)
            current = c_out
            j += 1
        elif isinstance(m, _NORMS) and m.num_features != current:
            new = type(m)(current, m.eps, m.momentum, m.affine, m.track_running_stats)
            new.to(device=next(iter(m.buffers()), torch.zeros(())).device)
            set_parent(model, name, new)
