"""Self-describing checkpoints: state_dict + model config + label maps, loaded weights-only.

Never a pickled object: torch.load(weights_only=True) refuses anything but tensors and plain
containers, so a crafted pickle payload in a checkpoint file is rejected, not executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from twinhead import fileio
from twinhead.errors import TwinheadError
from twinhead.model import JointModel, ModelConfig
from twinhead.vocab import Vocabs

FORMAT = "twinhead-checkpoint/1"


def build_model(model_config: dict, vocabs: Vocabs) -> JointModel:
    return JointModel(ModelConfig(**model_config), len(vocabs.words), len(vocabs.chars), vocabs.tags.itos,
                      vocabs.intents.itos)


def save_checkpoint(path: str | Path, model: JointModel, vocabs: Vocabs, preprocess: dict, extra: dict) -> None:
    ckpt = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": model.cfg.to_dict(),
        "vocabs": vocabs.to_lists(),
        "preprocess": preprocess,
        **extra,
    }
    with fileio.atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def safe_torch_load(path: str | Path, map_location="cpu") -> dict:
    """torch.load(weights_only=True) with errors that name the file."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise TwinheadError(f"{path}: file not found") from e
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TwinheadError(f"{path}: refused to load: not a weights-only file (it asks to unpickle "
                            f"arbitrary objects, which could run code): {first}") from e
    except IsADirectoryError as e:
        raise TwinheadError(f"{path}: is a folder, not a checkpoint file") from e
    except Exception as e:  # noqa: BLE001 - torch raises many types on garbage input
        raise TwinheadError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise TwinheadError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[JointModel, Vocabs, dict]:
    ckpt = safe_torch_load(path)
    if ckpt.get("format") != FORMAT:
        raise TwinheadError(f"{path}: not a twinhead checkpoint (format {ckpt.get('format')!r}, expected {FORMAT})")
    vocabs = Vocabs.from_lists(ckpt["vocabs"])
    model = build_model(ckpt["model_config"], vocabs)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise TwinheadError(f"{path}: weights do not match the model config and vocabularies: {e}") from e
    model.to(device).eval()
    return model, vocabs, ckpt
