"""EGMAProcessor: images, reports and per-sentence gaze heatmaps -> the batch layout `EGMAModel` expects.

Reports are split into sentences (see `split_report_into_sentences`), every sentence is tokenised on its own, and
the batch is laid out as (reports, sentence slots, tokens) with all-zero attention rows in the padding slots.
"""

import re

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

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
        max_length: int = 77,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: one image or a list (PIL, numpy or torch; any size, grayscale/RGB/16-bit).
            text: a report, a list of reports (each split into sentences), or a list of pre-split sentence lists.
            gaze_heatmaps: one entry per sample: None (no gaze) or that sample's sentence heatmaps (a list of 2-D
                arrays or one (m, h, w) array) in sentence order, each covering the whole image. Needs images.
            max_length: tokens per sentence (longer sentences are truncated).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments for EGMAProcessor: {sorted(kwargs)}")
        if images is None and text is None:
            raise ValueError("give images, text or both")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}")
        data = {}
        sentences = None
        if text is not None:
            sentences = self._sentences(text)
            data.update(self._tokenize(sentences, max_length))
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
        return BatchFeature(data)

    @staticmethod
    def _sentences(text) -> list[list[str]]:
        reports = [text] if isinstance(text, str) else list(text)
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

    def _tokenize(self, sentences: list[list[str]], max_length: int) -> dict[str, torch.Tensor]:
        flat = [sentence for report in sentences for sentence in report]
        encoded = self.tokenizer(flat, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        num_reports, num_slots = len(sentences), max(len(report) for report in sentences)
        owner = torch.tensor([r for r, report in enumerate(sentences) for _ in report])
        slot = torch.tensor([s for report in sentences for s in range(len(report))])
        batch = {}
        for key, values in encoded.items():
            fill = self.tokenizer.pad_token_id if key == "input_ids" else 0
            laid_out = values.new_full((num_reports, num_slots, values.shape[-1]), fill)
            laid_out[owner, slot] = values
            batch[key] = laid_out
        return batch

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "token_type_ids", "pixel_values", "gaze_heatmaps", "has_gaze"]


__all__ = ["EGMAProcessor", "split_report_into_sentences"]
