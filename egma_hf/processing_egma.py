"""EGMAProcessor: images, reports and per-sentence gaze heatmaps -> the batch layout `EGMAModel` expects.

Reports are split into sentences (see `split_report_into_sentences`), every sentence is tokenised on its own, and
the batch is laid out as (reports, sentence slots, tokens) with all-zero attention rows in the padding slots.
"""

import re
from numbers import Integral

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import TruncationStrategy
from transformers.utils import PaddingStrategy, TensorType

# A sentence ends at ".", "!" or "?" followed by white space, or at a blank line. Numbered-list markers ("1. ",
# "2) ") start a new sentence. Single line breaks are spaces (reports are often hard-wrapped). Decimals ("3.5 cm")
# do not split, abbreviations followed by a space ("Dr. ") do.
_LIST_MARKER = re.compile(r"(?:^|(?<=\s))\d{1,2}[.)](?=\s)")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n[ \t]*\n\s*")


def split_report_into_sentences(report: str) -> list[str]:
    """Split a radiology report into sentences; pieces with no letter or digit are dropped.

    >>> split_report_into_sentences("1. Heart size is normal.  2. No effusion.\\nLungs are clear")
    ['Heart size is normal.', 'No effusion.', 'Lungs are clear']
    """
    if not isinstance(report, str):
        raise TypeError(f"a report must be a str, got {type(report).__name__}")
    text = _LIST_MARKER.sub("\n\n", report)
    pieces = (" ".join(piece.split()) for piece in _SENTENCE_BREAK.split(text))
    return [piece for piece in pieces if any(char.isalnum() for char in piece)]


