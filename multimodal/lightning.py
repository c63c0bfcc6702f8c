"""What every LightningModule of the suite shares: the wrapped model lives at ``self.model`` and the
checkpoint carries what is needed to rebuild it (``multimodal.checkpoint.load_model`` reads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from multimodal.checkpoint import LIGHTNING_KEY, payload, save_export


class ModelModule(L.LightningModule):
    """Base class: subclasses set ``self.model`` to a registered model (see ``checkpoint.register``)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[LIGHTNING_KEY] = payload(self.model, {"prefix": "model."})

    def export(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write the model as ``config.json`` + ``model.safetensors``."""
        return save_export(self.model, directory, extra)
