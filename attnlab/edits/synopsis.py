"""Video Synopsis Prompting (paper Sec. 3.4, App. C): one text embedding per frame.

K key states ("a young boy", "an old man") are encoded with the pipeline's own text encoder,
placed at key frames (default ``floor(linspace(0, N-1, K))``, int64: no overflow past 127
frames) and blended linearly between consecutive key frames (``mode="linear"``) or held
constant until the next key frame (``mode="same"``). The result replaces the conditional
text context of every frame; the unconditional (negative-prompt) branch is unchanged.

The denoisers repeat one ``(B, L, D)`` text embedding over frames, so the per-frame context is
swapped in by forward pre-hooks on the spatial transformer blocks, where the context is
``(B*F, L, D)`` (UNet3D) or ``(B, L, D)`` shared by a frame-folded view (UNetMotionModel).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attnlab.core.protocol import CallContext, Stage
from attnlab.edits.base import Edit, EditError, register

if TYPE_CHECKING:
    from attnlab.core.control import Controller

# Appendix C of the paper: the instruction that turns a prompt into key states with an LLM.
VSP_TEMPLATE = (
    'I have a prompt "{prompt}" for video generation. Can you split the process and describe the '
    "states separately? Each state is described in only one sentence and please consider the "
    "coherency between sub-prompts. Please be straightforward and do not use a narrative style.\n\n"
    'For example, for prompt "a boy is getting old", it can be divided into two states, e.g., '
    '"a young boy" and "an old man".\n\n'
    "Based on this example, can you provide the description? The number of states is not limited "
    "to two. Answer with one state per line."
)


def key_states_from_llm(
    prompt: str, client: Callable[[str], str], template: str = VSP_TEMPLATE
) -> list[str]:
    """Ask ``client`` (any callable str -> str, e.g. a wrapper around an LLM API) for key states.

    attnlab makes no network call of its own: the client does. The reply is split into one
    state per non-empty line, with list numbering, bullets and quotes removed.
    """
    reply = client(template.format(prompt=prompt))
    states = []
    for line in reply.splitlines():
        line = re.sub(
            r"^\s*(?:[-*\u2022]|\d+[.):]|state\s*\d+\s*[:.-])\s*", "", line, flags=re.IGNORECASE
        )
        line = line.strip().strip('"').strip("\u201c\u201d").strip()
        if line:
            states.append(line)
    if not states:
        raise EditError(f"the LLM reply contained no key states: {reply!r}")
    return states


def default_key_frames(num_states: int, frames: int) -> np.ndarray:
    """``floor(linspace(0, frames - 1, K))`` as int64, as the paper's code (minus its int8 cast)."""
    return np.floor(np.linspace(0, frames - 1, num_states)).astype(np.int64)


def frame_weights(
    key_frames: Sequence[int] | np.ndarray, frames: int, mode: str = "linear"
) -> np.ndarray:
    """``[frames, K]`` blend weights: row f says how much of each key state frame f gets."""
    k = np.asarray(key_frames, dtype=np.int64)
    w = np.zeros((frames, len(k)))
    for f in range(frames):
        if f <= k[0]:
            w[f, 0] = 1
        elif f >= k[-1]:
            w[f, -1] = 1
        else:
            i = int(np.searchsorted(k, f, side="right") - 1)
            b = (f - k[i]) / (k[i + 1] - k[i])
            if mode == "same":
                w[f, i] = 1
            else:
                w[f, i], w[f, i + 1] = 1 - b, b
    return w


