"""Training data: LLaVA-format conversations -> token ids, labels and pixel values; a batching collator.

Invariants:
- Labels are -100 everywhere except on the assistant answers (their text and the template's end-of-turn
  tokens, so that the model learns to stop); the prompt, the image tokens and padding never count.
  An answer whose rendering holds no eos token gets one appended (a template with no end-of-turn
  marker), so every answer ends with a token that stops generation.
- Each sample is tokenised on its own, exactly as it would be alone, and the collator only pads
  (right side: ids with the pad id, labels with -100, attention mask 0) and concatenates image
  tensors. So a sample's per-token loss does not depend on the batch it is in (tested).
- Ids are built segment by segment: the prompt up to the first answer goes through the processor
  (which expands the image placeholders and returns pixel values), each answer and each later user
  turn through the tokenizer alone. The boundaries are the chat template's own turn markers, which
  is also where generation starts at evaluation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hallbench.data.formats import Conversation, load_image, read_conversations
from hallbench.errors import DataFormatError, HallbenchError
from hallbench.models.families import Family, conversation_messages

IGNORE_INDEX = -100


def _segments(processor: Any, conversation: Conversation) -> list[tuple[str, bool]]:
    """The rendered conversation as ``(text, is_answer)`` pieces whose concatenation is the whole text."""
    messages = conversation_messages(conversation.turns, len(conversation.images))
    if messages[0]["role"] != "user":
        raise DataFormatError(conversation.location, "conversations[0].from", "a first turn from 'human'", repr(messages[0]["role"]))
    full = processor.apply_chat_template(messages, tokenize=False)
    pieces: list[tuple[str, bool]] = []
    done = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = processor.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
        through = processor.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (through.startswith(before) and full.startswith(through) and len(before) >= done):
            raise HallbenchError(
                f"{conversation.location}: the chat template does not render a conversation as a growing prefix "
                "(hallbench needs this to find the answers it trains on)"
            )
        if len(before) > done:
            pieces.append((full[done : len(before)], False))
        pieces.append((full[len(before) : len(through)], True))
        done = len(through)
    if done < len(full):
        pieces.append((full[done:], False))
    return pieces


@dataclass
class Encoded:
    """One tokenised sample: 1-D ``input_ids``/``labels`` and the family's image tensors."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    images: dict[str, torch.Tensor]
    """The family's ``image_inputs`` (``pixel_values`` and the per-image sizes or grids its forward needs)."""
    mm_token_type_ids: torch.Tensor | None = None
    """Per-token modality types (0 text, 1 image, ...) when the family's forward takes them (``extra_inputs``)."""
    image_key: int = -1
    """Identity of the sample's image(s) (:func:`image_key`): L_ctr never uses a sample's own image as its negative."""


