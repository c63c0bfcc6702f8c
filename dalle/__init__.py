"""DALL·E: discrete VAE and the text+image-token transformer on the shared backbone.

Importing it registers the head with the core (the ``multimodal.heads`` entry point ``dalle`` names this package):
the kinds ``dalle`` and ``vae``, and the packaged DALL·E.
"""

from multimodal import registry

registry.declare_kind("dalle", "dalle.model")
registry.declare_kind("vae", "dalle.vae.model")
registry.register_packaged("dalle")
