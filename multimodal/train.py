"""``python -m multimodal.train fit --config configs/<head>/<name>.yaml``: a LightningCLI over every
LightningModule and LightningDataModule of the suite (``class_path`` in the config picks them).

``--ckpt_path FILE`` (resume) is checked before anything is built: a missing file, a damaged one or one that
carries pickled code is one ``error:`` line (exit 2), with no empty run folder left behind.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from multimodal.callbacks import step_progress_bar
from multimodal.checkpoint import CheckpointError, safe_torch_load
from multimodal.cli import UsageError, fail

# --ckpt_path values Lightning resolves itself (not files)
CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry", "null", "None")
# what a bad config or checkpoint raises deep inside LightningCLI (jsonargparse wraps it in its own errors)
INPUT_ERRORS = (UsageError, CheckpointError, FileNotFoundError, IsADirectoryError, PermissionError)


class _NoAdvert(logging.Filter):
    """Drops Lightning's "Tip: … try installing litlogger" line, printed on every run that logs elsewhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence the notices every run would print that are not about the run: the litlogger advert, the
    ``LeafSpec`` deprecation Lightning's own pytree helper triggers in torch (nothing of ours to change), and the
    ``IterableDataset`` length caution our shard streams already answer."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        if not any(isinstance(f, _NoAdvert) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(_NoAdvert())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # our shard datasets split their stream by node and by worker and give every rank the same number of batches
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


class SuiteCLI(LightningCLI):
    """LightningCLI with the suite's defaults: a CSV logger under ``default_root_dir`` unless the config names
    one (Lightning's own default says every run that TensorBoard is not installed), and a progress bar that
    counts the run's steps (``Steps 120/300``) instead of epochs of a step-bounded run (``Epoch 2/-2``)."""

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # main() reads sys.argv itself (it checks --ckpt_path first) and hands it over as ``args``; Lightning would
        # warn that args and sys.argv are both given, which is the case for every command-line run
        self.config = parser.parse_args(args)

    def before_fit(self) -> None:
        # a frozen part kept in eval mode on purpose (DALL·E's dVAE) is not the mistake Lightning warns about
        frozen = [m for m in self.model.modules() if not m.training]
        if frozen and not any(p.requires_grad for m in frozen for p in m.parameters()):
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        if config.get("logger") in (None, True):
            config["logger"] = CSVLogger(save_dir=config.get("default_root_dir") or ".")
        given = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks = [*callbacks, step_progress_bar()]
        return super()._instantiate_trainer(config, callbacks)


def cli(args: Sequence[str] | None = None) -> LightningCLI:
    """The LightningCLI itself (runs the subcommand given in ``args``, default ``sys.argv[1:]``)."""
    quiet_lightning()
    return SuiteCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=list(sys.argv[1:] if args is None else args),
        auto_configure_optimizers=False,
    )


def input_error(e: BaseException) -> BaseException | None:
    """The bad-input error behind ``e`` (a missing ``init_from`` checkpoint surfaces as jsonargparse's
    "Does not validate against any of the Union subtypes", caused by our ``CheckpointError``), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, INPUT_ERRORS):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def ckpt_path_arg(args: Sequence[str]) -> str | None:
    """The value of ``--ckpt_path`` in ``args`` (``--ckpt_path X`` or ``--ckpt_path=X``), if given."""
    for i, a in enumerate(args):
        if a == "--ckpt_path" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--ckpt_path="):
            return a.split("=", 1)[1]
    return None


def check_ckpt_path(value: str | None) -> None:
    """A resume checkpoint must exist and load with ``weights_only=True`` (a pickle that carries code is
    refused, never executed); Lightning's keywords (``last``, ``best`` …) are left to Lightning."""
    if value is None or value in CKPT_PATH_KEYWORDS or "://" in value:
        return
    path = Path(value)
    if not path.exists():
        raise UsageError(f"--ckpt_path {path}: no such file")
    if path.is_dir():
        raise UsageError(f"--ckpt_path {path}: a directory; pass the .ckpt file (e.g. .../checkpoints/last.ckpt)")
    safe_torch_load(path, mmap=True)


def main(args: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    try:
        check_ckpt_path(ckpt_path_arg(argv))
        cli(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - anything else is a bug and keeps its traceback
        cause = input_error(e)
        if cause is None:
            raise
        return fail(cause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
