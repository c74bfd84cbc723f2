"""Helpers the tests import (fixtures live in conftest.py): the tiny pipelines' CPU settings,
one seeded generation, a hook that captures a module's input or output, and a temporal
layer's input and probabilities in a one-step generation, and Wan pipelines of another class
around the tiny Wan's components."""

from __future__ import annotations

import contextlib

import torch

# CPU tests: small latents (8x6), 2 steps, 8 frames
GEN = dict(
    prompt="a polar bear playing drums", num_frames=8, height=64, width=48, num_inference_steps=2
)


def generate(pipe, seed: int = 0, **overrides) -> torch.Tensor:
    """One seeded run of a tiny pipeline; returns the decoded frames tensor."""
    kw = {**GEN, **overrides}
    out = pipe(**kw, generator=torch.Generator().manual_seed(seed), output_type="pt")
    return out.frames


def capture(seen: dict, key: str, arg: bool = False):
    """A forward hook (or pre-hook with ``arg=True``) storing a detached copy; returns None."""

    def hook(module, args, output=None):
        value = args[0] if arg else output
        seen.setdefault(key, value.detach().clone())

    return hook


def layer_input_and_probs(pipe, attn, context=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded one-step generation inside ``context`` (e.g. ``attnlab.edit(pipe, ...)``;
    None: none): the temporal layer ``attn``'s first input (its pre-hook) and the first
    output of its ``hook_probs`` point."""
    got: dict = {}
    with context if context is not None else contextlib.nullcontext():
        h1 = attn.register_forward_pre_hook(capture(got, "x", arg=True))
        h2 = attn.hook_probs.register_forward_hook(capture(got, "p"))
        try:
            generate(pipe, num_inference_steps=1)
        finally:
            h1.remove()
            h2.remove()
    return got["x"], got["p"]


def wan_pipeline_as(cls, **extra):
    """A diffusers Wan pipeline class ``cls`` (``WanPipeline`` with a ``transformer_2``,
    ``WanVideoToVideoPipeline``, ``WanImageToVideoPipeline``, ...) around the components of
    ``attnlab.models.tiny_dit.wan_pipeline()``, with ``extra`` constructor arguments; no
    progress bar."""
    from attnlab.models.tiny_dit import wan_pipeline

    base = wan_pipeline()
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    pipe = cls(**{k: getattr(base, k) for k in parts}, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def sdpa_witness(model, names):
    """Every call of ``torch.nn.functional.scaled_dot_product_attention`` made inside the modules
    ``names`` of ``model``, as (module name, q, k, mask, scale), q and k in float64."""
    F = torch.nn.functional
    original, seen, current = F.scaled_dot_product_attention, [], [None]

    def witness(
        query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw
    ):
        if current[0] is not None:
            seen.append((current[0], query.double(), key.double(), attn_mask, scale))
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                        is_causal=is_causal, scale=scale, **kw)  # fmt: skip

    mods = dict(model.named_modules())
    handles = []
    for name in names:
        handles.append(mods[name].register_forward_pre_hook(lambda m, a, n=name: current.__setitem__(0, n)))  # fmt: skip
        handles.append(mods[name].register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))  # fmt: skip
    F.scaled_dot_product_attention = witness
    try:
        yield seen
    finally:
        F.scaled_dot_product_attention = original
        for h in handles:
            h.remove()
