"""Small models on bundled data, and a plain training loop, for demos, benchmarks and experiments.

Everything here runs on 2 CPU cores in seconds and needs no download: the data is scikit-learn's
bundled handwritten digits (1,797 images of 8x8 pixels, 10 classes). The split, the initial
weights and the batch order all come from explicit seeds, so a run is reproducible.

Example
-------
>>> from nmsparse.examples import load_digits_split, small_cnn, train, evaluate
>>> data = load_digits_split(seed=0)
>>> model = small_cnn(seed=0)
>>> result = train(model, data, epochs=2, seed=0)
>>> 0.0 <= evaluate(model, data.x_test, data.y_test) <= 1.0
True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from .._progress import Progress
from ..errors import ArgumentError


@dataclass(frozen=True)
class DigitsData:
    """Train/test split of scikit-learn's digits; images ``(N, 1, 8, 8)`` float32 in [0, 1]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def flat(self) -> "DigitsData":
        """The same split with images flattened to ``(N, 64)`` (for MLPs)."""
        return DigitsData(
            self.x_train.flatten(1), self.y_train, self.x_test.flatten(1), self.y_test
        )


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
    """Load the bundled digits and split them by a seeded, per-class (stratified) shuffle.

    Parameters
    ----------
    seed : int
        Seed of the split.
    test_fraction : float
        Share of each class held out for testing, in (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ArgumentError(f"load_digits_split: test_fraction must be in (0, 1), got {test_fraction}; pass e.g. 0.25.")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a declared dependency
        raise ImportError(
            "nmsparse.examples needs scikit-learn for its bundled digits data: pip install scikit-learn"
        ) from err
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for label in range(10):
        idx = torch.nonzero(y == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:cut])
        train_idx.append(idx[cut:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return DigitsData(x[tr], y[tr], x[te], y[te])


def small_cnn(width: int = 16, seed: Optional[int] = 0, batch_norm: bool = True) -> nn.Sequential:
    """A 3-conv + 2-linear CNN for 8x8 digits (about 40k weights at width 16).

    Layer names are ``conv1, bn1, conv2, bn2, conv3, bn3, fc1, fc2`` (plus activations). ``conv1``
    has a single input channel and ``fc2`` is the classifier: the first and last layers that
    sparse-training recipes usually keep dense.
    """
    if width < 1:
        raise ArgumentError(f"small_cnn: width must be a positive int, got {width}; pass e.g. 16.")
    if seed is not None:
        torch.manual_seed(seed)
    w = width

    def norm(c: int) -> nn.Module:
        return nn.BatchNorm2d(c) if batch_norm else nn.Identity()

    layers = [
        ("conv1", nn.Conv2d(1, w, 3, padding=1)), ("bn1", norm(w)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(w, 2 * w, 3, padding=1)), ("bn2", norm(2 * w)), ("relu2", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(2 * w, 2 * w, 3, padding=1)), ("bn3", norm(2 * w)), ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(2 * w * 16, 64)), ("relu4", nn.ReLU()),
        ("fc2", nn.Linear(64, 10)),
    ]
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(layers))


def mlp(hidden: Sequence[int] = (128, 128), seed: Optional[int] = 0, in_features: int = 64) -> nn.Sequential:
    """A ReLU MLP for flattened digits: ``fc1 … fcK`` linear layers, the last one the classifier."""
    if seed is not None:
        torch.manual_seed(seed)
    from collections import OrderedDict

    sizes = [in_features, *hidden, 10]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append((f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1])))
        if i < len(sizes) - 2:
            layers.append((f"relu{i + 1}", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


@dataclass
class TrainResult:
    """What :func:`train` returns: final test accuracy, wall-clock seconds, per-epoch mean loss."""

    accuracy: float
    seconds: float
    losses: List[float] = field(default_factory=list)
    steps: int = 0


def train(
    model: nn.Module,
    data: DigitsData,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    optimizer: str = "adam",
    after_step: Optional[Callable[[nn.Module, int], None]] = None,
    progress: Optional[Progress] = None,
) -> TrainResult:
    """Train with cross-entropy; returns the test accuracy after the last epoch.

    ``after_step(model, step)`` runs after every optimizer step (e.g. a proximal step or a mask
    update). ``progress`` (a :class:`nmsparse._progress.Progress`) is advanced once per step.
    Batches are drawn from a generator seeded by ``seed``.
    """
    if epochs < 0 or batch_size < 1:
        raise ArgumentError(f"train: epochs must be >= 0 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}; pass e.g. 15 and 64.")
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ArgumentError(f"train: optimizer must be 'adam' or 'sgd', got {optimizer!r}; pick one of those.")
    g = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.x_train)
    start = time.perf_counter()
    losses, step = [], 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
            step += 1
            if after_step is not None:
                after_step(model, step)
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            if progress is not None:
                progress.advance()
        losses.append(total / max(count, 1))
    accuracy = evaluate(model, data.x_test, data.y_test)
    return TrainResult(accuracy, time.perf_counter() - start, losses, step)


def steps_per_epoch(data: DigitsData, batch_size: int = 64) -> int:
    """Optimizer steps in one epoch of :func:`train` (for sizing progress bars)."""
    return -(-len(data.x_train) // batch_size)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in eval mode (the model's mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(x), 1)
