"""The packaged demo models: small models trained on the shapes world (and the tasks world for the GPT), shipped
inside the package under ``multimodal/demo_models/<name>`` and loaded by name (``multimodal.load("clip")``).

Which names exist, and the note a tool prints when it falls back to one, the heads register
(``multimodal.registry.register_packaged``); this module finds their directories.
"""

from __future__ import annotations

from pathlib import Path

from multimodal import registry
from multimodal.errors import CheckpointError
from multimodal.weights import CONFIG_FILE, WEIGHTS_FILE

PACKAGED_DIR = Path(__file__).parent / "demo_models"
SHAPES_ONLY_NOTE = "note: the demo model knows only the synthetic shapes world (coloured shapes at named places)"
# what builds the packaged models (an application of the suite; named for the user, never imported)
BUILD_COMMAND = "python -m multimodal.demo build"


def packaged_path(name: str, root: Path | None = None) -> Path | None:
    """Directory of the packaged demo model ``name`` (``registry.packaged_names()``), if shipped."""
    if registry.packaged(name) is None:
        return None
    path = (root or PACKAGED_DIR) / name
    return path if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file() else None


def packaged_note(name: str) -> str | None:
    """The note the head registered for its packaged ``name`` (what the small model knows), if any."""
    entry = registry.packaged(name)
    return entry.note if entry is not None else None


def resolve(path: str | Path) -> Path:
    """``path``, or the packaged model of that name when ``path`` is one and names no model on disk."""
    p = Path(path)
    if p.is_file() or (p / CONFIG_FILE).is_file() or p.parent != Path(".") or registry.packaged(str(path)) is None:
        return p
    return packaged_model_path(str(path))


def packaged_model_path(name: str, root: Path | None = None) -> Path:
    """``packaged_path`` or a one-line ``CheckpointError`` saying how to build the missing model."""
    path = packaged_path(name, root)
    if path is None:
        known = ", ".join(n for n in registry.packaged_names() if packaged_path(n, root) is not None)
        if registry.packaged(name) is not None:
            raise CheckpointError(
                f"the packaged {name!r} model is not in {root or PACKAGED_DIR}; build it with "
                f"`{BUILD_COMMAND}` (packaged: {known or 'none'})"
            )
        raise CheckpointError(f"{name}: no such file or directory, and not a packaged model ({known or 'none'})")
    return path
