"""The package version, in a leaf module so that any module can read it without importing nmsparse/__init__."""

__version__ = "0.1.0"  # keep equal to pyproject.toml [project] version
