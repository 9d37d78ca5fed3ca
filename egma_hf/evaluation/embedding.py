"""Image files -> batches of pixel values -> L2-normalised global image embeddings."""

import torch

from ..data.images import image_size_of, load_image
from ..zero_shot import check_positive_int, embed_pixel_values


def check_images_readable(paths) -> None:
    """Every image must exist and have a readable header; ValueError listing (up to ten of) those that do not."""
    failures = []
    for path in paths:
        try:
            image_size_of(path)
        except Exception as error:  # noqa: BLE001 - reported below, file by file
            failures.append(f"{path}: {type(error).__name__}: {error}")
    if failures:
        raise ValueError(f"{len(failures)} of {len(paths)} images cannot be read:\n  " + "\n  ".join(failures[:10]))


def image_file_batches(image_processor, paths, batch_size: int = 32):
    """Image files (PNG, JPG or DICOM) -> batches of pixel_values (B, 3, S, S) for `embed_images`, decoded one
    batch at a time. A file that cannot be decoded raises ValueError naming it."""
    check_positive_int(batch_size, "batch_size")
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start : start + batch_size]:
            try:
                images.append(load_image(path))
            except Exception as error:  # noqa: BLE001 - any decoder failure, reported with the file
                raise ValueError(f"cannot decode {path}: {type(error).__name__}: {error}") from error
        yield image_processor(images=images, return_tensors="pt")["pixel_values"]


@torch.no_grad()
def embed_images(model, image_batches) -> torch.Tensor:
    """Iterable of pixel_values (B, 3, S, S) -> (N, D) L2-normalised global image embeddings (model in eval mode)."""
    model.eval()
    chunks = [embed_pixel_values(model, pixels) for pixels in image_batches]
    if not chunks:
        raise ValueError("no images to embed")
    return torch.cat(chunks)
