import json

import pytest
import torch
from PIL import Image

from trainers.config import DataSpec, SplitSpec
from trainers.data import CocoDetection, hflip, load_datasets
from trainers.errors import FrostError
from trainers.evaluate import category_buckets, train_image_counts
from trainers.federated import resolve_protocol


def write_coco(root, annotations, images=None, categories=None, modes=("RGB", "L", "RGBA")):
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = images or [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
        {"id": 5, "file_name": "empty.png", "width": 64, "height": 48},
    ]
    for info, mode in zip(images, modes * 3):
        Image.new(mode, (info["width"], info["height"])).save(root / "images" / info["file_name"])
    categories = categories or [
        {"id": 3, "name": "cat3"},
        {"id": 7, "name": "cat7"},
        {"id": 42, "name": "cat42"},
    ]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return SplitSpec(annotations="train.json", images="images")


GOOD = [
    {"id": 10, "image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0},
    {"id": 11, "image_id": 1, "category_id": 42, "bbox": [30, 20, 30, 20], "area": 600, "iscrowd": 0},
    {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 1},
    {"id": 13, "image_id": 2, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
]


def test_reads_any_mode_remaps_categories_and_skips_crowd(tmp_path):
    data = CocoDetection(write_coco(tmp_path, GOOD), tmp_path)
    assert len(data) == 3
    assert data.categories.category_ids == (3, 7, 42)
    image, target = data[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [2, 3]
    assert target["boxes"].tolist() == [[4, 4, 24, 14], [30, 20, 60, 40]]
    _, target = data[1]  # the crowd box is not a training target
    assert target["labels"].tolist() == [1]
    _, target = data[2]  # an image without annotations is kept, with empty targets
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert [data.categories.category(label) for label in (1, 2, 3)] == [3, 7, 42]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"bbox": [50, 40, 30, 20]}, "annotation id 99 .*outside the 64x48 image"),
        ({"bbox": [5, 5, 0, 10]}, "annotation id 99 .*zero or negative area"),
        ({"bbox": [5, 5]}, "annotation id 99 .*must be \\[x, y, w, h\\]"),
        ({"category_id": 8}, "annotation id 99: unknown category id 8"),
    ],
)
def test_bad_annotations_name_file_and_id(tmp_path, bad, message):
    ann = {"id": 99, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0, **bad}
    with pytest.raises(FrostError, match=f"train.json: {message}"):
        CocoDetection(write_coco(tmp_path, GOOD + [ann]), tmp_path)


def test_drop_invalid_boxes_drops_and_says_how_many(tmp_path, capsys):
    bad = [
        {"id": 98, "image_id": 1, "category_id": 3, "bbox": [50, 40, 30, 20], "area": 1, "iscrowd": 0},
        {"id": 99, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 0], "area": 0, "iscrowd": 0},
    ]
    data = CocoDetection(write_coco(tmp_path, GOOD + bad), tmp_path, drop_invalid_boxes=True)
    assert data.dropped_boxes == 2
    assert "dropped 2 invalid box(es)" in capsys.readouterr().err
    assert data[0][1]["labels"].tolist() == [2, 3]


def test_missing_image_names_the_file(tmp_path):
    split = write_coco(tmp_path, GOOD)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(FrostError, match="image id 2: missing image file .*b.png"):
        CocoDetection(split, tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    split = write_coco(tmp_path, GOOD)
    (tmp_path / "images" / "a.png").write_bytes(b"not a png")
    data = CocoDetection(split, tmp_path)
    with pytest.raises(FrostError, match="a.png: unreadable image"):
        data[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "expected a COCO object"),
        ('{"images": []}', "not COCO format"),
    ],
)
def test_malformed_json_names_the_file(tmp_path, text, message):
    (tmp_path / "train.json").write_text(text)
    with pytest.raises(FrostError, match=f"train.json: {message}"):
        CocoDetection(SplitSpec(annotations="train.json", images="images"), tmp_path)


def test_missing_annotation_file_names_it(tmp_path):
    with pytest.raises(FrostError, match="nope.json: cannot read"):
        CocoDetection(SplitSpec(annotations="nope.json", images="images"), tmp_path)


def test_hflip_mirrors_boxes():
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    image[:, :, :5] = 255
    flipped, target = hflip(image, {"boxes": torch.tensor([[0.0, 1.0, 5.0, 4.0]])})
    assert target["boxes"].tolist() == [[15.0, 1.0, 20.0, 4.0]]
    assert flipped[:, :, 15:].float().mean() == 255


def test_lvis_format_training_set(tmp_path, capsys):
    """LVIS-format data trains: a category in no training image keeps its label, `frequency` sets the
    buckets, and a training image whose every annotation is ignored (here: a crowd region) is skipped and
    counted; the val split keeps it (LVIS evaluation scores negatives there)."""
    categories = [
        {"id": 3, "name": "cat3", "frequency": "f"},
        {"id": 7, "name": "cat7", "frequency": "c"},
        {"id": 42, "name": "cat42", "frequency": "r"},  # in no training image
    ]
    crowd_only = {
        "id": 12,
        "image_id": 2,
        "category_id": 3,
        "bbox": [0, 0, 64, 48],
        "area": 3072,
        "iscrowd": 1,
    }
    images = [
        {"id": i, "file_name": f"{i}.png", "width": 64, "height": 48, "neg_category_ids": [42],
         "not_exhaustive_category_ids": []}
        for i in (1, 2, 5)
    ]  # fmt: skip
    split = write_coco(tmp_path, [GOOD[0], crowd_only], images=images, categories=categories)
    data = DataSpec(source="coco", root=str(tmp_path), train=split, val=split)
    train, val = load_datasets(data)
    assert train.image_ids == [1, 5] and val.image_ids == [1, 2, 5]
    assert "skipped 1 image(s) whose annotations are all ignored" in capsys.readouterr().err
    assert train.categories.category_ids == (3, 7, 42) and train.categories.label(42) == 3
    assert category_buckets(train.coco) == {3: "f", 7: "c", 42: "r"}
    assert train_image_counts(train.coco) == {3: 0, 7: 1, 42: 0}
    assert resolve_protocol("auto", val.coco) == "lvis"
    # The rule is the same for COCO-format data; an image with a crowd region and a box keeps its box.
    coco_split = write_coco(tmp_path / "coco", GOOD)
    train, _ = load_datasets(
        DataSpec(source="coco", root=str(tmp_path / "coco"), train=coco_split, val=coco_split)
    )
    assert train.image_ids == [1, 2, 5]  # image 2 also holds a non-crowd box: kept
