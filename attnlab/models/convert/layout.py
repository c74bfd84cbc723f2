"""Checkpoint key layouts and reading, shared by the LaVie and VideoCrafter2 converters.

- ``Layout``: a checkpoint's keys and their shapes, as its authors' model definitions build them
- :class:`ConversionReport`: what a conversion did with every key of the original checkpoint
- :class:`CheckpointLayoutError`, :func:`check_layout`: a checkpoint against a layout, every
  missing, unexpected and mis-shaped key named
- :func:`load_checkpoint`: a state dict from a ``torch.save`` file, safely by default, in the
  wrappers and key prefixes the authors' loaders accept, every tensor its own
- :func:`shared_keys`: the groups of keys whose tensors share memory
- ``_norm``, ``_lin``, ``_conv``: the layout entries of one norm, linear or convolution layer
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

Layout = dict[str, tuple[int, ...]]


@dataclass
class ConversionReport:
    """What a conversion did with every key of the original checkpoint."""

    source: str
    consumed: int = 0
    dropped: list[str] = field(default_factory=list)
    components: dict[str, int] = field(default_factory=dict)  # component -> tensors written
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(f"{k}: {v} tensors" for k, v in self.components.items())
        text = f"{self.source}: {self.consumed} keys consumed ({parts})"
        if self.dropped:
            text += f"; {len(self.dropped)} dropped by name (unused by the original model)"
        return text


class CheckpointLayoutError(ValueError):
    """The checkpoint does not have the key layout of the model it claims to be."""


def check_layout(
    state: dict[str, Any], layout: Layout, what: str, optional: Layout | None = None
) -> None:
    """Raise :class:`CheckpointLayoutError` naming missing, unexpected and mis-shaped keys.

    ``optional``: keys (and their shapes) a checkpoint may hold or lack, e.g. lvdm's
    ``scale_factor``, a buffer only with ``scale_by_std: true``.
    """
    allowed = {**(optional or {}), **layout}
    missing = sorted(set(layout) - set(state))
    unexpected = sorted(set(state) - set(allowed))
    shapes = [
        f"{k}: {tuple(state[k].shape)} (expected {allowed[k]})"
        for k in sorted(set(allowed) & set(state))
        if tuple(state[k].shape) != tuple(allowed[k])
    ]
    if missing or unexpected or shapes:
        lines = [f"{what}: the checkpoint does not have the expected key layout"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                more = f" ... (+{len(items) - 5})" if len(items) > 5 else ""
                lines.append(f"  {label} ({len(items)}): {', '.join(items[:5])}{more}")
        raise CheckpointLayoutError("\n".join(lines))


#: key prefixes of wrapped models, removed from every key: ``module.`` (``DataParallel`` /
#: DDP) and ``_forward_module.`` (PyTorch Lightning's DeepSpeed wrapper, whose checkpoints
#: lvdm's ``load_model_checkpoint`` reads as ``{"module": {"_forward_module.<key>": ...}}``)
KEY_PREFIXES = ("module.", "_forward_module.")


def load_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file, as the authors' loaders read it.

    - Wrappers are unwrapped: ``state_dict`` (Lightning, lvdm's ``model.ckpt``), ``ema``
      (LaVie's ``find_model``), ``module`` (DeepSpeed); the prefixes in :data:`KEY_PREFIXES`
      are removed from every key.
    - Every tensor comes back as its own: tensors that share memory in the file (LaVie's one
      ``RotaryEmbedding(32)``, handed to every temporal layer, saves the same tensor under 16
      keys) are copied after the first key of each group (see :func:`shared_keys`), so that
      each key can be loaded, cast and written on its own (safetensors refuses shared tensors).

    Pickled checkpoints are read with ``weights_only=True`` (tensors and plain containers only);
    ``trust_pickle=True`` allows arbitrary pickled objects (only for files you trust).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    with path.open("rb") as f:
        head = f.read(4)
    zipped = zipfile.is_zipfile(path)
    # torch.save writes a zip archive, or (before PyTorch 1.6, or with
    # _use_new_zipfile_serialization=False) a pickle whose first byte is the PROTO opcode
    if not zipped and head == b"PK\x03\x04":  # a zip's first entry, but no end record
        raise ValueError(
            f"{path} is a truncated or damaged PyTorch checkpoint (torch.save's zip format "
            "without its end record): download or copy it again"
        )
    if not zipped and head[:1] != b"\x80":
        what = "an empty file" if not head else "neither torch.save's zip format nor its older one"
        raise ValueError(f"{path} is not a PyTorch checkpoint ({what})")
    try:
        # mmap needs the zip format; older files are read whole
        with warnings.catch_warnings():
            # junk that starts like a pickle names an odd protocol; the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=zipped)
    except ModuleNotFoundError as err:  # trust_pickle: an object of a package not installed
        raise ValueError(
            f"{path} holds pickled objects of the module {err.name!r}, which is not installed "
            f"here: install it (e.g. pip install {str(err.name).split('.')[0]}) to unpickle them"
        ) from err
    except pickle.UnpicklingError as err:
        if trust_pickle:
            raise
        objects = sorted(set(re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(err))))
        if objects:
            raise ValueError(
                f"{path} holds pickled objects beyond tensors ({', '.join(objects)}), which "
                "could run code when loaded; if you trust the file, pass trust_pickle=True "
                "(CLI: --trust-pickle)"
            ) from err
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (its pickle data is malformed)"
        ) from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(err)})"
        ) from err
    for wrapper in ("state_dict", "ema", "module"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            continue
        for prefix in KEY_PREFIXES:
            key = key.removeprefix(prefix)
        if key in state:
            raise ValueError(
                f"{path}: key {key!r} occurs twice once the wrapper prefixes are removed"
            )
        state[key] = value
    return _unshare(state)


def family_of_state(state: dict[str, torch.Tensor]) -> str | None:
    """Which authors' layout a state dict looks like, by its keys: ``"videocrafter2"`` (lvdm:
    ``model.diffusion_model.*``), ``"lavie"`` (diffusers-style UNet keys with temporal
    ``attn_temp`` layers), or None."""
    if any(k.startswith("model.diffusion_model.") for k in state):
        return "videocrafter2"
    if "conv_in.weight" in state and any(".attn_temp." in k for k in state):
        return "lavie"
    return None


def check_family(state: dict[str, torch.Tensor], family: str, what: str) -> None:
    """Refuse a checkpoint of the other authors' layout with the command that takes it."""
    found = family_of_state(state)
    if found is not None and found != family:
        file = "model.ckpt" if found == "videocrafter2" else "lavie_base.pt"
        raise CheckpointLayoutError(
            f"{what}: this is a {found} checkpoint (its keys are {file}'s layout), not a "
            f"{family} one: convert it with `attnlab convert {found}`"
        )


