"""Lightning callbacks shared by every head."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class ExportModel(L.Callback):
    """At the end of ``fit``, write the module's model as ``directory/config.json`` + ``model.safetensors``
    (rank 0 only), so CLIs can load it with ``--checkpoint directory``.

    ``directory`` defaults to ``<trainer.default_root_dir>/export``: a run's export lands under its own root, so
    ``--trainer.default_root_dir`` keeps two runs' exports apart. A given path is used as given (relative to the
    working directory, like every path of the CLI)."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None

    def export_dir(self, trainer: L.Trainer) -> Path:
        return self.directory if self.directory is not None else Path(trainer.default_root_dir) / "export"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.export(self.export_dir(trainer), {"trained_steps": trainer.global_step})
