"""A compiled denoiser is recorded: ``pipe.unet = torch.compile(pipe.unet)`` (an
``OptimizedModule`` around the UNet) and ``pipe.unet.compile()`` (compiled in place). While
attnlab is attached the module runs eagerly (its compiled graph was traced through the model's
own processors, not attnlab's); after the block its compiled entry point is back in place.

Tiny random-weight instance of diffusers' own ``AnimateDiffPipeline``, compiled by torch's own
``torch.compile`` with a backend that counts the graphs it is given and runs them as traced (no
C++ compiler: inductor takes minutes on CPU). References: the same recordings of the
uncompiled pipeline and denoiser.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D


def _gen(pipe) -> torch.Tensor:
    return pipe(
        prompt="a polar bear playing drums", num_frames=8, height=64, width=48,
        num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip


def _call(denoiser) -> torch.Tensor:
    """One bare denoiser call (8 frames, latent 8 x 6)."""
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 8, 8, 6, generator=g)
    text = torch.randn(8, 77, 32, generator=g)
    return denoiser(sample, 500, encoder_hidden_states=text).sample


def _maps(rec) -> np.ndarray:
    ds = rec.to_xarray()
    assert ds[D.RAN].values.all()
    return ds[D.PROBS].values


def _recorded_and_edited(
    pipe, denoiser
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray, torch.Tensor]:
    """The pipeline recorded (output, maps), ``denoiser`` recorded alone (output, maps) and
    the pipeline edited (identity at level 0: output)."""
    with attnlab.record(pipe, levels=[0]) as rec:
        video = _gen(pipe)
    with attnlab.record(denoiser, levels=[0]) as bare:
        out = _call(denoiser)
    with attnlab.edit(pipe, attnlab.Replace("identity", levels=[0])):
        edited = _gen(pipe)
    return video, _maps(rec), out, _maps(bare), edited


@pytest.mark.parametrize("how", ["torch.compile", "in place", "a block in place"])
def test_a_compiled_denoiser_is_recorded_eagerly_and_left_compiled(how):
    """Fails without the support: ``torch.compile(unet)`` was refused as a model without
    temporal attention ("OptimizedModule has no temporal attention that attnlab knows of"); a
    UNet or block compiled in place had dynamo trace attnlab's processors and recorders
    (dozens of graphs, graph breaks, its recompile limit; the backend is called)."""
    from attnlab.models.tiny import build_tiny

    pipe = build_tiny("tiny-animatediff")
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    processors = {name: m.processor for name, m in unet.named_modules() if hasattr(m, "processor")}
    reference = _recorded_and_edited(pipe, unet)

    graphs: list = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward  # the traced graph, run as traced

    if how == "torch.compile":
        compiled = pipe.unet = torch.compile(unet, backend=backend)
        saved = ("forward", vars(compiled)["forward"])
    else:  # Module.compile; diffusers' regional compilation compiles blocks so
        block = unet if how == "in place" else unet.down_blocks[0]
        block.compile(backend=backend)
        compiled = unet
        saved = ("_compiled_call_impl", vars(block)["_compiled_call_impl"])

    got = _recorded_and_edited(pipe, compiled)
    assert not graphs  # nothing was traced: the module ran eagerly under attnlab
    # pipeline output, maps; bare denoiser output, maps; edited output: as uncompiled
    for have, want in zip(got, reference):
        if torch.is_tensor(want):
            torch.testing.assert_close(have, want, rtol=0, atol=1e-6)
        else:
            np.testing.assert_allclose(have, want, rtol=0, atol=1e-6)

    # nothing of attnlab is left: the compiled entry point, the processors, no patches
    assert not attnlab.is_instrumented(pipe) and not attnlab.is_instrumented(compiled)
    assert not attnlab.active_patches()
    assert pipe.unet is compiled
    assert vars(compiled if how == "torch.compile" else block)[saved[0]] is saved[1]
    assert all(m.processor is processors[n] for n, m in unet.named_modules() if n in processors)
    assert not any(hasattr(m, "hook_probs") for m in unet.modules())


def test_a_torch_compile_wrapper_inside_the_denoiser_is_refused_with_the_reason():
    """``torch.compile`` on a block inside the UNet (an ``OptimizedModule`` in its module tree)
    moves that block's layers to paths with ``_orig_mod``: refused, saying what to compile
    instead. Fails without the check: recorded with that block's layers silently left out of
    the site table."""
    from attnlab.core.refusals import UnsupportedConfigurationError
    from attnlab.core.sites import UnsupportedModelError
    from attnlab.models.tiny import build_tiny

    pipe = build_tiny("tiny-animatediff")
    pipe.unet.down_blocks[0] = torch.compile(pipe.unet.down_blocks[0])
    why = (
        r"UNetMotionModel: torch.compile wraps down_blocks.0 inside it \(an OptimizedModule; 1 "
        r"in all\).*compile the denoiser as a whole \(pipe.unet = torch.compile\(pipe.unet\), "
        r"or pipe.unet.compile\(\)\) or its blocks in place"
    )
    with pytest.raises(UnsupportedConfigurationError, match=why), attnlab.record(pipe):
        pass
    assert not attnlab.is_instrumented(pipe)
    with pytest.raises(UnsupportedModelError, match=why):
        attnlab.sites(pipe)
