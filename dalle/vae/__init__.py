"""The discrete VAE of DALL·E (image <-> grid of code ids).

``model`` (the network; plain inference imports nothing else), ``module`` (Lightning training),
``openai`` (OpenAI's released weights -> ours), ``cli`` (``python -m dalle.vae``).
"""

from dalle.vae.model import DiscreteVAE, VAEConfig, code_usage, psnr

__all__ = ["DiscreteVAE", "VAEConfig", "code_usage", "psnr"]