def same_values(stored: torch.Tensor, want: torch.Tensor, rtol: float, atol: float = 0.0) -> bool:
    """Whether a checkpoint tensor holds ``want`` within ``rtol`` / ``atol``, or within the
    rounding of the dtype it is stored in (a float16 or bfloat16 checkpoint of float32 values)."""
    eps = torch.finfo(stored.dtype).eps if stored.dtype.is_floating_point else 0.0
    return torch.allclose(stored.double(), want.double(), rtol=max(rtol, eps), atol=atol)


def _storage(t: torch.Tensor) -> tuple[Any, int] | None:
    """The identity of ``t``'s memory (None for an empty tensor, which holds none)."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.device, t.untyped_storage().data_ptr())


def shared_keys(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Groups of two or more keys whose tensors share memory (the same tensor object, or views
    of one storage), in key order."""
    groups: dict[tuple[Any, int], list[str]] = {}
    for key, value in state.items():
        where = _storage(value)
        if where is not None:
            groups.setdefault(where, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every key but the first of each :func:`shared_keys` group copied."""
    out = dict(state)
    for keys in shared_keys(state):
        for key in keys[1:]:
            out[key] = state[key].clone()
    return out


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _norm(p: str, c: int) -> Layout:
    return {f"{p}.weight": (c,), f"{p}.bias": (c,)}


def _lin(p: str, o: int, i: int, bias: bool = True) -> Layout:
    out = {f"{p}.weight": (o, i)}
    if bias:
        out[f"{p}.bias"] = (o,)
    return out


def _conv(p: str, o: int, i: int, k: int | tuple[int, ...] = 3) -> Layout:
    ks = (k, k) if isinstance(k, int) else tuple(k)
    return {f"{p}.weight": (o, i, *ks), f"{p}.bias": (o,)}
