"""Shim: dalle_pytorch.vae imports OmegaConf for its VQGAN loader, unused by the benchmark."""


class OmegaConf:  # pragma: no cover
    @staticmethod
    def load(*args, **kwargs):
        raise RuntimeError("omegaconf shim (bench/shims)")
