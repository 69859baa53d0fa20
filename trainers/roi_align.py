"""Multi-scale RoIAlign whose CPU path is one sparse matrix product: torchvision's numbers, a fraction of its time.

Why: torchvision's CPU `roi_align` backward is a serial scatter loop. In a frozen Faster R-CNN trial that reads
its body from the feature cache it was 58 % of the training step (docs/feature-cache.md), paid by every mode
alike. RoIAlign is linear in the feature map: every output bin is a fixed weighted sum of at most
`sampling_ratio^2 x 4` feature-map cells (each sample point's 4 bilinear neighbours, divided by the sample
count). So the whole multi-level pooling of one batch is `S @ F`, where `F` stacks every level's map as rows
of channels (`B*H*W` rows per level, channels last) and `S` is a sparse CSR matrix with one row per output
bin. Its backward is `S^T @ grad`, which torch's sparse kernels do in a fraction of the scatter loop's time.

Numerics: the sample points, the clamping and the weights are torchvision's CPU kernel's (`aligned=False`
and `True`, `sampling_ratio > 0`): a sample outside `[-1, H] x [-1, W]` counts zero, one in `[-1, 0]` is
clamped to the border, one past `H - 1` reads row `H - 1`. Outputs and gradients equal torchvision's to float
rounding (tests/test_roi_align.py compares both, borders and tiny boxes included). The level of each RoI is
torchvision's `LevelMapper`, the scales its `_setup_scales`.

Where it is used: `MultiScaleRoIAlign.forward` below takes this path for float32/float64 maps on the CPU with a
positive `sampling_ratio`, and hands everything else (CUDA, half precision, adaptive sampling) to torchvision,
whose GPU kernel has no such bottleneck.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchvision.ops import poolers

__all__ = ["MultiScaleRoIAlign", "sparse_roi_align"]


def _axis(coord: Tensor, size: Tensor, samples: int) -> tuple[Tensor, Tensor, Tensor]:
    """One axis of torchvision's `bilinear_interpolate` for each bin's samples (`coord`: ... x S).

    Returns each bin's cells along this axis (... x 2S: the samples' low and high neighbours, sorted, each
    cell once, unused slots last), their summed weights (out-of-range samples weigh 0; each sample 1 / S) and
    which slots are used. RoIAlign's 2-D weights are the products of the two axes' weights, so cells unique
    per axis make the 2-D cells unique too.
    """
    valid = (coord >= -1.0) & (coord <= size)  # False for NaN too
    # Out-of-range samples weigh 0; reading them at 0 keeps every cell index in range even for NaN / inf
    # coordinates (a diverging model's boxes), which would otherwise index outside the maps.
    coord = torch.where(valid, coord, torch.zeros_like(coord)).clamp(min=0.0)
    low = coord.floor().long()
    last = size.long() - 1
    at_end = low >= last
    low = torch.where(at_end, last.expand_as(low), low)
    high = torch.where(at_end, low, low + 1)
    coord = torch.where(at_end, low.to(coord.dtype), coord)
    frac = coord - low
    ok = valid.to(coord.dtype) / samples
    cells, order = torch.cat([low, high], -1).sort(dim=-1)
    weights = torch.cat([(1.0 - frac) * ok, frac * ok], -1).gather(-1, order)
    first = torch.ones_like(cells, dtype=torch.bool)
    first[..., 1:] = cells[..., 1:] != cells[..., :-1]
    slot = first.long().cumsum(-1) - 1  # repeated cells share their first occurrence's slot
    merged = torch.zeros_like(weights).scatter_add_(-1, slot, weights)
    unique = torch.zeros_like(cells).scatter_(-1, slot, cells)
    used = torch.arange(cells.shape[-1], device=cells.device) < first.sum(-1, keepdim=True)
    return unique, merged, used


def _sample_matrix(
    rois: Tensor,
    level_of_roi: Tensor,
    shapes: list[tuple[int, int, int]],
    scales: list[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """The CSR matrix (RoIs x PH x PW, rows of the stacked maps) of the pooling's bilinear sample weights."""
    device, dtype = rois.device, rois.dtype
    ph, pw = output_size
    s = sampling_ratio
    k = rois.shape[0]
    heights = torch.tensor([h for _, h, _ in shapes], device=device)[level_of_roi]
    widths = torch.tensor([w for _, _, w in shapes], device=device)[level_of_roi]
    scale = torch.tensor(scales, device=device, dtype=dtype)[level_of_roi]
    sizes = [b * h * w for b, h, w in shapes]
    starts = torch.tensor([0, *sizes[:-1]], device=device).cumsum(0)[level_of_roi]  # first row of the level

    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    x2, y2 = rois[:, 3] * scale - offset, rois[:, 4] * scale - offset
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision forces malformed RoIs to 1 x 1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / pw, roi_h / ph

    # Sample coordinates, in torchvision's order of operations: start + p * bin + (i + .5) * bin / s.
    sub = torch.arange(s, device=device, dtype=dtype) + 0.5
    xs = (
        x1[:, None, None]
        + torch.arange(pw, device=device, dtype=dtype)[None, :, None] * bin_w[:, None, None]
        + sub[None, None, :] * bin_w[:, None, None] / s
    )  # (K, PW, S)
    ys = (
        y1[:, None, None]
        + torch.arange(ph, device=device, dtype=dtype)[None, :, None] * bin_h[:, None, None]
        + sub[None, None, :] * bin_h[:, None, None] / s
    )  # (K, PH, S)
    x_cell, x_weight, x_used = _axis(xs, widths.to(dtype)[:, None, None], s)  # (K, PW, 2S)
    y_cell, y_weight, y_used = _axis(ys, heights.to(dtype)[:, None, None], s)  # (K, PH, 2S)

    # Row (k, ph, pw) holds the cells (y, x) of y_cell[k, ph] x x_cell[k, pw], y-major: with each axis
    # sorted and unique, the columns b*H*W + y*W + x come out sorted and unique, as CSR wants them.
    base = (starts + rois[:, 0].long() * heights * widths)[:, None, None, None, None]
    col = base + y_cell[:, :, None, :, None] * widths[:, None, None, None, None] + x_cell[:, None, :, None, :]
    val = y_weight[:, :, None, :, None] * x_weight[:, None, :, None, :]
    rows = k * ph * pw
    used = (y_used[:, :, None, :, None] & x_used[:, None, :, None, :]).reshape(rows, 4 * s * s)
    crow = torch.zeros(rows + 1, dtype=torch.long, device=device)
    crow[1:] = used.sum(1).cumsum(0)
    kept = used.reshape(-1).nonzero().squeeze(1)  # row-major: each row's entries in order
    with warnings.catch_warnings():  # torch flags sparse CSR as beta on every first use
        warnings.filterwarnings(
            "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
        )
        return torch.sparse_csr_tensor(
            crow,
            col.reshape(-1).index_select(0, kept),
            val.reshape(-1).index_select(0, kept),
            size=(rows, sum(sizes)),
            dtype=dtype,
            device=device,
            check_invariants=False,  # sorted, unique, in range by construction (tests check the result)
        )


