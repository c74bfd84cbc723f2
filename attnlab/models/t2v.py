"""What attnlab's ``TextToVideoSDPipeline`` subclasses share (the organisms' pipeline,
:class:`~attnlab.models.lavie.LaViePipeline`)."""

from __future__ import annotations

from typing import Any


def init_text_to_video(pipe: Any, **components: Any) -> None:
    """``TextToVideoSDPipeline.__init__`` for ``pipe`` with ``components`` (vae, text_encoder,
    tokenizer, unet, scheduler), through ``DiffusionPipeline``'s own ``__init__``: without the
    deprecation notice that ``TextToVideoSDPipeline``'s mixin prints for every construction."""
    from diffusers import DiffusionPipeline
    from diffusers.video_processor import VideoProcessor

    DiffusionPipeline.__init__(pipe)
    pipe.register_modules(**components)
    pipe.vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    pipe.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=pipe.vae_scale_factor)
