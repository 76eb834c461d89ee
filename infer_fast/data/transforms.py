"""Batched image augmentations on tensors (N, ch, H, W), driven by an explicit torch.Generator.

Every sample gets its own random parameters; the same generator state gives the same
output. Random numbers are drawn on the generator's device (CPU for ``torch.Generator()``)
and moved to the data's device (transfer.to_device: on a GPU without making the host wait),
so a CPU generator drives CUDA batches reproducibly.
``gen=None`` uses torch's global CPU generator.

    gen = torch.Generator().manual_seed(0)
    x = normalize(images_uint8, spec.mean, spec.std)               # float32
    x = random_flip(random_crop_with_padding(x, 32, 4, gen), gen)  # RandomCrop(32, 4) + flip
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..checks import check_int
from ..transfer import to_device

__all__ = [
    "normalize", "denormalize", "random_crop_with_padding", "crop_windows", "random_flip", "random_resized_crop",
    "resized_crop_boxes", "cell_sizes", "shuffle_patches",
]

Size = Union[int, Tuple[int, int]]


# torchvision's RandomResizedCrop defaults: the area fraction and aspect-ratio ranges of the box
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _pair(size: Size) -> Tuple[int, int]:
    if isinstance(size, int):
        out = (size, size)
    else:
        out = tuple(int(s) for s in size)
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return out  # type: ignore[return-value]


def _check_batch(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"{name}: expected a tensor (N, ch, H, W), got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def _rand(n: int, gen: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) of shape (n,) from ``gen``, on ``device``."""
    where = gen.device if gen is not None else torch.device("cpu")
    return to_device(torch.rand(n, generator=gen, device=where, dtype=torch.float64), torch.device(device))


