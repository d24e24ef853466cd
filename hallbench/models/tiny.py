"""Tiny real VLMs for tests and the demo, built in code with no download of any kind.

One builder per family (``Family.tiny_builder`` names it; the registry's tiny entries say which
family): ``tiny-qwen`` is a ``Qwen3VLForConditionalGeneration``, ``tiny-ministral`` a
``Mistral3ForConditionalGeneration`` (text model ``ministral3``, Pixtral vision tower) and
``tiny-llava`` a ``LlavaForConditionalGeneration`` (CLIP vision tower, Llama text model): the real
transformers classes, shrunk to a few layers, with random weights from a fixed seed. Their
processors are transformers' own ``Qwen3VLProcessor`` (Qwen2-VL image processor, Qwen3-VL video
processor), ``PixtralProcessor`` and ``LlavaProcessor`` (CLIP image processor), around a
word-level ``tokenizers`` tokenizer over the shapes-world vocabulary, with a short chat template in
each family's format (the real templates, with their default system prompts, are in the
checkpoint-shaped fixtures of ``hallbench.models.checkpoint_shapes``). They save with
``save_pretrained``, reload with ``from_pretrained`` and generate exactly like the full-size
checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hallbench.data.shapes import vocabulary
from hallbench.errors import HallbenchError

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",  # pad
    "<|im_start|>",
    "<|im_end|>",  # eos
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
MISTRAL_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
LLAVA_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<image>"]
UNK = "[UNK]"

# Both templates render string content or a list of {"type": "image"} / {"type": "text"} parts,
# mirroring the official templates' structure for single-turn and multi-turn chats.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST]{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}[IMG]{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}[/INST]{% elif message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
# llava-hf's format ("USER: <image>\n{text} ASSISTANT:"; the images first, then the text): like the
# checkpoint's template it renders no bos (the tokenizer adds it) and no eos after an answer (the
# training encoder appends it, hallbench.train.data); system turns are rendered without a role.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny model. The defaults train on 2 CPU cores in minutes."""

    hidden_size: int = 128
    """Width of the text decoder."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads (head_dim = hidden_size / num_heads)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as in both full-size families)."""
    intermediate_size: int = 256
    """MLP width of the decoder."""
    vision_hidden_size: int = 64
    """Width of the vision tower."""
    vision_layers: int = 2
    """Vision tower depth."""
    image_size: int = 64
    """Images are resized to this square size: 64 px = 4x4 patches of 16 = 4 merged visual tokens."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise HallbenchError("tiny model: hidden_size must divide by num_heads and num_heads by num_kv_heads")
        if self.image_size % 32:
            raise HallbenchError(f"tiny model: image_size must be a multiple of 32 (patch 16 x merge 2), got {self.image_size}")
        if (self.hidden_size // self.num_heads) % 8:
            raise HallbenchError("tiny model: head_dim (hidden_size / num_heads) must be a multiple of 8")


def build_tokenizer(special_tokens: list[str], *, pad: str, eos: str, bos: str | None = None, add_bos: bool = False) -> Any:
    """A word-level fast tokenizer over the shapes-world vocabulary with the family's special tokens.

    ``add_bos``: encoding with special tokens puts ``bos`` first, as Llama tokenizers do (for a chat
    template that does not render it).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = [*special_tokens, UNK, *vocabulary()]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    # Same split as hallbench.data.shapes.split_words: words, and runs of punctuation.
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # Joins words with spaces and removes the space before punctuation ("star ." -> "star."). The
    # continuation prefix is one no token has: with the usual "##", the token "###" (the VQA
    # final-answer marker) would decode as a glued "#".
    backend.decoder = decoders.WordPiece(prefix="\u2060\u2060", cleanup=True)
    if add_bos:
        assert bos is not None
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    kwargs = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=pad,
        eos_token=eos,
        additional_special_tokens=[t for t in special_tokens if t not in (pad, eos, bos)],
        padding_side="left",
        **kwargs,
    )


