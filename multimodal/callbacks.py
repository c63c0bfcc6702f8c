"""Lightning callbacks shared by every head."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar


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


def _without_version(metrics: dict) -> dict:
    metrics.pop("v_num", None)  # the logger's version number is not a metric
    return metrics


def step_progress_bar() -> ProgressBar:
    """A progress bar over the run's optimizer steps when ``max_steps`` bounds it (``Steps 120/300``, with the
    time left for the whole run), over each epoch otherwise; no ``v_num``. Rich when installed, else tqdm."""
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    return StepRichProgressBar() if _RICH_AVAILABLE else StepTQDMProgressBar()


class StepRichProgressBar(RichProgressBar):
    def _by_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    def _get_train_description(self, current_epoch: int) -> str:
        return "Steps" if self._by_steps() else super()._get_train_description(current_epoch)

    def _initialize_train_progress_bar_id(self) -> None:
        if not self._by_steps():
            return super()._initialize_train_progress_bar_id()
        self.train_progress_bar_id = self._add_task(self.trainer.max_steps, "Steps")
        self._update(self.train_progress_bar_id, self.trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._by_steps():
            return super().on_train_epoch_start(trainer, pl_module)
        if self.progress is not None and self.train_progress_bar_id is None:  # one bar for the whole run
            self._initialize_train_progress_bar_id()
        self.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._by_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        return _without_version(super().get_metrics(trainer, pl_module))


class StepTQDMProgressBar(TQDMProgressBar):
    def _by_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    def on_train_epoch_start(self, trainer: L.Trainer, *_) -> None:
        if not self._by_steps():
            return super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # one bar for the whole run
            bar.reset(total=trainer.max_steps)
            bar.n = trainer.global_step
            bar.set_description("Steps")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._by_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        return _without_version(super().get_metrics(trainer, pl_module))
