"""HunyuanVideo inside diffusers' own ``HunyuanVideoPipeline``: a tiny random-weight instance
(the tiny transformer of ``attnlab.models.tiny_dit``, diffusers' ``AutoencoderKLHunyuanVideo``,
transformers' ``LlamaModel`` and ``CLIPTextModel`` as the two text encoders, the offline CLIP
tokenizer for both) recorded end to end, with true CFG (``true_cfg_scale`` and a negative
prompt: the pipeline calls the transformer once per half, inside ``cache_context("cond")`` and
``cache_context("uncond")``).

References: a wrapper around torch's SDPA (an independent witness) captures the q, k and mask
each joint layer passes at each transformer call; the maps and text mass are recomputed from
them with the float64 full softmax; the untouched pipeline's output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D

FRAMES, TOKENS = 3, 16  # 9 video frames -> 3 latent frames; 32 x 32 -> 4 x 4 latent, patch 1
TEXT = 8  # max_sequence_length: the CLIP tokens of the prompt, padded (masked) to 8
PROMPT, NEGATIVE = "a polar bear playing drums", "blurry"


@pytest.fixture(scope="module")
def pipe():
    from attnlab.models.tiny_dit import hunyuan_pipeline

    return hunyuan_pipeline()


def _gen(pipe, **kw):
    args = dict(
        prompt=PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=4.0, num_frames=9, height=32,
        width=32, num_inference_steps=2, max_sequence_length=TEXT, output_type="latent",
        prompt_template={"template": "{}", "crop_start": 0},  # the prompt's own tokens
    )  # fmt: skip
    args.update(kw)
    return pipe(**args, generator=torch.Generator().manual_seed(0)).frames


def _witness():
    """Wrap torch's SDPA: every call's (query, key, mask) in float64."""
    F = torch.nn.functional
    original, seen = F.scaled_dot_product_attention, []

    def witness(query, key, value, attn_mask=None, **other):  # diffusers passes keywords
        seen.append((query.double(), key.double(), attn_mask))
        return original(query, key, value, attn_mask=attn_mask, **other)

    return original, witness, seen


def test_hunyuanvideo_pipeline_recorded_end_to_end_with_both_cfg_halves(pipe):
    table = attnlab.sites(pipe)
    assert table.family.name == "hunyuanvideo" and table.temporal_compression == 4
    ref = _gen(pipe)
    with attnlab.record(pipe):
        pass
    assert torch.equal(_gen(pipe), ref)  # nothing selected ran: bit-identical
    with attnlab.joint_paths(record="exact"), attnlab.record(pipe, reduce="head"):
        assert torch.equal(_gen(pipe), ref)  # the exact path: the model's own calls
    F = torch.nn.functional
    original, witness, seen = _witness()
    F.scaled_dot_product_attention = witness
    try:
        with attnlab.record(pipe, reduce="head") as rec:  # the default (split) path
            out = _gen(pipe)
    finally:
        F.scaled_dot_product_attention = original
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)  # within 1e-6 per layer call
    ds = rec.to_xarray().isel(run=0)
    assert ds.sizes[D.STEP] == 2 and list(ds[D.CFG].values) == ["uncond", "cond"]
    assert ds[D.RAN].values.all() and list(ds[D.LAYER].values) == table.names
    assert ds[D.PROMPT].item() == PROMPT
    # the joint calls (not the token refiner's): 2 layers x 2 halves x 2 steps, in call order
    S = FRAMES * TOKENS + TEXT
    video = [s for s in seen if s[0].shape[2] == S]
    assert len(video) == 8
    for i, (q, k, mask) in enumerate(video[:4]):  # step 0: cond (layers 0, 1), then uncond
        half, layer = ("cond", "uncond")[i // 2], table.names[i % 2]
        L = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        P = L.masked_fill(~mask, float("-inf")).softmax(-1)[:, :, : FRAMES * TOKENS]
        m = P[..., : FRAMES * TOKENS].unflatten(-1, (FRAMES, TOKENS)).sum(-1)
        A = (m / m.sum(-1, keepdim=True)).unflatten(2, (FRAMES, TOKENS)).mean(3)
        text = (1 - m.sum(-1)).unflatten(2, (FRAMES, TOKENS)).mean(3)
        got = ds.isel(step=0).sel(layer=layer, cfg=half)
        probs = torch.from_numpy(got[D.PROBS].transpose(D.SAMPLE, D.HEAD, ...).values).double()
        torch.testing.assert_close(probs, A, atol=1e-5, rtol=0)
        tm = torch.from_numpy(got[D.TEXT_MASS].transpose(D.SAMPLE, D.HEAD, ...).values).double()
        torch.testing.assert_close(tm, text, atol=1e-5, rtol=0)
        assert not bool(mask[..., -1].any())  # the padded text keys are masked
    p = ds[D.PROBS].isel(step=0)
    assert float(np.abs(p.sel(cfg="cond") - p.sel(cfg="uncond")).max()) > 1e-4
    assert not attnlab.is_instrumented(pipe)
    assert torch.equal(_gen(pipe), ref)


def test_hunyuanvideo_pipeline_edit_on_the_cond_half_only(pipe):
    with attnlab.record(pipe, reduce="head") as plain:
        ref = _gen(pipe)
    with (
        attnlab.record(pipe, reduce="head") as rec,
        attnlab.edit(pipe, attnlab.Replace("identity", cfg="cond")),
    ):
        edited = _gen(pipe)
    p, q = rec.to_xarray()[D.PROBS].isel(step=0), plain.to_xarray()[D.PROBS].isel(step=0)
    # step 0: both halves see the same latents; only the cond call is edited
    np.testing.assert_allclose(p.sel(cfg="uncond"), q.sel(cfg="uncond"), atol=1e-6)
    eye = np.broadcast_to(np.eye(FRAMES), p.sel(cfg="cond").shape)
    np.testing.assert_allclose(p.sel(cfg="cond"), eye, atol=1e-6)
    assert (edited - ref).abs().max() > 1e-3