def sparse_roi_align(
    features: list[Tensor],
    rois: Tensor,
    level_of_roi: Tensor,
    scales: list[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of `rois` (K x 5: image index, x1, y1, x2, y2) from `features[level_of_roi[k]]`: K x C x PH x PW."""
    if sampling_ratio <= 0:
        raise ValueError("sparse_roi_align needs a positive sampling_ratio")
    channels = features[0].shape[1]
    shapes = [(f.shape[0], f.shape[2], f.shape[3]) for f in features]
    stacked = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in features])
    weights = _sample_matrix(rois, level_of_roi, shapes, scales, output_size, sampling_ratio, aligned)
    pooled = weights.to(stacked.dtype) @ stacked  # (K * PH * PW, C)
    return pooled.reshape(rois.shape[0], *output_size, channels).permute(0, 3, 1, 2)


class MultiScaleRoIAlign(poolers.MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign, pooling through `sparse_roi_align` on the CPU (same results, faster)."""

    scales: list[float] | None
    map_levels: poolers.LevelMapper | None

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        maps = poolers._filter_input(x, self.featmap_names)
        cpu = all(m.device.type == "cpu" and m.dtype in (torch.float32, torch.float64) for m in maps)
        if not cpu or self.sampling_ratio <= 0 or torch.jit.is_scripting():
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = poolers._setup_scales(
                maps, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = poolers._convert_to_roi_format(boxes)
        if len(maps) == 1:
            levels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
        else:
            levels = self.map_levels(boxes)
            outside = (levels < 0) | (levels >= len(maps))  # a NaN box maps to no level
            if outside.any():  # torchvision leaves such rows zero: NaN coordinates pool zeros here
                rois = rois.clone()
                rois[outside, 1:] = float("nan")
                levels = levels.clamp(0, len(maps) - 1)
        size = self.output_size
        return sparse_roi_align(maps, rois, levels, self.scales, (size[0], size[-1]), self.sampling_ratio)
