"""CLIP head: contrastive image/text dual encoder on the shared backbone."""