class EGMAProcessor(ProcessorMixin):
    r"""Wraps an `EGMAImageProcessor` and a BERT-family tokenizer.

    `processor(images=..., text=..., gaze_heatmaps=...)` returns `pixel_values` (B, 3, S, S), `input_ids` /
    `attention_mask` / `token_type_ids` (B, M, L) and, with gaze, `gaze_heatmaps` (B, M, g, g) and `has_gaze` (B,).
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    def __call__(
        self,
        images=None,
        text=None,
        gaze_heatmaps=None,
        padding: bool | str | PaddingStrategy = True,
        truncation: bool | str | TruncationStrategy | None = True,
        max_length: int | None = 77,
        return_tensors: str | TensorType | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: one image or a list (PIL, numpy or torch; any size, grayscale/RGB/16-bit).
            text: a report, a list of reports (each split into sentences), or a list of pre-split sentence lists.
            gaze_heatmaps: one entry per sample: None (no gaze) or that sample's sentence heatmaps (a list of 2-D
                arrays or one (m, h, w) array) in sentence order, each covering the whole image. Needs images.
            padding, truncation, max_length: the tokenizer's, applied to every sentence, as in `CLIPProcessor`:
                by default sentences are padded to the longest and truncated to 77 tokens; `padding="max_length"`
                pads every sentence to `max_length`; `max_length=None` is the tokenizer's `model_max_length`.
                The sentences must end up of one length (they are laid out as one tensor).
            return_tensors: "pt" (default) for torch tensors, "np" for numpy arrays, None for Python lists.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments for EGMAProcessor: {sorted(kwargs)}")
        if images is None and text is None:
            raise ValueError("give images, text or both")
        return_tensors = _check_return_tensors(return_tensors)
        data = {}
        sentences = None
        if text is not None:
            sentences = self._sentences(text)
            data.update(self._tokenize(sentences, *_check_tokenizer_options(padding, truncation, max_length)))
        if images is not None:
            data["pixel_values"], image_sizes = self.image_processor.prepare_images(images)
        if gaze_heatmaps is not None:
            if images is None or sentences is None:
                raise ValueError("gaze_heatmaps need both the images (for their geometry) and the text (for sentences)")
            if not isinstance(gaze_heatmaps, (list, tuple)):
                raise TypeError("gaze_heatmaps must be a list with one entry (or None) per sample")
            if not (len(gaze_heatmaps) == len(sentences) == len(image_sizes)):
                raise ValueError(
                    f"got {len(image_sizes)} images, {len(sentences)} reports and "
                    f"{len(gaze_heatmaps)} gaze_heatmaps entries; they must match one to one"
                )
            data["gaze_heatmaps"], data["has_gaze"] = self.image_processor.preprocess_gaze(
                gaze_heatmaps, image_sizes, [len(report) for report in sentences]
            )
        if return_tensors == TensorType.NUMPY:
            return BatchFeature({key: value.numpy() for key, value in data.items()}, tensor_type="np")
        if return_tensors is None:
            return BatchFeature({key: value.tolist() for key, value in data.items()})
        return BatchFeature(data)

    @staticmethod
    def _sentences(text) -> list[list[str]]:
        try:
            reports = [text] if isinstance(text, str) else list(text)
        except TypeError:
            raise TypeError(f"text must be a str or a list of reports, got {type(text).__name__}") from None
        if not reports:
            raise ValueError("text: got an empty list")
        sentences = []
        for index, report in enumerate(reports):
            if isinstance(report, str):
                split = split_report_into_sentences(report)
            elif isinstance(report, (list, tuple)) and all(isinstance(s, str) for s in report):
                split = [s.strip() for s in report]
                if any(not s for s in split):
                    raise ValueError(f"text[{index}] contains an empty sentence")
            else:
                raise TypeError(f"text[{index}] must be a str or a list of str, got {type(report).__name__}")
            if not split:
                raise ValueError(f"text[{index}] has no sentence (empty report): {report!r}")
            sentences.append(split)
        return sentences

    def _tokenize(self, sentences: list[list[str]], padding, truncation, max_length) -> dict[str, torch.Tensor]:
        flat = [sentence for report in sentences for sentence in report]
        encoded = self.tokenizer(flat, padding=padding, truncation=truncation, max_length=max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        if len(set(lengths)) > 1:
            longest = lengths.index(max(lengths))
            owner = [(r, s) for r, report in enumerate(sentences) for s in range(len(report))][longest]
            remedy = (
                "truncation=True (no sentence longer than max_length)"
                if padding == PaddingStrategy.MAX_LENGTH else "padding='max_length'"
            )
            raise ValueError(
                f"padding={padding.value!r}, truncation={truncation!r}, max_length={max_length!r} leave the sentences "
                f"at different lengths ({min(lengths)} to {max(lengths)} tokens; the longest is sentence {owner[1]} of "
                f"text[{owner[0]}]), which cannot be laid out as one (reports, sentences, tokens) tensor; use "
                f"padding=True (pad to the longest) or {remedy}"
            )
        num_reports, num_slots = len(sentences), max(len(report) for report in sentences)
        owner = torch.tensor([r for r, report in enumerate(sentences) for _ in report])
        slot = torch.tensor([s for report in sentences for s in range(len(report))])
        pad_token_id = self.tokenizer.pad_token_id
        batch = {}
        for key, values in encoded.items():
            values = torch.tensor(values)
            fill = pad_token_id if key == "input_ids" and pad_token_id is not None else 0
            laid_out = values.new_full((num_reports, num_slots, values.shape[-1]), fill)
            laid_out[owner, slot] = values
            batch[key] = laid_out
        return batch

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "token_type_ids", "pixel_values", "gaze_heatmaps", "has_gaze"]


_TRUNCATION_STRATEGIES = ("longest_first", "only_first", "do_not_truncate")


def _check_tokenizer_options(padding, truncation, max_length):
    """The tokenizer's padding / truncation / max_length, checked -> (PaddingStrategy, truncation, max_length)."""
    try:
        strategy = PaddingStrategy.LONGEST if padding is True else (
            PaddingStrategy.DO_NOT_PAD if padding is False else PaddingStrategy(padding))
    except (TypeError, ValueError):
        raise ValueError(
            f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}"
        ) from None
    if isinstance(truncation, TruncationStrategy):
        truncation = truncation.value
    if not (truncation is None or isinstance(truncation, bool)
            or (isinstance(truncation, str) and truncation in _TRUNCATION_STRATEGIES)):
        raise ValueError(
            f"truncation must be True, False, None or one of {list(_TRUNCATION_STRATEGIES)} (each sentence is a "
            f"single sequence), got {truncation!r}"
        )
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, Integral)
                                   or max_length < 1):
        raise ValueError(f"max_length must be an int >= 1 (tokens per sentence) or None, got {max_length!r}")
    return strategy, truncation, None if max_length is None else int(max_length)


def _check_return_tensors(return_tensors) -> TensorType | None:
    if return_tensors is None:
        return None
    try:
        tensor_type = TensorType(return_tensors)
    except ValueError:
        tensor_type = None
    if tensor_type not in (TensorType.PYTORCH, TensorType.NUMPY):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
    return tensor_type


__all__ = ["EGMAProcessor", "split_report_into_sentences"]
