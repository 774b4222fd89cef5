"""What the ``nmsparse`` command runs beyond the library calls: the training demo, the masks
tour, and the claims report with its plot. Only :mod:`nmsparse.cli` imports this package."""