def image_key(names: list[str]) -> int:
    """A stable 56-bit id of a sample's image file names (the same in every process and run)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b("\0".join(names).encode("utf-8"), digest_size=7).digest(), "big")


def encode_conversation(processor: Any, family: Family, conversation: Conversation, images: list[Any], max_length: int) -> Encoded:
    """Tokenise one conversation with its images; labels only on the answers.

    Raises:
        HallbenchError: the sample is longer than ``max_length`` tokens (image tokens included); it
            is never truncated, since a cut could drop image tokens or the whole answer.
    """
    tokenizer = processor.tokenizer
    ids: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    mm_types: list[torch.Tensor] = []
    image_inputs: dict[str, torch.Tensor] = {}
    first = True
    for text, is_answer in _segments(processor, conversation):
        if first:
            if is_answer:
                raise HallbenchError(f"{conversation.location}: the rendered conversation starts with an answer")
            out = processor(text=[text], images=images or None, return_tensors="pt")
            piece = out["input_ids"][0]
            image_inputs = {k: out[k] for k in family.image_inputs if k in out}
            if "mm_token_type_ids" in family.extra_inputs:
                mm_types.append(out["mm_token_type_ids"][0] if "mm_token_type_ids" in out else _image_token_types(processor, family, piece))
            first = False
        else:
            piece = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
            if is_answer and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in piece:
                # A template that ends an answer with no end token at all (llava-hf's: "ASSISTANT: text "):
                # the answer gets the eos, as the model's own training format had it, so that it learns to stop.
                piece = torch.cat([piece, torch.tensor([tokenizer.eos_token_id])])
            if mm_types:  # later turns carry no image
                mm_types.append(torch.zeros_like(piece))
        ids.append(piece)
        labels.append(piece.clone() if is_answer else torch.full_like(piece, IGNORE_INDEX))
    input_ids = torch.cat(ids)
    label_ids = torch.cat(labels)
    if len(input_ids) > max_length:
        raise HallbenchError(
            f"{conversation.location}: sample '{conversation.id}' is {len(input_ids)} tokens long (image tokens included), "
            f"more than max_length {max_length}; shorten it, drop it, or raise --max-length"
        )
    if not (label_ids != IGNORE_INDEX).any():
        raise HallbenchError(f"{conversation.location}: sample '{conversation.id}' has empty assistant answers (nothing to train on)")
    return Encoded(input_ids, label_ids, image_inputs, torch.cat(mm_types) if mm_types else None)


def _image_token_types(processor: Any, family: Family, ids: torch.Tensor) -> torch.Tensor:
    """1 at image-token positions, 0 elsewhere (for processors that do not return ``mm_token_type_ids``)."""
    image_token_id = getattr(processor, "image_token_id", None)
    if image_token_id is None:
        raise HallbenchError(
            f"the {type(processor).__name__} of this {family.name} model returns no mm_token_type_ids and has no image_token_id"
        )
    return (ids == image_token_id).long()


def _check_images(folder: Path, conversations: list[Conversation]) -> None:
    """Every referenced image is inside ``folder``, exists, and opens (header only: fast for 600k images)."""
    from PIL import Image, UnidentifiedImageError

    root = folder.resolve()
    seen: dict[str, str] = {}
    for conversation in conversations:
        for name in conversation.images:
            seen.setdefault(name, conversation.location)
    missing = []
    for name, where in seen.items():
        path = (folder / name).resolve()
        if not path.is_relative_to(root):
            raise HallbenchError(f"{where}: image {name!r} leads outside the image folder {folder} (image paths are relative to --images)")
        if not path.is_file():
            missing.append((where, name))
            continue
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - the header is parsed on open; size proves it
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise HallbenchError(f"image {folder / name} (referenced by {where}) cannot be read as an image: {err}") from None
    if missing:
        where, name = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HallbenchError(f"image not found: {folder / name} (referenced by {where}){more}")


class ConversationDataset(torch.utils.data.Dataset):
    """LLaVA-format conversations with their images, tokenised on access.

    Cheap checks run up front on every sample (readable records, an assistant turn, every image file
    inside the image folder, present, and with a header Pillow reads), so a bad record fails the run
    before the first step instead of hours into it. Pixels are decoded when a sample is used; a file
    whose body is damaged past its header is an error naming the sample then.
    """

    def __init__(self, data: Path, images: Path, processor: Any, family: Family, max_length: int, *, cache: bool = False):
        self.data, self.images_dir = Path(data), Path(images)
        if not self.images_dir.is_dir():
            raise HallbenchError(f"the image folder {self.images_dir} does not exist (--images)")
        self.conversations = read_conversations(self.data)
        if not self.conversations:
            raise HallbenchError(f"{self.data} holds no training samples")
        _check_images(self.images_dir, self.conversations)
        self.processor, self.family, self.max_length = processor, family, max_length
        # With ``cache``, each sample is tokenised once and kept; samples of the same image share one
        # copy of its pixel tensors (the shapes world has 5 conversations per image). Tensors are
        # never modified in place downstream (the collator concatenates into new ones).
        self.cache = cache
        self._encoded: dict[int, Encoded] = {}
        self._pixels: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> Encoded:
        if index in self._encoded:
            return self._encoded[index]
        conversation = self.conversations[index]
        pictures = [load_image(self.images_dir / name, referenced_by=conversation.location) for name in conversation.images]
        encoded = encode_conversation(self.processor, self.family, conversation, pictures, self.max_length)
        encoded.image_key = image_key(conversation.images)
        if self.cache:
            encoded.images = self._pixels.setdefault(tuple(conversation.images), encoded.images)
            self._encoded[index] = encoded
        return encoded


@dataclass
class Collator:
    """Pads a list of :class:`Encoded` on the right and concatenates their image tensors."""

    pad_token_id: int
    with_image_ids: bool = False
    """Also return ``image_ids`` (B,), the samples' :func:`image_key` (for L_ctr; the model never sees them)."""

    def __call__(self, batch: list[Encoded]) -> dict[str, torch.Tensor]:
        length = max(len(e.input_ids) for e in batch)
        input_ids = torch.full((len(batch), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = e.input_ids, e.labels, 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.with_image_ids:
            out["image_ids"] = torch.tensor([e.image_key for e in batch], dtype=torch.long)
        if batch[0].mm_token_type_ids is not None:
            mm = torch.zeros((len(batch), length), dtype=torch.long)
            for row, e in enumerate(batch):
                mm[row, : len(e.mm_token_type_ids)] = e.mm_token_type_ids
            out["mm_token_type_ids"] = mm
        with_images = [e.images for e in batch if e.images]
        if with_images:
            if len(with_images) != len(batch):
                raise HallbenchError("a batch mixes samples with and without images; every training sample needs an image")
            pixels = [e["pixel_values"] for e in with_images]
            if pixels[0].dim() == 4:
                # (n_images, C, H, W) per sample (Pixtral): images of different sizes are zero-padded on
                # the bottom/right to a common size; the family's image_inputs (image_sizes) keep each
                # one's true size. Qwen3-VL's flattened patches (2-D) are concatenated as they are.
                height = max(p.shape[-2] for p in pixels)
                width = max(p.shape[-1] for p in pixels)
                pixels = [torch.nn.functional.pad(p, (0, width - p.shape[-1], 0, height - p.shape[-2])) for p in pixels]
            out["pixel_values"] = torch.cat(pixels)
            # The family's other per-image inputs (Family.image_inputs: image_grid_thw, image_sizes, ...).
            for key in with_images[0]:
                if key != "pixel_values":
                    out[key] = torch.cat([e[key] for e in with_images])
        return out
