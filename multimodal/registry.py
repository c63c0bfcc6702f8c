"""What the heads tell the core: their model kinds, the peers' layouts they read, and their packaged models.

The core names no head. Each head registers itself when its package is imported (``register`` on a model class,
``declare_kind`` / ``register_directory_format`` / ``register_scheme`` / ``register_weights_format`` /
``register_packaged`` in its ``__init__``), and says so through a Python entry point in the group
``multimodal.heads`` (``pyproject.toml``). When the core meets a kind, a directory layout, a ``scheme:`` or a
packaged name it does not know, it imports every head the entry points name (once) and looks again.

Loaders are named ``"module:function"`` and imported on first use, so loading a GPT does not import CLIP.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from multimodal.errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn

ENTRY_POINT_GROUP = "multimodal.heads"
INSTALL_HINT = (
    "is the package of its head installed? the suite's heads register themselves once it is: pip install -e ."
)


@dataclass(frozen=True)
class DirectoryFormat:
    """A peer's directory layout: recognised by ``marker`` (a file in it; ``accepts`` looks at its JSON when the
    marker is a ``config.json`` that others write too), read by ``loader(directory) -> model``."""

    name: str
    kind: str
    marker: str
    loader: str
    accepts: Callable[[dict], bool] | None = None


@dataclass(frozen=True)
class Scheme:
    """``scheme:rest`` sources (open_clip's ``local-dir:DIR``, say): ``loader(rest) -> model``."""

    name: str
    kind: str
    loader: str


@dataclass(frozen=True)
class WeightsFormat:
    """Bare weights files that carry no config: ``loader(arch, path) -> model``, ``arch`` naming the architecture.
    ``hint``: what to tell a user who gave such a file without its architecture."""

    kind: str
    loader: str
    suffixes: tuple[str, ...]
    hint: str


@dataclass(frozen=True)
class Packaged:
    """A model shipped inside the package (``multimodal/demo_models/<name>``); ``note``: what a tool prints on
    stderr when it falls back to it (what the small model knows)."""

    name: str
    note: str | None = None


_CLASSES: dict[str, type] = {}
_KIND_MODULES: dict[str, str] = {}
_BUILT_ON_META: set[str] = set()
_DIRECTORY_FORMATS: dict[str, DirectoryFormat] = {}
_SCHEMES: dict[str, Scheme] = {}
_WEIGHTS_FORMATS: dict[str, WeightsFormat] = {}
_PACKAGED: dict[str, Packaged] = {}
_heads_loaded = False
_head_failures: dict[str, str] = {}


# -- what heads call ---------------------------------------------------------------------------------------
def register(kind: str) -> Callable[[type], type]:
    """Class decorator: ``kind`` names this model class in exports (``config.json``'s ``"kind"``). The class has a
    dataclass ``config_class`` and is built as ``Cls(config)``."""

    def wrap(cls: type) -> type:
        cls.kind = kind
        _CLASSES[kind] = cls
        return cls

    return wrap


def declare_kind(kind: str, module: str, built_on_meta: bool = False) -> None:
    """``kind`` is defined (with ``@register``) in ``module``, imported the first time a checkpoint of that kind
    is read. ``built_on_meta``: the model is built on the meta device and its weights assigned (no random init
    first; for models with no buffers outside their state dict)."""
    _KIND_MODULES[kind] = module
    if built_on_meta:
        _BUILT_ON_META.add(kind)


def register_directory_format(
    name: str, kind: str, marker: str, loader: str, accepts: Callable[[dict], bool] | None = None
) -> None:
    _DIRECTORY_FORMATS[name] = DirectoryFormat(name, kind, marker, loader, accepts)


def register_scheme(name: str, kind: str, loader: str) -> None:
    _SCHEMES[name] = Scheme(name, kind, loader)


def register_weights_format(kind: str, loader: str, suffixes: tuple[str, ...], hint: str) -> None:
    _WEIGHTS_FORMATS[kind] = WeightsFormat(kind, loader, suffixes, hint)


def register_packaged(name: str, note: str | None = None) -> None:
    _PACKAGED[name] = Packaged(name, note)


# -- what the core asks ------------------------------------------------------------------------------------
def load_heads() -> None:
    """Import every head named by the ``multimodal.heads`` entry points (once): each registers itself. A head
    that fails to import is remembered, and named in the error about what it would have registered."""
    global _heads_loaded
    if _heads_loaded:
        return
    _heads_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as e:  # noqa: BLE001 - one broken head must not hide the others
            _head_failures[point.name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]


def _unknown(what: str, known: list[str]) -> CheckpointError:
    if _head_failures:
        broken = "; ".join(f"{name}: {why}" for name, why in sorted(_head_failures.items()))
        return CheckpointError(f"{what} (heads that failed to import: {broken})")
    if not known:
        return CheckpointError(f"{what}: no head is registered ({INSTALL_HINT})")
    return CheckpointError(f"{what} (known: {', '.join(sorted(set(known)))}; {INSTALL_HINT})")


def model_class(kind: str) -> type[nn.Module]:
    """The class ``@register(kind)`` names, importing its head (and, once, every head) as needed."""
    if kind not in _CLASSES and kind not in _KIND_MODULES:
        load_heads()
    if kind not in _CLASSES and kind in _KIND_MODULES:
        try:
            importlib.import_module(_KIND_MODULES[kind])
        except ImportError as e:
            raise CheckpointError(f"the module of model kind {kind!r} does not import: {e}") from None
    if kind not in _CLASSES:
        raise _unknown(f"unknown model kind {kind!r}", [*_CLASSES, *_KIND_MODULES])
    return _CLASSES[kind]


def built_on_meta(kind: str) -> bool:
    return kind in _BUILT_ON_META


def known_kinds() -> list[str]:
    load_heads()
    return sorted({*_CLASSES, *_KIND_MODULES})


def directory_formats() -> list[DirectoryFormat]:
    load_heads()
    return list(_DIRECTORY_FORMATS.values())


def scheme(name: str) -> Scheme | None:
    if name not in _SCHEMES:
        load_heads()
    return _SCHEMES.get(name)


def weights_format(kind: str | None) -> WeightsFormat | None:
    """The bare-weights format of ``kind`` (``None``: the only one registered, if exactly one is)."""
    load_heads()
    if kind is None:
        return next(iter(_WEIGHTS_FORMATS.values())) if len(_WEIGHTS_FORMATS) == 1 else None
    return _WEIGHTS_FORMATS.get(kind)


def packaged(name: str) -> Packaged | None:
    if name not in _PACKAGED:
        load_heads()
    return _PACKAGED.get(name)


def packaged_names() -> list[str]:
    load_heads()
    return list(_PACKAGED)


def resolve_loader(reference: str) -> Callable[..., Any]:
    """``"module:function"`` → the function (its module imported now)."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)
