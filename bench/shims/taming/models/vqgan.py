"""Shim: dalle_pytorch.vae imports these VQGAN classes; the benchmark never builds them."""


class VQModel:  # pragma: no cover
    def __init__(self, *args, **kwargs):
        raise RuntimeError("taming shim (bench/shims)")


class GumbelVQ(VQModel):  # pragma: no cover
    pass