@register
class Synopsis(Edit):
    """Per-frame text conditioning from key states (paper Sec. 3.4).

    ``key_states``: K prompts (encoded with the pipeline's encoder) or a ``[K, L, D]`` tensor
    of text embeddings. ``key_frames``: K strictly increasing frame indices (default evenly
    spaced from the first to the last frame). ``mode``: "linear" or "same". Pass the plain
    prompt to the pipeline as usual; its conditional embedding is replaced frame by frame.

    Frame ``f`` gets ``sum_k w[f, k] e_k`` with ``w = frame_weights(key_frames, F, mode)``
    (``[F, K]``): frames before the first key frame get the first state, frames after the last
    the last state. It always edits the conditional half only (no ``cfg`` argument) and acts on
    the spatial cross-attention blocks (``Transformer2DModel``), not on temporal attention
    (recorded maps change only through the model's response); its spec is written into the
    ``edits`` of recorded runs (``"<tensor>"`` in place of embedding key states).

    Args:
        key_states (``Sequence[str] | torch.Tensor``): K non-empty prompts (encoded with the
            pipeline's ``encode_prompt`` on first use), or a ``[K, L, D]`` tensor of text
            embeddings matching the model's text context ``(L, D)``.
        key_frames (``Sequence[int] | None``, default None): K non-negative, strictly
            increasing frame indices, the last at most ``F - 1``; None:
            ``floor(linspace(0, F - 1, K))``.
        mode (``str``, default ``"linear"``): ``"linear"`` (blend consecutive states) or
            ``"same"`` (hold each state until the next key frame).
        steps (default None): sampler-step indices (int, list, ``range``, ``slice``); None: all.
        t_min (``float | None``, default None): act only while ``t >= t_min * T``.
        t_max (``float | None``, default None): act only while ``t <= t_max * T``.

    Raises:
        EditError: at construction, for a bad ``mode``, empty or non-string key states, an
            embedding tensor that is not 3-D, or key frames that are not one per state,
            non-negative and strictly increasing; on entering ``attnlab.edit``, for text key
            states without a pipeline (a bare denoiser) or a model without spatial
            cross-attention blocks; during a run, for more key states than frames, a key frame
            past the last frame, or embeddings whose ``(L, D)`` differ from the model's.

    Example::

        from attnlab import Synopsis
        with attnlab.edit(pipe, Synopsis(["a young boy", "an old man"])):        # VSP
            video = pipe("a boy is getting old", num_frames=16).frames
        Synopsis(["a bud", "a half-open flower", "a full bloom"], key_frames=[0, 5, 15], mode="same")
        states = attnlab.key_states_from_llm("a peony blooming", client=my_llm)  # any str -> str
        Synopsis(states, t_min=0.5)                                              # early steps only
    """

    kind = "synopsis"
    stage = Stage.CONTEXT

    def __init__(
        self,
        key_states: Sequence[str] | torch.Tensor,
        key_frames: Sequence[int] | None = None,
        mode: str = "linear",
        *,
        steps: Any = None,
        t_min: float | None = None,
        t_max: float | None = None,
    ):
        super().__init__(steps=steps, t_min=t_min, t_max=t_max, cfg="cond")
        if mode not in ("linear", "same"):
            raise EditError(f"mode must be 'linear' or 'same'; got {mode!r}")
        if torch.is_tensor(key_states):
            if key_states.ndim != 3:
                raise EditError(
                    f"key-state embeddings must be [K, L, D], got {tuple(key_states.shape)}"
                )
            self.embeddings: torch.Tensor | None = key_states
            self.key_states: list[str] | None = None
            k = key_states.shape[0]
        else:
            states = list(key_states)
            if not states or not all(isinstance(s, str) and s.strip() for s in states):
                raise EditError(f"key_states must be non-empty strings, got {states!r}")
            self.key_states, self.embeddings = states, None
            k = len(states)
        if key_frames is not None:
            kf = [int(v) for v in key_frames]
            if len(kf) != k:
                raise EditError(
                    f"{len(kf)} key frames for {k} key states; give one frame per state"
                )
            if any(v < 0 for v in kf) or any(b <= a for a, b in itertools.pairwise(kf)):
                raise EditError(
                    f"key frames must be non-negative and strictly increasing, got {kf}"
                )
            self.key_frames: list[int] | None = kf
        else:
            self.key_frames = None
        self.mode = mode
        self._handles: list[Any] = []
        self._per_frame: dict[tuple, torch.Tensor] = {}
        self._encoded: torch.Tensor | None = None  # text key states, by the bound pipeline

    @property
    def num_states(self) -> int:
        return len(self.key_states) if self.key_states is not None else self.embeddings.shape[0]  # type: ignore[union-attr]

    def params(self) -> dict[str, Any]:
        states: Any = self.key_states if self.key_states is not None else "<tensor>"
        return {"key_states": states, "key_frames": self.key_frames, "mode": self.mode}

    def target_params(self) -> dict[str, Any]:
        return {"steps": self.steps.to_json(), "t_min": self.t_min, "t_max": self.t_max}

    def weights(self, frames: int) -> np.ndarray:
        """``[frames, K]`` blend weights for a run of ``frames`` frames (validated)."""
        k = self.num_states
        if k > frames:
            raise EditError(f"{k} key states for {frames} frames: at most one key state per frame")
        key_frames = (
            self.key_frames if self.key_frames is not None else default_key_frames(k, frames)
        )
        if key_frames[-1] > frames - 1:
            raise EditError(f"key frame {key_frames[-1]} is beyond the last frame {frames - 1}")
        return frame_weights(key_frames, frames, self.mode)

    # ---- client protocol -----------------------------------------------------------------
    def bind(self, controller: Controller) -> None:
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        self.controller = controller
        if self.embeddings is None and not hasattr(controller.pipe, "encode_prompt"):
            raise EditError(
                "Synopsis with text key states needs a pipeline (to encode them); pass embeddings for a bare denoiser"
            )
        blocks = [m for m in controller.model.modules() if isinstance(m, Transformer2DModel)]
        if not blocks:
            raise EditError(
                f"{type(controller.model).__name__} has no spatial cross-attention blocks for per-frame text"
            )
        self._handles = [b.register_forward_pre_hook(self._swap, with_kwargs=True) for b in blocks]

    def release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._per_frame.clear()
        self._encoded = None  # text key states are encoded anew by the next pipeline

    def wants(self, site, ctx) -> bool:
        return False  # acts on the text context, not on temporal attention

    def _key_embeddings(self, device, dtype) -> torch.Tensor:
        if self.embeddings is not None:
            return self.embeddings.to(device=device, dtype=dtype)
        if self._encoded is None:
            pipe = self.controller.pipe
            if pipe is None:
                raise EditError("Synopsis needs a pipeline (it encodes the key-state prompts)")
            with torch.no_grad():
                self._encoded = pipe.encode_prompt(self.key_states, device, 1, False)[0]
        return self._encoded.to(device=device, dtype=dtype)

    def per_frame(self, frames: int, device, dtype) -> torch.Tensor:
        """``[frames, L, D]``: the blended text embedding of every frame."""
        key = (frames, str(device), dtype)
        out = self._per_frame.get(key)
        if out is None:
            e = self._key_embeddings(device, dtype)
            w = self.weights(frames)
            rows = []
            for f in range(frames):
                (nonzero,) = np.nonzero(w[f])
                i = int(nonzero[0])
                if len(nonzero) == 1:
                    rows.append(e[i])  # on (or outside) a key frame, or "same" mode
                else:  # between key states i and i + 1 with weight b on i + 1
                    # e_i + b (e_j - e_i): exactly e_i when neighbouring states are equal
                    rows.append(e[i] + float(w[f, i + 1]) * (e[i + 1] - e[i]))
            out = self._per_frame[key] = torch.stack(rows)
        return out

    def _swap(self, module, args, kwargs):
        ctx: CallContext | None = self.controller.ctx
        context = kwargs.get("encoder_hidden_states")
        if ctx is None or context is None or not self.active(ctx):
            return None
        frames, batch = ctx.frames, ctx.batch
        if context.shape[0] == batch:  # (B, L, D) shared over frames: expand to (B*F, L, D)
            context = context.repeat_interleave(frames, dim=0)
        elif context.shape[0] != batch * frames:
            raise EditError(
                f"Synopsis: unexpected text context batch {context.shape[0]} (batch {batch}, {frames} frames)"
            )
        per_frame = self.per_frame(frames, context.device, context.dtype)
        if per_frame.shape[1:] != context.shape[1:]:
            raise EditError(
                f"Synopsis embeddings {tuple(per_frame.shape[1:])} do not match the model's text context {tuple(context.shape[1:])}"
            )
        halves = ctx.halves()  # (a call may hold one half: separate-call guidance, caches)
        if "cond" not in halves:
            return None  # the unconditional half keeps its own text
        n = batch // len(halves)
        view = context.view(len(halves), n, frames, *context.shape[1:]).clone()
        view[halves.index("cond")] = per_frame  # the conditional half; uncond stays as it was
        return args, {
            **kwargs,
            "encoder_hidden_states": view.view(batch * frames, *context.shape[1:]),
        }
