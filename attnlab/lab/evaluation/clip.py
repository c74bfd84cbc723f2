"""Text alignment: the paper's CLIP-VL score and ChronoMagic-Bench's MTScore.

- :class:`ClipScorer`  CLIP image and text embeddings from a local open_clip checkpoint
- :func:`clip_vl`      mean CLIP image-text cosine similarity over the frames
- :func:`mtscore`      MTScore through a user-supplied scorer (no weights are shipped)
- :class:`ClipWeightsError`, :class:`MTScoreUnavailableError`  what is missing, and where to get it
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from attnlab.core import dims as D
from attnlab.lab.evaluation.base import EvaluationError, _frames, _frames_any

__all__ = [
    "CLIP_CHECKPOINT_ENV",
    "CLIP_MODEL_ENV",
    "ClipScorer",
    "ClipWeightsError",
    "MTScoreUnavailableError",
    "clip_vl",
    "mtscore",
]

CLIP_CHECKPOINT_ENV = "ATTNLAB_CLIP_CHECKPOINT"
CLIP_MODEL_ENV = "ATTNLAB_CLIP_MODEL"


class ClipWeightsError(FileNotFoundError):
    """CLIP-VL was asked for without a local open_clip checkpoint; attnlab never downloads it."""


class MTScoreUnavailableError(EvaluationError):
    """MTScore was asked for without a scorer (its weights are not available offline)."""


@dataclass
class ClipScorer:
    """CLIP image/text embeddings from a local open_clip checkpoint (never downloads).

    ``checkpoint`` (or env ``ATTNLAB_CLIP_CHECKPOINT``) is either

    - a folder in open_clip's Hugging Face layout (what ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``
      holds): ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``) and
      ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``; loaded with
      ``open_clip.create_model("local-dir:<folder>")``; or
    - one weights file (``.safetensors``, ``.bin``, ``.pt``) of the built-in architecture
      ``model`` (or env ``ATTNLAB_CLIP_MODEL``, e.g. ``ViT-B-32``, ``ViT-L-14``), as
      ``open_clip.create_model(model, pretrained=<file>)`` loads it.

    The weights must cover the model exactly (open_clip loads strictly). Text is tokenised
    with the tokenizer open_clip picks for the model (the bundled BPE for OpenAI-style CLIP).
    Frames are preprocessed as the checkpoint's ``preprocess_cfg`` says (resize the shortest
    side to the input size, centre crop, normalise), with torch's antialiased bicubic
    resize instead of PIL's.
    """

    checkpoint: str | os.PathLike | None = None
    model: str | None = None
    device: str | torch.device = "cpu"
    batch_size: int = 32
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        ckpt = self.checkpoint or os.environ.get(CLIP_CHECKPOINT_ENV)
        if not ckpt:
            raise ClipWeightsError(
                "CLIP-VL needs a local open_clip checkpoint: pass clip_checkpoint= (CLI "
                f"--clip-checkpoint) or set ${CLIP_CHECKPOINT_ENV}. Either a folder with "
                "open_clip_config.json and open_clip_model.safetensors (or "
                "open_clip_pytorch_model.bin), as in the laion/* repositories on the Hugging "
                "Face Hub, or one weights file plus the architecture name (clip_model=, "
                f"${CLIP_MODEL_ENV}, e.g. ViT-B-32). No package registry ships CLIP weights and "
                "attnlab never downloads them."
            )
        path = Path(ckpt).expanduser()
        if path.is_dir():
            missing = []
            if not (path / "open_clip_config.json").is_file():
                missing.append("open_clip_config.json")
            weights = [
                n
                for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
                if (path / n).is_file()
            ]
            if not weights:
                missing.append("open_clip_model.safetensors (or open_clip_pytorch_model.bin)")
            if missing:
                raise ClipWeightsError(f"open_clip checkpoint folder {path} lacks {missing}")
        elif path.is_file():
            self.model = self.model or os.environ.get(CLIP_MODEL_ENV)
            if not self.model:
                raise ClipWeightsError(
                    f"{path} is a single weights file: name its architecture with clip_model= "
                    f"(CLI --clip-model, env ${CLIP_MODEL_ENV}), e.g. ViT-B-32"
                )
        else:
            raise ClipWeightsError(f"CLIP checkpoint {path} does not exist")
        self.checkpoint = path

    def settings(self) -> dict[str, Any]:
        path = Path(self.checkpoint)
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        return {
            "checkpoint": str(path),
            "model": self.model,
            "file_sizes": {p.name: p.stat().st_size for p in files if p.is_file()},
        }

    def load(self) -> tuple[Any, Any]:
        """The open_clip model (eval mode) and its tokenizer, loaded once."""
        if self._model is None:
            import open_clip

            path = Path(self.checkpoint)
            if path.is_dir():
                name = f"local-dir:{path}"
                model = open_clip.create_model(name, device=self.device, pretrained_text=False)
            else:
                name = self.model
                model = open_clip.create_model(
                    name, pretrained=str(path), device=self.device, pretrained_text=False
                )
            self._model = model.eval().requires_grad_(False)
            self._tokenizer = open_clip.get_tokenizer(name)
        return self._model, self._tokenizer

    def _preprocess(self, frames: np.ndarray) -> torch.Tensor:
        model, _ = self.load()
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", model.visual.image_size)
        th, tw = (size, size) if isinstance(size, int) else tuple(size)
        mode = cfg.get("resize_mode", "shortest")
        interp = cfg.get("interpolation", "bicubic")
        if interp not in ("bicubic", "bilinear"):
            raise EvaluationError(f"unsupported CLIP preprocessing interpolation {interp!r}")
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        if mode == "shortest":
            scale = max(th / h, tw / w)
            sh, sw = max(th, round(h * scale)), max(tw, round(w * scale))
        elif mode == "squash":
            sh, sw = th, tw
        else:
            raise EvaluationError(f"unsupported CLIP preprocessing resize_mode {mode!r}")
        if (sh, sw) != (h, w):
            x = torch.nn.functional.interpolate(
                x, size=(sh, sw), mode=interp, antialias=True, align_corners=False
            ).clamp(0.0, 1.0)
        top, left = (sh - th) // 2, (sw - tw) // 2
        x = x[..., top : top + th, left : left + tw]
        mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def image_embeddings(self, frames: Any) -> torch.Tensor:
        """Unit-norm image embeddings ``(F, D)`` float64 of the frames."""
        model, _ = self.load()
        x = self._preprocess(_frames_any(frames))
        out = [
            model.encode_image(x[s : s + self.batch_size].to(self.device)).double().cpu()
            for s in range(0, len(x), self.batch_size)
        ]
        e = torch.cat(out)
        return e / e.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(T, D)`` float64."""
        model, tokenizer = self.load()
        e = model.encode_text(tokenizer(list(texts)).to(self.device)).double().cpu()
        return e / e.norm(dim=-1, keepdim=True)