def _randint(high: int, n: int, gen: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    where = gen.device if gen is not None else torch.device("cpu")
    return to_device(torch.randint(0, high, (n,), generator=gen, device=where), torch.device(device))


def _channel_vector(values, x: torch.Tensor, name: str) -> torch.Tensor:
    dtype = torch.float32 if x.dtype in (torch.uint8, torch.float16, torch.bfloat16) else x.dtype
    # (made where the values are, then moved: a list straight to a GPU would be a copy the host waits for)
    v = to_device(torch.as_tensor(values, dtype=dtype), x.device).reshape(-1)
    channels = x.shape[-3] if x.ndim >= 3 else None
    if channels is not None and v.numel() not in (1, channels):
        raise ValueError(f"{name} has {v.numel()} values but the images have {channels} channels")
    return v.view(-1, 1, 1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x / 255 - mean) / std per channel for uint8 images (..., ch, H, W); float input is
    taken as already in [0, 1]. Returns float32 (float64 stays float64)."""
    if x.dtype == torch.uint8:
        pixels = x.to(torch.float32).div_(255.0)
    elif not x.is_floating_point():
        raise ValueError(f"normalize: expected uint8 or float images, got {x.dtype}")
    else:
        pixels = x if x.dtype == torch.float64 else x.to(torch.float32)
    m, s = _channel_vector(mean, pixels, "mean"), _channel_vector(std, pixels, "std")
    # a tensor made here (a conversion) is normalized in place: the same values, no new batch per pass
    mine = pixels is not x and pixels.dim() >= 3  # (>= 3 dims: the channel vectors broadcast into its shape)
    return (pixels.sub_(m) if mine else pixels - m).div_(s)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], to_uint8: bool = False) -> torch.Tensor:
    """Inverse of :func:`normalize`: x * std + mean in [0, 1] pixel units; with
    ``to_uint8`` clamped to [0, 1], scaled to 0..255 and rounded to uint8."""
    if not x.is_floating_point():
        raise ValueError(f"denormalize: expected float images, got {x.dtype}")
    m, s = _channel_vector(mean, x, "mean"), _channel_vector(std, x, "std")
    out = (x * s).add_(m)  # (in place on the product made here: the same values as x * s + m)
    if to_uint8:
        out = out.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return out


def random_crop_with_padding(
    x: torch.Tensor,
    size: Size,
    padding: int = 0,
    gen: Optional[torch.Generator] = None,
    padding_mode: str = "constant",
    fill: float = 0.0,
) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) per sample: pad every side by ``padding``
    (``padding_mode`` "constant" with ``fill``, "reflect", "replicate" or "circular"), then
    cut a ``size`` window at an offset drawn uniformly per sample (rows first, then
    columns, from ``gen``)."""
    _check_batch(x, "random_crop_with_padding")
    th, tw = _pair(size)
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding:
        if padding_mode == "constant":
            x = F.pad(x, (padding,) * 4, mode="constant", value=fill)
        elif padding_mode in ("reflect", "replicate", "circular"):
            if padding_mode == "reflect" and padding >= min(x.shape[-2:]):
                raise ValueError(f"reflect padding {padding} needs images larger than {padding} pixels")
            x = F.pad(x, (padding,) * 4, mode=padding_mode)
        else:
            raise ValueError(f"padding_mode must be constant, reflect, replicate or circular, got {padding_mode!r}")
    n, _, hp, wp = x.shape
    if th > hp or tw > wp:
        raise ValueError(f"crop {th}x{tw} is larger than the padded image {hp}x{wp}")
    top = _randint(hp - th + 1, n, gen, x.device)
    left = _randint(wp - tw + 1, n, gen, x.device)
    return crop_windows(x, torch.arange(n, device=x.device), top, left, (th, tw))


def crop_windows(x: torch.Tensor, source: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                 size: Size) -> torch.Tensor:
    """Window k: rows top[k] .. top[k] + h and columns left[k] .. left[k] + w of image
    x[source[k]] (every window inside the image; index tensors on x's device), as
    (len(source), ch, h, w). Indexes a view of all windows (N, offsets down, offsets across,
    ch, h, w), so whole windows are copied: 4-6x faster on a CPU than gathering pixel by pixel,
    the same values."""
    h, w = _pair(size)
    windows = x.unfold(2, h, 1).unfold(3, w, 1).permute(0, 2, 3, 1, 4, 5)
    return windows[source, top, left]


def random_flip(x: torch.Tensor, gen: Optional[torch.Generator] = None, p: float = 0.5,
                inplace: bool = False) -> torch.Tensor:
    """Mirror each sample's width axis with probability ``p`` (one draw per sample).
    ``inplace``: mirror the drawn samples of ``x`` itself (the same values, without a mirrored
    copy of every sample and a select: for a batch the caller owns)."""
    _check_batch(x, "random_flip")
    flip = _rand(x.shape[0], gen, torch.device("cpu")) < p  # (on the host: the rows to index need no device sync)
    if not inplace:
        return torch.where(to_device(flip, x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    rows = to_device(flip.nonzero().squeeze(1), x.device)
    x[rows] = x[rows].flip(-1)
    return x


def resized_crop_boxes(
    n: int, height: int, width: int, scale, ratio, gen: Optional[torch.Generator]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, h, w) per sample, torchvision's RandomResizedCrop.get_params vectorized:
    10 tries per sample, the first that fits wins, else a center crop at the clamped ratio."""
    attempts = 10
    cpu = torch.device("cpu")
    area = float(height * width)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    u_area = _rand(n * attempts, gen, cpu).view(n, attempts)
    u_ratio = _rand(n * attempts, gen, cpu).view(n, attempts)
    u_top = _rand(n * attempts, gen, cpu).view(n, attempts)
    u_left = _rand(n * attempts, gen, cpu).view(n, attempts)
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = torch.floor(u_top * (height - h + 1).clamp(min=1)).long()
    left = torch.floor(u_left * (width - w + 1).clamp(min=1)).long()
    first = ok.long().argmax(1, keepdim=True)  # first fitting attempt (0 when none fits)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    top, left, h, w = pick(top), pick(left), pick(h), pick(w)
    # Fallback: center crop with the aspect ratio clamped to the range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    none = ~ok.any(1)
    h = torch.where(none, torch.full_like(h, fh), h)
    w = torch.where(none, torch.full_like(w, fw), w)
    top = torch.where(none, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(none, torch.full_like(left, (width - fw) // 2), left)
    return top, left, h, w



def random_resized_crop(
    x: torch.Tensor,
    size: Size,
    scale: Tuple[float, float] = RESIZED_CROP_SCALE,
    ratio: Tuple[float, float] = RESIZED_CROP_RATIO,
    gen: Optional[torch.Generator] = None,
    antialias: bool = True,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop per sample: a random box (area fraction in ``scale``,
    aspect ratio log-uniform in ``ratio``) resized to ``size`` with bilinear interpolation
    (antialiased when shrinking). Float input; returns (N, ch, *size)."""
    _check_batch(x, "random_resized_crop")
    if not x.is_floating_point():
        raise ValueError(f"random_resized_crop: expected float images, got {x.dtype} (normalize first)")
    th, tw = _pair(size)
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got scale={scale}, ratio={ratio}")
    n, _, height, width = x.shape
    top, left, h, w = resized_crop_boxes(n, height, width, scale, ratio, gen)
    out = x.new_empty((n, x.shape[1], th, tw))
    for k, (t, l, hh, ww) in enumerate(zip(top.tolist(), left.tolist(), h.tolist(), w.tolist())):
        crop = x[k : k + 1, :, t : t + hh, l : l + ww]
        out[k] = F.interpolate(crop, size=(th, tw), mode="bilinear", align_corners=False, antialias=antialias)[0]
    return out


def cell_sizes(size: int, factor: int) -> Tuple[int, ...]:
    """Heights (and widths) of the ``factor`` rows (columns) of an image cut into factor x
    factor patches (RDED's stitched images): size // factor, the first size % factor of them
    one pixel more."""
    base, extra = divmod(size, factor)
    return tuple(base + (i < extra) for i in range(factor))


def _shuffled_positions(cells: Tuple[int, ...], order: torch.Tensor) -> torch.Tensor:
    """(N, size) source positions: for each sample its cells of sizes ``cells`` laid out in
    ``order`` (N, factor), each cell's pixels in their order."""
    sizes = torch.tensor(cells, dtype=torch.int64)
    starts = sizes.cumsum(0) - sizes  # where each cell starts in the image
    placed = sizes[order].cumsum(1)  # (N, factor): where each slot of the shuffled layout ends
    position = torch.arange(int(sizes.sum())).repeat(order.shape[0], 1)
    slot = torch.searchsorted(placed, position, right=True)  # the slot each output position falls in
    cell = order.gather(1, slot)
    return starts[cell] + position - (placed.gather(1, slot) - sizes[cell])


def shuffle_patches(x: torch.Tensor, factor: int, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """RDED's ShufflePatches(factor) per sample: the image cut into ``factor`` column strips
    (``cell_sizes``), the strips put in a random order, then the same with the rows (one
    column and one row permutation per sample, so a patch moves with its row and column).
    Strips of unequal size (size % factor != 0) keep their own size; factor 1 returns ``x``."""
    _check_batch(x, "shuffle_patches")
    check_int("shuffle_patches: factor", factor)
    if factor == 1:
        return x
    n, ch, height, width = x.shape
    if factor > min(height, width):
        raise ValueError(f"shuffle_patches: factor={factor} cuts {height}x{width} images into patches under one pixel")
    orders = torch.rand(2 * n, factor, generator=gen, device=gen.device if gen is not None else "cpu").argsort(1)
    cols = _shuffled_positions(cell_sizes(width, factor), orders[:n].cpu())
    rows = _shuffled_positions(cell_sizes(height, factor), orders[n:].cpu())
    cols, rows = to_device(cols, x.device), to_device(rows, x.device)
    x = x.gather(3, cols.view(n, 1, 1, width).expand(n, ch, height, width))
    return x.gather(2, rows.view(n, 1, height, 1).expand(n, ch, height, width))
