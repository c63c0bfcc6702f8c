"""``python -m multimodal.train fit --config configs/<head>/<name>.yaml``: a LightningCLI over every
LightningModule and LightningDataModule of the suite (``class_path`` in the config picks them).

``--ckpt_path FILE`` (resume) is checked before anything is built: a missing file, a damaged one or one that
carries pickled code is one ``error:`` line (exit 2), with no empty run folder left behind.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from multimodal.checkpoint import CheckpointError, safe_torch_load
from multimodal.cli import UsageError, fail

# --ckpt_path values Lightning resolves itself (not files)
CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry", "null", "None")


def cli(args: Sequence[str] | None = None) -> LightningCLI:
    """The LightningCLI itself (runs the subcommand given in ``args``)."""
    return LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        auto_configure_optimizers=False,
    )


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
    except (UsageError, CheckpointError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        return fail(e)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