def clip_vl(video: Any, prompt: str, scorer: ClipScorer | None = None, **kw: Any) -> xr.Dataset:
    """The paper's CLIP-VL score (Table 1-2): mean CLIP image-text cosine similarity over frames.

    ``s_i = <e_img(f_i), e_txt(prompt)>`` with both embeddings L2-normalised (no x100, no
    clipping at 0: the paper's values are ~0.21-0.23), ``clip_vl = mean_i s_i``. The paper
    does not name its CLIP model; choose the checkpoint (see :class:`ClipScorer`).

    Variables: ``clip_vl_frame`` (frame), ``clip_vl``.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise EvaluationError("clip_vl needs a non-empty prompt (prompt=, or a run's prompt)")
    scorer = scorer or ClipScorer(**kw)
    frames = _frames(video)
    sims = (scorer.image_embeddings(frames) @ scorer.text_embeddings([prompt]).T)[:, 0].numpy()
    return xr.Dataset(
        {"clip_vl_frame": (D.FRAME, sims), "clip_vl": ((), float(sims.mean()))},
        coords={D.FRAME: np.arange(len(sims))},
    )


def mtscore(video: Any, prompt: str | None, scorer: Callable[..., float] | None) -> xr.Dataset:
    """MTScore (ChronoMagic-Bench, Yuan et al. 2024) through a user-supplied ``scorer``.

    MTScore feeds a video and ten retrieval texts to InternVideo2 and reads the probability of
    the "metamorphic" texts. InternVideo2's weights are shipped by no package registry, so
    attnlab has no implementation of its own and no stand-in: pass
    ``scorer(frames, prompt) -> float`` (frames ``(F, H, W, 3)`` uint8) wrapping
    ChronoMagic-Bench's own code and weights. Variable: ``mtscore``.
    """
    if scorer is None:
        raise MTScoreUnavailableError(
            "MTScore needs InternVideo2 weights (ChronoMagic-Bench), which no package registry "
            "ships; attnlab does not approximate it. Pass mtscore=callable(frames uint8 "
            "(F, H, W, 3), prompt) -> float that wraps ChronoMagic-Bench's evaluation code."
        )
    value = float(scorer(_frames(video), prompt))
    return xr.Dataset({"mtscore": ((), value)})
