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
        # The module's hyper-parameters move under our key: LightningCLI's `--ckpt_path` resume re-parses a
        # checkpoint's `hyper_parameters` as CLI arguments, and ours (plain dicts, so that the file loads
        # with weights_only=True) are not in that form.
        hparams = checkpoint.pop("hyper_parameters", None)
        checkpoint[LIGHTNING_KEY] = payload(self.model, {"prefix": "model.", "hparams": hparams})

    def export(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write the model as ``config.json`` + ``model.safetensors``."""
        return save_export(self.model, directory, extra)
