"""Shim: dalle_pytorch/__init__.py imports get_distribution and never calls it."""


def get_distribution(name):  # pragma: no cover
    raise RuntimeError("pkg_resources shim (bench/shims)")
