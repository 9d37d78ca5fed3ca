"""Collectives for EGMA's loss over several processes (torch.distributed), as open_clip's `--gather-with-grad`.

Every rank holds B pairs of a global batch of W * B; rank r's pairs are global rows r * B ... r * B + B - 1, the
order in which these helpers concatenate the ranks' tensors. With one process they return their input unchanged.
"""

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without an initialised torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gathered_shapes(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor.shape` as a (W, ndim) int64 tensor, after checking that dim 0 (the batch) agrees.

    All ranks see the same shapes, so a mismatch raises on every rank alike instead of leaving some waiting.
    """
    shape = torch.tensor(tensor.shape, dtype=torch.long, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    shapes = torch.stack(shapes)
    batch_sizes = shapes[:, 0].tolist()
    if len(set(batch_sizes)) > 1:
        raise ValueError(
            f"the ranks hold different local batch sizes {batch_sizes} (in rank order); gathering the global batch "
            f"needs the same number of pairs on every rank (drop_last=True, or accelerate's even_batches)"
        )
    return shapes


def _check_same_shape(tensor: torch.Tensor, caller: str) -> None:
    shapes = _gathered_shapes(tensor)
    if (shapes != shapes[0]).any():
        raise ValueError(f"{caller} needs the same shape on every rank, got {shapes.tolist()} (in rank order)")


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation along dim 0 of every rank's `tensor` (same shape on all ranks), without gradient."""
    parts = [torch.empty_like(tensor, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """`_all_gather` whose backward gives each rank the sum, over all ranks, of the gradient on its own slice.

    Written out rather than using `torch.distributed.nn.functional.all_gather` (deprecated in recent torch): with
    gloo, that one's backward scatters into buffers laid out like the incoming gradient and returns scrambled
    gradients when those are not contiguous, as the einsum in `fine_grained_similarity` makes them (torch 2.14).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.batch = tensor.shape[0]
        return _all_gather(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # the incoming gradient may be shared: no in-place
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (W * B, ...) in rank order, differentiable. Every rank needs the same shape."""
    if world_info()[1] == 1:
        return tensor
    _check_same_shape(tensor, "gather_with_grad")
    return _AllGatherWithGrad.apply(tensor)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (W * B, ...) in rank order, without gradient (ids, masks). Same shape on every rank."""
    if world_info()[1] == 1:
        return tensor
    _check_same_shape(tensor, "gather")
    return _all_gather(tensor)


def gather_padded(tensor: torch.Tensor, dim: int, fill: float | bool, with_grad: bool) -> torch.Tensor:
    """Gather tensors whose size along `dim` (not the batch dim 0) differs between ranks.

    Each rank's tensor is padded with `fill` along `dim` to the largest size on any rank, then gathered:
    (B, ..., M_rank, ...) -> (W * B, ..., max M, ...). Example: sentence_embeds (B, M, D) with `dim=1, fill=0`.
    """
    if world_info()[1] == 1:
        return tensor
    dim = dim % tensor.ndim
    size = int(_gathered_shapes(tensor)[:, dim].max())
    if size > tensor.shape[dim]:
        padding_shape = list(tensor.shape)
        padding_shape[dim] = size - tensor.shape[dim]
        tensor = torch.cat([tensor, tensor.new_full(padding_shape, fill)], dim=dim)
    return _AllGatherWithGrad.apply(tensor) if with_grad else _all_gather(tensor)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of every rank's `tensor` (a count, say), without gradient."""
    if world_info()[1] == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total
