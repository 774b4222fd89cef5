"""Group-sparsity regularization: WGSEF (Refael, Arbel, Huleihel), its prox, training step and shrinking.

* :mod:`.envelope` - the penalty value, the proximal operator and the projection to k groups;
* :mod:`.groups` - which weights form a group (rows, columns, filters, channels, kernel shapes,
  N:M blocks, custom labels) for a layer;
* :mod:`.regularizer` - :class:`WGSEFRegularizer`, the proximal step after any optimizer step;
* :mod:`.shrink` - physically remove dead neurons/filters to get a smaller dense model.
"""

from .envelope import k_support_norm, wgsef, wgsef_project, wgsef_prox
from .groups import LayerGroups, layer_groups, model_groups
from .regularizer import GroupReport, WGSEFRegularizer, group_sparsity
from .shrink import ShrinkReport, shrink_model

__all__ = [
    "wgsef", "wgsef_prox", "wgsef_project", "k_support_norm",
    "LayerGroups", "layer_groups", "model_groups",
    "WGSEFRegularizer", "GroupReport", "group_sparsity",
    "ShrinkReport", "shrink_model",
]