def build_tiny_qwen(size: TinySize = TinySize(), seed: int = 0) -> tuple[Any, Any]:
    """A random-init ``Qwen3VLForConditionalGeneration`` and its processor."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = build_tokenizer(QWEN_SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>")
    pixels = size.image_size * size.image_size
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2, size={"shortest_edge": pixels, "longest_edge": pixels},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Qwen3VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=QWEN_CHAT_TEMPLATE
    )
    head_dim = size.hidden_size // size.num_heads
    half = head_dim // 2  # multimodal RoPE splits the rotary half-dimension into (t, h, w) sections
    mrope_section = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]
    config = Qwen3VLConfig(
        text_config={
            **_decoder_dims(size, tokenizer, size.num_kv_heads),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section, "mrope_interleaved": True},
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": size.vision_layers,
            "hidden_size": size.vision_hidden_size,
            "intermediate_size": 2 * size.vision_hidden_size,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": size.hidden_size,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        vision_start_token_id=processor.vision_start_token_id,
        vision_end_token_id=processor.vision_end_token_id,
        tie_word_embeddings=True,
    )
    return _instantiate(Qwen3VLForConditionalGeneration, config, tokenizer, seed), processor


def build_tiny_ministral(size: TinySize = TinySize(), seed: int = 0) -> tuple[Any, Any]:
    """A random-init ``Mistral3ForConditionalGeneration`` (Ministral-3 text, Pixtral vision) and its processor."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    tokenizer = build_tokenizer(MISTRAL_SPECIAL_TOKENS, pad="<pad>", eos="</s>", bos="<s>")
    image_processor = PixtralImageProcessor(
        size={"longest_edge": size.image_size}, patch_size={"height": 16, "width": 16},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    processor = PixtralProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=16, spatial_merge_size=2, chat_template=MISTRAL_CHAT_TEMPLATE
    )
    config = Mistral3Config(
        text_config={
            "model_type": "ministral3",
            **_decoder_dims(size, tokenizer, size.num_kv_heads),
            # The full-size Ministral-3 uses YaRN with Llama-4 attention scaling; keep the same code path.
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 2.0,
                "original_max_position_embeddings": 512,
                "llama_4_scaling_beta": 0.1,
            },  # fmt: skip
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": True,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": size.vision_hidden_size,
            "intermediate_size": 2 * size.vision_hidden_size,
            "num_hidden_layers": size.vision_layers,
            "num_attention_heads": 2,
            "head_dim": size.vision_hidden_size // 2,
            "image_size": 512,
            "patch_size": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        image_token_index=processor.image_token_id,
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    return _instantiate(Mistral3ForConditionalGeneration, config, tokenizer, seed), processor


def build_tiny_llava(size: TinySize = TinySize(), seed: int = 0) -> tuple[Any, Any]:
    """A random-init ``LlavaForConditionalGeneration`` (CLIP vision tower, Llama text model) and its
    ``LlavaProcessor`` with a ``CLIPImageProcessor``, laid out as llava-hf/llava-1.5-7b-hf."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    tokenizer = build_tokenizer(LLAVA_SPECIAL_TOKENS, pad="<pad>", eos="</s>", bos="<s>", add_bos=True)
    # Patches of 32 px: a 64-px image gives the same 4 visual tokens as the other tiny families'
    # 16-px patches merged 2x2 (LLaVA merges nothing: one token per patch).
    patch = 32
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size.image_size}, crop_size={"height": size.image_size, "width": size.image_size},
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
    )  # fmt: skip
    # As the checkpoint's processor_config.json: CLIP's CLS token is counted, then dropped ("default").
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE,
    )  # fmt: skip
    config = LlavaConfig(
        text_config={
            "model_type": "llama",
            **_decoder_dims(size, tokenizer, size.num_heads),  # Vicuna-7B (LLaVA-1.5's decoder) has no grouped-query attention
            "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": size.vision_hidden_size,
            "intermediate_size": 2 * size.vision_hidden_size,
            "num_hidden_layers": size.vision_layers,
            "num_attention_heads": 2,
            "image_size": size.image_size,
            "patch_size": patch,
            "projection_dim": size.vision_hidden_size,
        },
        image_token_index=processor.image_token_id,
        # The checkpoint's feature selection: the second-to-last vision layer, without the CLS token.
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    return _instantiate(LlavaForConditionalGeneration, config, tokenizer, seed), processor


def _decoder_dims(size: TinySize, tokenizer: Any, num_kv_heads: int) -> dict[str, int]:
    """The text decoder's sizes, the same in every family's tiny model (only the KV heads differ)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": size.hidden_size,
        "intermediate_size": size.intermediate_size,
        "num_hidden_layers": size.num_layers,
        "num_attention_heads": size.num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": size.hidden_size // size.num_heads,
        "max_position_embeddings": 1024,
    }


def _instantiate(model_class: Any, config: Any, tokenizer: Any, seed: int) -> Any:
    """``model_class(config)`` with weights drawn from ``seed`` (the global RNG is left as it was), in eval mode."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    _set_generation_ids(model, tokenizer)
    return model.eval()


def _set_generation_ids(model: Any, tokenizer: Any) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        model.generation_config.bos_token_id = tokenizer.bos_token_id


@contextmanager
def _outside_zero3() -> Iterator[None]:
    """Build a tiny model whole on every rank, outside ZeRO-3's ``zero.Init``.

    Under ZeRO-3 transformers enters ``zero.Init`` for the ``from_config`` calls inside a model's
    constructor (the vision tower), which partitions half a model while it is being initialised;
    a tiny model fits every rank, and DeepSpeed partitions it when the engine starts. transformers
    decides by its registered config (``is_deepspeed_zero3_enabled``), which is hidden meanwhile.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def tiny_names() -> list[str]:
    """Registry names of the models built in code (``tiny-qwen``, ...)."""
    from hallbench.models.registry import MODEL_REGISTRY

    return [spec.name for spec in MODEL_REGISTRY.values() if spec.tiny]


def build_tiny(name: str, size: TinySize = TinySize(), seed: int = 0) -> tuple[Any, Any]:
    """Build a tiny registry model (model in eval mode, processor) with its family's ``tiny_builder``."""
    from hallbench.models.registry import MODEL_REGISTRY

    spec = MODEL_REGISTRY.get(name)
    if spec is None or not spec.tiny:
        raise HallbenchError(f"unknown tiny model '{name}'; known: {', '.join(tiny_names())}")
    return build_family_tiny(spec.family, size, seed)


def build_family_tiny(family: str, size: TinySize = TinySize(), seed: int = 0) -> tuple[Any, Any]:
    """The tiny model and processor of a family (``Family.tiny_builder``, a function of this module)."""
    from hallbench.models.families import get_family

    name = get_family(family).tiny_builder
    builder = globals().get(name)
    if not callable(builder):
        raise HallbenchError(f"family {family}: its tiny_builder '{name}' is not a function of hallbench.models.tiny")
    with _outside_zero3():
        return builder(size, seed)
