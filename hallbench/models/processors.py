"""Image-and-text processors for the two supported families that do not need torchvision.

transformers 5.x ships ``Qwen3VLProcessor`` (which always builds a video processor) and
``PixtralProcessor`` (whose module imports a torchvision-only helper). Neither can be constructed
on a machine without torchvision, and there is no CPU build of torchvision on the CPU-only machines
hallbench must run on. hallbench only evaluates and trains on images, so these two subclasses drop
the video side and keep everything else of the real processors: the same image processors (their
PIL backends), the same placeholder expansion, the same outputs (``mm_token_type_ids`` for Qwen3-VL,
``image_sizes`` for Pixtral/Mistral3).
"""

from __future__ import annotations

from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin


class Qwen3VLImageProcessorOnly(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.vision_start_token = getattr(tokenizer, "vision_start_token", None) or "<|vision_start|>"
        self.vision_end_token = getattr(tokenizer, "vision_end_token", None) or "<|vision_end|>"
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)


class PixtralImageProcessorOnly(ProcessorMixin):
    """The logic of transformers' ``PixtralProcessor`` (image placeholder expansion) without its torchvision import.

    An image of ``H x W`` pixels becomes ``H / (patch * merge)`` rows of ``[IMG]`` tokens, each row
    closed by ``[IMG_BREAK]`` and the last by ``[IMG_END]``, exactly as the real processor does.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size: int = 16,
        spatial_merge_size: int = 1,
        chat_template=None,
        image_token: str = "[IMG]",
        image_break_token: str = "[IMG_BREAK]",
        image_end_token: str = "[IMG_END]",
        **kwargs,
    ):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.image_token = image_token
        self.image_break_token = image_break_token
        self.image_end_token = image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(image_end_token)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_token_id, self.image_break_token_id, self.image_end_token_id]

    def _process_images(self, images, **images_kwargs):
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        step = self.patch_size * self.spatial_merge_size
        height, width = image_inputs["image_sizes"][image_idx]
        row = [self.image_token] * (width // step) + [self.image_break_token]
        tokens = row * (height // step)
        tokens[-1] = self.image_end_token
        return "".join(tokens)

    @property
    def model_input_names(self):
        return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]
