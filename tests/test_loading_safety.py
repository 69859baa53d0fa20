"""What frost reads back from storage is the file it checked, and only files inside the folders it names."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from trainers import feature_store
from trainers.feature_store import open_shard, write_shard

KEY = {"backbone": "resnet18", "split": "train"}


def _shard(path: Path, fill: float) -> None:
    write_shard(path, KEY, [1, 2], iter([{"p2": np.full((2, 3, 2, 2), fill, dtype=np.float32)}]))


def test_a_shard_is_mapped_through_the_handle_that_was_verified(tmp_path, monkeypatch):
    """A shard swapped in at the path once its checksum was verified is not what gets read."""
    path = tmp_path / "s.fc"
    _shard(path, 1.0)
    _shard(
        tmp_path / "other.fc", 7.0
    )  # same key and size, other values: what a writer of the cache could plant

    real_sha256 = hashlib.sha256

    class SwapAfterVerify:  # sha256 as usual; the swap happens the moment the digest has been taken
        def __init__(self):
            self._sha = real_sha256()

        def update(self, data):
            self._sha.update(data)

        def digest(self):
            digest = self._sha.digest()
            os.replace(tmp_path / "other.fc", path)
            return digest

    monkeypatch.setattr(feature_store.hashlib, "sha256", SwapAfterVerify)
    shard = open_shard(path, KEY)
    assert float(shard.records["p2"].max()) == 1.0  # the verified bytes, not the planted 7.0


# --------------------------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco") / "data"
    assert main(["data", "synth", str(out), "--set", "train_images=2", "--set", "val_images=2",
                 "--set", "image_size=64", "--set", "classes=2"]) == 0  # fmt: skip
    return out


@pytest.mark.parametrize("escape", ["../outside.png", "{abs}"], ids=["dot-dot", "absolute"])
def test_prediction_plots_never_read_an_image_outside_the_image_folder(tmp_path, dataset, escape):
    import shutil

    from service.tracking.artifacts import plot_predictions

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    val = root / "annotations" / "val.json"
    coco = json.loads(val.read_text())
    first = coco["images"][0]
    outside = tmp_path / "data" / "outside.png"  # a real image, one folder above images/
    shutil.copyfile(root / "images" / first["file_name"], outside)
    for image in coco["images"]:
        image["file_name"] = escape.replace("{abs}", str(outside))
    val.write_text(json.dumps(coco))
    spec = {"data": {"source": "coco", "root": str(root)}}
    opened = []
    import matplotlib.pyplot as plt

    real = plt.imread

    def imread(name, *args, **kwargs):  # records what is opened; the reading itself is matplotlib's
        opened.append(Path(name).resolve())
        return real(name, *args, **kwargs)

    plt.imread = imread
    try:
        assert plot_predictions(spec, [], tmp_path / "predictions.png") is None  # nothing left to draw
    finally:
        plt.imread = real
    assert outside.resolve() not in opened
