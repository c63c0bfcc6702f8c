"""Lightning callbacks shared by every head."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class ExportModel(L.Callback):
    """At the end of ``fit``, write the module's model as ``directory/config.json`` + ``model.safetensors``
    (rank 0 only), so CLIs can load it with ``--checkpoint directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.export(self.directory, {"trained_steps": trainer.global_step})
