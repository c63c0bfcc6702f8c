"""OpenAI's released dVAE (the ``dall-e`` package: pickled ``dall_e.Encoder`` / ``Decoder``) -> ours, exactly."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dalle.vae.model import DiscreteVAE, VAEConfig
from multimodal.checkpoint import CheckpointError, load_state_file

_OPENAI_KEY = re.compile(
    r"^blocks\.(?:(input)|(output)\.conv|group_(\d+)\.block_(\d+)\.(?:(id_path)|res_path\.conv_(\d+)))\.(w|b)$"
)


def _openai_to_ours(key: str, prefix: str) -> str | None:
    m = _OPENAI_KEY.match(key)
    if m is None:
        return None
    inp, outp, g, i, id_path, j, wb = m.groups()
    name = "weight" if wb == "w" else "bias"
    if inp or outp:
        return f"{prefix}.{'input' if inp else 'output'}.{name}"
    block = f"{prefix}.groups.{int(g) - 1}.{int(i) - 1}"
    return f"{block}.id_path.{name}" if id_path else f"{block}.convs.{int(j) - 1}.{name}"


def openai_config(
    encoder_state: dict[str, Tensor], decoder_state: dict[str, Tensor], image_size: int = 256
) -> VAEConfig:
    """The ``VAEConfig`` holding exactly the architecture of these ``dall_e`` Encoder/Decoder state dicts."""
    try:
        w_in = encoder_state["blocks.input.w"]  # [n_hid, C, k, k]
        hidden, channels, kernel = w_in.shape[0], w_in.shape[1], w_in.shape[2]
        groups = sorted({int(m.group(3)) for k in encoder_state if (m := _OPENAI_KEY.match(k)) and m.group(3)})
        blocks = sorted({int(m.group(4)) for k in encoder_state if (m := _OPENAI_KEY.match(k)) and m.group(3) == "1"})
        widths = [encoder_state[f"blocks.group_{g}.block_1.res_path.conv_4.w"].shape[0] for g in groups]
        vocab = encoder_state["blocks.output.conv.w"].shape[0]
        init_channels = decoder_state["blocks.input.w"].shape[0]
        out_channels = decoder_state["blocks.output.conv.w"].shape[0]
    except (KeyError, AttributeError, IndexError) as e:
        raise CheckpointError(f"not a dall_e Encoder/Decoder state dict (missing {e})") from None
    if not groups or groups != list(range(1, len(groups) + 1)) or any(w % hidden for w in widths):
        raise CheckpointError(f"unexpected dall_e layout: groups {groups}, widths {widths}")
    if out_channels != 2 * channels:
        raise CheckpointError(
            f"dall_e decoder outputs {out_channels} channels, expected {2 * channels} (logit-Laplace)"
        )
    mults = [w // hidden for w in widths]
    try:
        return VAEConfig(
            image_size=image_size,
            channels=channels,
            codebook_size=vocab,
            downsample=2 ** (len(groups) - 1),
            hidden=hidden,
            channel_mults=mults,
            blocks_per_group=len(blocks),
            init_channels=init_channels,
            input_kernel=kernel,
            loss="logit_laplace",
            eps=0.1,
        )
    except ValueError as e:
        raise CheckpointError(f"dall_e weights describe an unsupported architecture: {e}") from None


def convert_openai_state(
    encoder_state: dict[str, Tensor], decoder_state: dict[str, Tensor], image_size: int = 256
) -> DiscreteVAE:
    """Build our ``DiscreteVAE`` from ``dall_e`` Encoder and Decoder state dicts, checking every key and shape."""
    config = openai_config(encoder_state, decoder_state, image_size)
    model = DiscreteVAE(config)
    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for prefix, state in (("encoder", encoder_state), ("decoder", decoder_state)):
        for key, value in state.items():
            ours = _openai_to_ours(key, prefix)
            if ours is None or ours not in own:
                raise CheckpointError(f"dall_e {prefix} key {key!r} has no place in our model")
            if tuple(value.shape) != tuple(own[ours].shape):
                raise CheckpointError(
                    f"shape mismatch: dall_e {prefix} {key} {tuple(value.shape)} vs ours {ours} {tuple(own[ours].shape)}"
                )
            mapped[ours] = value.detach().float()
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise CheckpointError(f"dall_e weights leave {len(missing)} of our parameters unset, e.g. {missing[:3]}")
    model.load_state_dict(mapped)
    return model.eval()


_PICKLE_REFUSAL = (
    "{path}: a pickled Python object (OpenAI's released encoder.pkl/decoder.pkl are whole pickled modules); "
    "unpickling runs code stored in the file, so it is refused; pass --trust-pickle only for files from a "
    "source you trust (needs the dall-e package installed)"
)


def load_openai_state(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """A ``dall_e`` Encoder/Decoder state dict from a weights file (safe) or, with ``trust_pickle``, from
    OpenAI's pickled module. Without ``trust_pickle`` nothing is ever unpickled."""
    path = Path(path)
    try:
        obj: Any = load_state_file(path)
    except CheckpointError as e:
        if "refused to load" not in str(e):
            raise
        with open(path, "rb") as f:  # a torch.save zip or a raw pickle (protocol 2+ starts with 0x80)
            looks_pickled = zipfile.is_zipfile(f) or (f.seek(0) == 0 and f.read(1) == b"\x80")
        if not looks_pickled:
            raise CheckpointError(f"{path}: neither a weights file nor a pickled dall_e module") from None
        if not trust_pickle:
            raise CheckpointError(_PICKLE_REFUSAL.format(path=path)) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for this file
        except ModuleNotFoundError as e:
            raise CheckpointError(f"{path}: unpickling needs the module {e.name!r} (pip install dall-e)") from None
        except Exception as e:  # noqa: BLE001 - anything a foreign pickle raises becomes one line
            raise CheckpointError(f"{path}: could not unpickle: {type(e).__name__}: {str(e)[:160]}") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a dall_e Encoder/Decoder or its state dict, found {type(obj).__name__}"
        )
    return dict(obj)
