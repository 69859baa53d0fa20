"""trainers/roi_align.py: the sparse-matrix RoIAlign equals torchvision's, outputs and gradients, edge cases included.

Compared in float64, so the tolerance is rounding, not a loose bound: a wrong sample point, weight, clamp,
level or image index moves the result by orders of magnitude more.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from test_models import batch, make_spec
from torchvision.ops import MultiScaleRoIAlign as TorchvisionPool
from torchvision.ops import roi_align

from trainers.models import build_detector
from trainers.roi_align import MultiScaleRoIAlign, sparse_roi_align

TOL = dict(rtol=0.0, atol=1e-10)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FROST_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("FROST_HOME", str(tmp_path / "frost-home"))


def edge_rois(height: int, width: int, scale: float) -> torch.Tensor:
    """RoIs (image, x1, y1, x2, y2) in image pixels that hit every branch of the bilinear sampler."""
    w, h = width / scale, height / scale  # the image extent the map covers
    boxes = [
        [0, 0, 0, w, h],  # the whole image: samples on the last row and column
        [1, 0, 0, 1, 1],  # smaller than a cell: several samples share cells
        [0, w - 1, h - 1, w, h],  # the bottom-right corner
        [1, 2.3, 4.1, 2.4, 4.2],  # degenerate: forced to 1 x 1 when not aligned
        [0, -3 / scale, -3 / scale, 2 / scale, 2 / scale],  # starts beyond -1: those samples count zero
        [1, w - 2 / scale, h / 2, w + 4 / scale, h + 4 / scale],  # ends beyond the map
        [0, 5.5, 3.25, 5.5, 40.0],  # zero width
        [1, 7.0, 9.0, 3.0, 2.0],  # x2 < x1 and y2 < y1
    ]
    g = torch.Generator().manual_seed(1)
    for _ in range(24):
        x1, y1 = torch.rand(2, generator=g) * torch.tensor([w, h])
        bw, bh = torch.rand(2, generator=g) * torch.tensor([w, h]) / 2
        boxes.append([float(torch.randint(0, 2, (1,), generator=g)), x1, y1, x1 + bw, y1 + bh])
    return torch.tensor(boxes, dtype=torch.float64)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(("output_size", "sampling_ratio"), [((7, 7), 2), ((3, 5), 3), ((14, 14), 1)])
def test_one_level_equals_torchvision(
    aligned: bool, output_size: tuple[int, int], sampling_ratio: int
) -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 10, 12, generator=g, dtype=torch.float64, requires_grad=True)
    rois = edge_rois(10, 12, 0.125)
    ours = sparse_roi_align(
        [features],
        rois,
        torch.zeros(len(rois), dtype=torch.long),
        [0.125],
        output_size,
        sampling_ratio,
        aligned,
    )
    theirs = roi_align(features, rois, output_size, 0.125, sampling_ratio, aligned)
    assert ours.shape == theirs.shape == (len(rois), 5, *output_size)
    torch.testing.assert_close(ours, theirs, **TOL)
    grad = torch.randn(theirs.shape, generator=g, dtype=torch.float64)
    (ours_grad,) = torch.autograd.grad(ours, features, grad)
    (theirs_grad,) = torch.autograd.grad(theirs, features, grad)
    assert theirs_grad.abs().sum() > 0
    torch.testing.assert_close(ours_grad, theirs_grad, **TOL)


def pyramid(batch_size: int, size: int, dtype: torch.dtype) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return OrderedDict(
        (
            name,
            torch.randn(
                batch_size, 6, size // stride, size // stride, generator=g, dtype=dtype
            ).requires_grad_(),
        )
        for name, stride in (("0", 4), ("1", 8), ("skipped", 8), ("2", 16), ("3", 32))
    )


def image_boxes(count: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * size
    wh = (
        torch.rand(count, 2, generator=g) ** 2 * size
    )  # many small, some image-sized: every FPN level gets RoIs
    return torch.cat([xy, (xy + wh).clamp(max=size)], 1).double()


def test_multiscale_pool_equals_torchvision_across_levels_and_images() -> None:
    size, names = 512, ["0", "1", "2", "3"]
    features = pyramid(3, size, torch.float64)
    boxes = [image_boxes(40, size, 0), torch.zeros(0, 4, dtype=torch.float64), image_boxes(25, size, 1)]
    shapes = [(size, size)] * 3
    ours_pool, theirs_pool = MultiScaleRoIAlign(names, 7, 2), TorchvisionPool(names, 7, 2)
    ours, theirs = ours_pool(features, boxes, shapes), theirs_pool(features, boxes, shapes)
    levels = theirs_pool.map_levels(boxes)  # type: ignore[misc]
    assert len(levels.unique()) >= 3, "the boxes must spread over the levels for this test to mean anything"
    torch.testing.assert_close(ours, theirs, **TOL)
    grad = torch.randn(theirs.shape, dtype=torch.float64)
    maps = [features[n] for n in names]
    for ours_grad, theirs_grad in zip(
        torch.autograd.grad(ours, maps, grad), torch.autograd.grad(theirs, maps, grad), strict=True
    ):
        torch.testing.assert_close(ours_grad, theirs_grad, **TOL)
    assert features["skipped"].grad is None


def test_non_finite_boxes_pool_zeros_and_leave_the_others_alone() -> None:
    """A diverging model can hand the pool NaN / inf boxes: they must not index outside the maps."""
    g = torch.Generator().manual_seed(4)
    features = torch.randn(2, 5, 10, 12, generator=g, dtype=torch.float64)
    rois = edge_rois(10, 12, 0.125)
    bad = torch.tensor(
        [[0, float("nan"), 1, 20, 30], [1, 2, float("inf"), 40, 50], [0, -float("inf"), 0, float("inf"), 60]],
        dtype=torch.float64,
    )
    levels = torch.zeros(len(rois) + len(bad), dtype=torch.long)
    pooled = sparse_roi_align([features], torch.cat([rois, bad]), levels, [0.125], (7, 7), 2)
    assert torch.equal(pooled[len(rois) :], torch.zeros(len(bad), 5, 7, 7, dtype=torch.float64))
    torch.testing.assert_close(pooled[: len(rois)], roi_align(features, rois, 7, 0.125, 2), **TOL)


def test_a_nan_box_maps_to_no_level_and_pools_zeros_as_in_torchvision() -> None:
    size, names = 512, ["0", "1", "2", "3"]
    features = pyramid(2, size, torch.float64)
    boxes = [image_boxes(10, size, 5), image_boxes(10, size, 6)]
    boxes[1][3] = torch.tensor([float("nan"), 10.0, 50.0, 60.0], dtype=torch.float64)
    shapes = [(size, size)] * 2
    ours = MultiScaleRoIAlign(names, 7, 2)(features, boxes, shapes)
    theirs = TorchvisionPool(names, 7, 2)(features, boxes, shapes)
    assert not ours[13].any()
    torch.testing.assert_close(ours, theirs, **TOL)


def test_no_boxes_gives_an_empty_result_with_a_graph() -> None:
    features = pyramid(2, 64, torch.float32)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    pooled = MultiScaleRoIAlign(["0", "1"], 7, 2)(features, empty, [(64, 64)] * 2)
    assert pooled.shape == (0, 6, 7, 7)
    pooled.sum().backward()
    assert features["0"].grad is not None and not features["0"].grad.any()


def test_other_cases_go_to_torchvision_unchanged() -> None:
    """Adaptive sampling (ratio 0) and half precision are torchvision's own path: identical results."""
    size, names = 256, ["0", "1", "2"]
    boxes = [image_boxes(20, size, 3)]
    for ratio, dtype in ((0, torch.float32), (2, torch.float16)):
        features = pyramid(1, size, dtype)
        box = [b.to(dtype) for b in boxes]
        ours = MultiScaleRoIAlign(names, 7, ratio)(features, box, [(size, size)])
        theirs = TorchvisionPool(names, 7, ratio)(features, box, [(size, size)])
        assert torch.equal(ours, theirs)


def test_faster_rcnn_pools_through_it_and_its_losses_equal_torchvision_pooling() -> None:
    """One training forward of a frost Faster R-CNN, once with each pool, from the same weights and RNG state."""
    model = build_detector(make_spec(detector="faster_rcnn"), num_classes=3)
    assert isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIAlign)
    model.train()
    images, targets = batch()
    torch.manual_seed(0)
    ours = model(images, targets)
    pool = model.roi_heads.box_roi_pool
    model.roi_heads.box_roi_pool = TorchvisionPool(pool.featmap_names, pool.output_size, pool.sampling_ratio)
    torch.manual_seed(0)
    theirs = model(images, targets)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
