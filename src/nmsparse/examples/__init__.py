"""Small example models and offline data for the docs, apps, benchmarks and tests.

The library proper never imports this package. :mod:`nmsparse.examples.digits` holds the digits
CNN/MLP and a minimal training loop (re-exported here, so ``from nmsparse.examples import
small_cnn`` works); :mod:`nmsparse.examples.lm` holds the byte-level transformer LM trained on the
interpreter's own standard-library sources.
"""

from .digits import (
    DigitsData,
    TrainResult,
    evaluate,
    load_digits_split,
    mlp,
    small_cnn,
    steps_per_epoch,
    train,
)

__all__ = [
    "DigitsData",
    "TrainResult",
    "evaluate",
    "load_digits_split",
    "mlp",
    "small_cnn",
    "steps_per_epoch",
    "train",
]
