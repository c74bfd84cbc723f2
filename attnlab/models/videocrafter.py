"""VideoCrafter2 (AILab-CVC/VideoCrafter, lvdm) as diffusers components.

The lvdm ``UNetModel`` of ``configs/inference_t2v_512_v2.0.yaml`` is, layer for layer, the
ModelScope layout of diffusers' ``UNet3DConditionModel`` (ResBlocks followed by a temporal
convolution block, a linear-projection spatial transformer, a temporal transformer whose two
attentions are both self-attention over frames, an extra temporal transformer ``init_attn``
after the input convolution with 8 heads of 64 channels) plus **fps conditioning**: the frame
rate goes through the same sinusoidal embedding as the timestep and its own two-layer MLP
(``fps_embedding``), added to the time embedding. :class:`VideoCrafter2UNet` holds that MLP as
a real component (saved and loaded with the model) and takes ``fps`` in ``forward``.

Sampling as the authors' code (and VSTAR, which runs it) does: :class:`VideoCrafter2Scheduler`
is DDIM with lvdm's ``use_scale`` latent rescaling (``scale_a`` 1 -> ``scale_b`` 0.7 over the
first 400 training steps); :class:`VideoCrafter2Pipeline` defaults to 25 steps, eta 1.0,
guidance 12, 320 x 512, 16 frames, fps 28.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

# diffusers' loader finds a component's load method through these base classes *in the module
# named in model_index.json* (this one): keep them importable from here
from diffusers import (  # noqa: F401
    DDIMScheduler,
    ModelMixin,
    SchedulerMixin,
    TextToVideoSDPipeline,
    UNet3DConditionModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

DEFAULT_FPS = 28  # VSTAR's setting for VideoCrafter2
DEFAULT_HEIGHT, DEFAULT_WIDTH = 320, 512  # VideoCrafter2's (and VSTAR's) video size


class VideoCrafter2UNet(UNet3DConditionModel):
    """``UNet3DConditionModel`` plus lvdm's fps conditioning (``fps_embedding``).

    ``forward(..., fps=None)``: frames per second, a number or a ``[B]`` tensor (default: the
    pipeline's value while it runs, else ``config.default_fps``). ``encoder_hidden_states`` is
    ``[B, L, D]`` (repeated over frames, as lvdm does) or ``[B*F, L, D]`` (one text embedding
    per frame, e.g. for Video Synopsis Prompting).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        num_attention_heads: int | tuple[int] | None = None,
        time_cond_proj_dim: int | None = None,
        fps_cond: bool = True,
        default_fps: float = DEFAULT_FPS,
    ):
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        ch = block_out_channels[0]
        self.fps_embedding = TimestepEmbedding(ch, ch * 4) if fps_cond else None
        self._fps_override: Any = None

    @contextlib.contextmanager
    def fps_context(self, fps: float | torch.Tensor | None) -> Iterator[None]:
        """Use ``fps`` in every forward inside the block (pipelines call the UNet without it)."""
        old, self._fps_override = self._fps_override, fps
        try:
            yield
        finally:
            self._fps_override = old

    def _embedding(self, timestep, fps, batch: int, device, dtype) -> torch.Tensor:
        def as_batch(value):
            if not torch.is_tensor(value):
                value = torch.tensor([value], device=device)
            elif value.ndim == 0:
                value = value[None].to(device)
            return value.expand(batch)

        emb = self.time_embedding(self.time_proj(as_batch(timestep)).to(dtype=dtype))
        if self.fps_embedding is not None:
            if fps is None:
                fps = self._fps_override
            if fps is None:
                fps = self.config.default_fps
            emb = emb + self.fps_embedding(self.time_proj(as_batch(fps)).to(dtype=dtype))
        return emb

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        fps: float | torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """Noise prediction ``[B, C, F, H, W]`` (lvdm ``UNetModel.forward`` with ``fps``)."""
        b, _, frames = sample.shape[:3]
        up_factor = 2**self.num_upsamplers
        forward_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        if attention_mask is not None:
            attention_mask = (1 - attention_mask.to(sample.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)
        emb = self._embedding(timestep, fps, b, sample.device, self.dtype)
        emb = emb.repeat_interleave(frames, dim=0)
        context = encoder_hidden_states
        if context.shape[0] == b:
            context = context.repeat_interleave(frames, dim=0)
        elif context.shape[0] != b * frames:
            raise ValueError(
                f"text context batch {context.shape[0]}: expected {b} (one per video) or "
                f"{b * frames} (one per frame)"
            )
        x = sample.permute(0, 2, 1, 3, 4).reshape(b * frames, *sample.shape[1:2], *sample.shape[3:])
        x = self.conv_in(x)
        x = self.transformer_in(
            x,
            num_frames=frames,
            cross_attention_kwargs=cross_attention_kwargs,
            return_dict=False,
        )[0]
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(
                    hidden_states=x,
                    temb=emb,
                    encoder_hidden_states=context,
                    attention_mask=attention_mask,
                    num_frames=frames,
                    cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                x, res = block(hidden_states=x, temb=emb, num_frames=frames)
            skips += res
        if down_block_additional_residuals is not None:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))
        x = self.mid_block(
            x,
            emb,
            encoder_hidden_states=context,
            attention_mask=attention_mask,
            num_frames=frames,
            cross_attention_kwargs=cross_attention_kwargs,
        )
        if mid_block_additional_residual is not None:
            x = x + mid_block_additional_residual
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if forward_size and i < len(self.up_blocks) - 1 else None
            if getattr(block, "has_cross_attention", False):
                x = block(
                    hidden_states=x,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=context,
                    upsample_size=size,
                    attention_mask=attention_mask,
                    num_frames=frames,
                    cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                x = block(
                    hidden_states=x,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    upsample_size=size,
                    num_frames=frames,
                )
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        x = x.reshape(b, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        if not return_dict:
            return (x,)
        return UNet3DConditionOutput(sample=x)


def latent_scale(t: np.ndarray | int, scale_a: float, scale_b: float, mid_step: int) -> np.ndarray:
    """lvdm's ``scale_arr[t]``: ``linspace(scale_a, scale_b, mid_step)`` for the first
    ``mid_step`` timesteps, ``scale_b`` after (``ddpm3d.LatentDiffusion``, ``use_scale``)."""
    arr = np.concatenate([np.linspace(scale_a, scale_b, mid_step), np.full(1, scale_b)])
    return arr[np.minimum(np.asarray(t), mid_step)].astype(np.float32)


class VideoCrafter2Scheduler(DDIMScheduler):
    """DDIM as lvdm's ``DDIMSampler`` runs VideoCrafter2 (``use_scale: true``, ``scale_b: 0.7``).

    The model was trained on latents scaled by ``s(t)`` (:func:`latent_scale`): forward process
    ``x_t = sqrt(a_t) s(t) x_0 + sqrt(1 - a_t) eps``; a DDIM step divides the predicted ``x_0``
    by ``s(t)`` and re-noises it with ``s(t_prev)`` (``lvdm/models/samplers/ddim.py``,
    ``p_sample_ddim``). Timesteps as lvdm's uniform DDIM discretisation, ``range(0, 1000, 1000
    // N) + 1`` reversed (961, 921, ..., 1 for 25 steps; for a count that does not divide 1000
    one step more, as lvdm runs it: 31 from 991 for 30), ``alphas_cumprod[0]`` after the last
    step;
    betas and ``alphas_cumprod`` computed in float64 and stored as float32, as lvdm registers
    them. With ``use_scale=False`` the step is diffusers' DDIM.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Any = None,
        clip_sample: bool = False,
        set_alpha_to_one: bool = False,
        steps_offset: int = 1,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        use_scale: bool = True,
        scale_a: float = 1.0,
        scale_b: float = 0.7,
        mid_step: int = 400,
    ):
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=steps_offset,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        if (
            trained_betas is None
            and beta_schedule == "scaled_linear"
            and not rescale_betas_zero_snr
        ):
            # lvdm's make_beta_schedule("linear"): float64 schedule, stored as float32
            betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
            self.betas = torch.tensor(betas, dtype=torch.float32)
            self.alphas = 1.0 - self.betas
            self.alphas_cumprod = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)
            self.final_alpha_cumprod = (
                torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
            )

    def set_timesteps(  # type: ignore[override]
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        """lvdm's ``make_ddim_timesteps("uniform", N, T)``: ``range(0, T, T // N)`` plus the
        offset, reversed (its length check is commented out there: ``T // N`` does not divide
        ``T`` gives more than ``N`` steps). Other spacings: diffusers' own."""
        if self.config.timestep_spacing != "leading":
            return super().set_timesteps(num_inference_steps, device)
        T = self.config.num_train_timesteps
        if not 1 <= int(num_inference_steps) <= T:
            raise ValueError(f"num_inference_steps must be in 1..{T}, got {num_inference_steps}")
        ts = np.arange(0, T, T // int(num_inference_steps))[::-1] + self.config.steps_offset
        if ts[0] >= T:  # lvdm indexes its schedule there and fails too
            raise ValueError(
                f"num_inference_steps {num_inference_steps}: lvdm's uniform DDIM timesteps "
                f"range(0, {T}, {T // int(num_inference_steps)}) + {self.config.steps_offset} "
                f"reach t = {ts[0]}, past the {T}-step schedule; take another count (25 and 50 "
                "are VideoCrafter2's)"
            )
        self.num_inference_steps = int(num_inference_steps)  # the step's stride is T // N
        self.timesteps = torch.from_numpy(ts.astype(np.int64)).to(device)
        return None

    def latent_scale_at(self, t: int) -> float:
        """``s(t)`` (1.0 with ``use_scale=False``)."""
        if not self.config.use_scale:
            return 1.0
        c = self.config
        return float(latent_scale(max(int(t), 0), c.scale_a, c.scale_b, c.mid_step))

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        if not self.config.use_scale:
            return super().step(
                model_output,
                timestep,
                sample,
                eta,
                use_clipped_model_output,
                generator,
                variance_noise,
                return_dict,
            )
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self.config.prediction_type != "epsilon":
            raise ValueError("the use_scale DDIM step is lvdm's eps-prediction step")
        t = int(timestep)
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        eps = model_output
        x0 = (sample - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        x0 = x0 / self.latent_scale_at(t)
        s_prev = self.latent_scale_at(max(prev_t, 0))
        prev = a_prev**0.5 * s_prev * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape,
                    generator=generator,
                    device=model_output.device,
                    dtype=model_output.dtype,
                )
            prev = prev + sigma * variance_noise
        prev = prev.to(sample.dtype)
        if not return_dict:
            return (prev, x0)
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def add_noise(  # type: ignore[override]
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """lvdm ``q_sample``: ``sqrt(a_t) s(t) x_0 + sqrt(1 - a_t) noise``."""
        if not self.config.use_scale:
            return super().add_noise(original_samples, noise, timesteps)
        t = torch.as_tensor(timesteps).flatten().long().cpu()
        c = self.config
        s = torch.as_tensor(latent_scale(t.numpy(), c.scale_a, c.scale_b, c.mid_step))
        s = s.to(original_samples.device, original_samples.dtype)
        while s.ndim < original_samples.ndim:
            s = s[..., None]
        return super().add_noise(original_samples * s, noise, timesteps)


def openclip_text(text: str | list[str] | None) -> str | list[str] | None:
    """A prompt as ``open_clip.tokenize`` cleans it before its BPE (``basic_clean`` then
    ``whitespace_clean``: ftfy's ``fix_text``, HTML entities unescaped twice, runs of
    whitespace as one space); lvdm's text encoder tokenizes that way, a ``CLIPTokenizer`` does
    not (typographic quotes and ``&amp;`` give other tokens)."""
    from open_clip.tokenizer import basic_clean, whitespace_clean

    if text is None:
        return None
    if isinstance(text, str):
        return whitespace_clean(basic_clean(text))
    return [whitespace_clean(basic_clean(t)) for t in text]


class VideoCrafter2Pipeline(TextToVideoSDPipeline):
    """``TextToVideoSDPipeline`` with VideoCrafter2's fps input and the sampling defaults of the
    authors' and VSTAR's code: 25 DDIM steps, eta 1.0, guidance 12, 320 x 512, 16 frames, fps 28.
    ``height`` / ``width`` None mean 320 / 512 (the converted UNet's config has no
    ``sample_size`` to derive a size from). Prompts are cleaned as open_clip's tokenizer cleans
    them (:func:`openclip_text`) before the folder's ``CLIPTokenizer`` sees them.
    """

    def encode_prompt(  # type: ignore[override]
        self,
        prompt: Any,
        device: Any,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: Any = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> Any:
        return super().encode_prompt(
            openclip_text(prompt),
            device,
            num_images_per_prompt,
            do_classifier_free_guidance,
            negative_prompt=openclip_text(negative_prompt),
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        prompt: str | list[str] | None = None,
        height: int | None = DEFAULT_HEIGHT,
        width: int | None = DEFAULT_WIDTH,
        num_frames: int = 16,
        num_inference_steps: int = 25,
        guidance_scale: float = 12.0,
        negative_prompt: str | list[str] | None = None,
        eta: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str | None = "np",
        return_dict: bool = True,
        callback: Any = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        fps: float = DEFAULT_FPS,
    ):
        with self.unet.fps_context(fps):
            return super().__call__(
                prompt=prompt,
                height=DEFAULT_HEIGHT if height is None else height,
                width=DEFAULT_WIDTH if width is None else width,
                num_frames=num_frames,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                negative_prompt=negative_prompt,
                eta=eta,
                generator=generator,
                latents=latents,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                output_type=output_type,
                return_dict=return_dict,
                callback=callback,
                callback_steps=callback_steps,
                cross_attention_kwargs=cross_attention_kwargs,
                clip_skip=clip_skip,
            )
