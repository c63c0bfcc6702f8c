"""CLIP head: contrastive image/text dual encoder on the shared backbone.

Importing it registers the head with the core (the ``multimodal.heads`` entry point ``clip`` names this package):
the kind ``clip``, open_clip's ``local-dir:`` layout (a directory with ``open_clip_config.json``, or
``"local-dir:DIR"``), open_clip's pretrained weights (``"open_clip:NAME/TAG"``), open_clip weights files with
their model name (``arch="ViT-B-32"``), and the packaged CLIP.
Nothing heavy is imported here: the loaders are named, and imported when first used.
"""

from multimodal import registry

OPENCLIP_DIR_LOADER = "clip.openclip:load_openclip_dir"

# built on the meta device, weights assigned: a ViT-B/32 skips seconds of random init it would overwrite
registry.declare_kind("clip", "clip.model", built_on_meta=True)
registry.register_directory_format("open_clip", kind="clip", marker="open_clip_config.json", loader=OPENCLIP_DIR_LOADER)
registry.register_scheme("local-dir", kind="clip", loader=OPENCLIP_DIR_LOADER)
# open_clip's pretrained weights, downloaded once: "open_clip:ViT-B-32" or "open_clip:ViT-B-32/openai"
registry.register_scheme("open_clip", kind="clip", loader="clip.openclip:load_pretrained")
registry.register_weights_format(
    "clip",
    loader="clip.openclip:load_openclip",
    suffixes=(".bin", ".pt", ".pth", ".safetensors"),
    hint="open_clip weights need their model name, e.g. ViT-B-32 (--model / --clip-model NAME; arch= in Python)",
)
registry.register_packaged("clip")
