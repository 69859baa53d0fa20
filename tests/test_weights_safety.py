"""Weights named in a spec never run code: https:// only, loaded with weights_only=True, optional sha256 pin."""

from __future__ import annotations

import hashlib
import os
import pickle
import uuid

import pytest
import torch

from trainers.config import load_trial_spec
from trainers.errors import FrostError
from trainers.weights import load_classifier_state


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload_file(path, marker):
    with path.open("wb") as fh:
        pickle.dump({"state_dict": Payload(marker)}, fh)
    return path


def test_a_url_served_pickle_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    # What a download of https://example.invalid/cls.pt would leave in torch.hub's cache (nothing is fetched).
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "cls.pt"
    cached.parent.mkdir(parents=True)
    _payload_file(cached, marker)
    with pytest.raises(FrostError, match="not a readable PyTorch checkpoint"):
        load_classifier_state("resnet18", "https://example.invalid/cls.pt")
    assert not marker.exists()


def test_plain_http_weights_are_refused_by_validation():
    with pytest.raises(FrostError, match="backbone.weights"):
        load_trial_spec(None, ["backbone.weights=http://example.invalid/cls.pt"])


def test_a_pinned_sha256_is_checked_before_anything_is_loaded(tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    path = _payload_file(tmp_path / "cls.pt", marker)
    with pytest.raises(FrostError, match="weights_sha256"):
        load_classifier_state("resnet18", str(path), sha256="0" * 64)
    assert not marker.exists()
    good = tmp_path / "good.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, good)
    pin = hashlib.sha256(good.read_bytes()).hexdigest()
    with pytest.raises(FrostError) as refused:  # the pin matches: what fails now is the content, not the pin
        load_classifier_state("resnet18", str(good), sha256=pin)
    assert "weights_sha256" not in str(refused.value)


@pytest.mark.parametrize("stages", ["[4,3]", "[0,1]", "[2,5]", "[]", "[2,2,3]"])
def test_returned_stages_out_of_order_or_range_are_rejected_by_validation(stages):
    with pytest.raises(FrostError, match="backbone.returned_stages"):
        load_trial_spec(None, [f"backbone.returned_stages={stages}"])


def test_imagenet_weights_served_as_a_pickle_never_run(tmp_path, monkeypatch):
    """What torchvision's URL serves is loaded like any checkpoint: a pickle there is refused, not run."""
    from trainers.weights import imagenet_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FROST_OFFLINE", raising=False)
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    url, cached = imagenet_weights_file("resnet18")
    assert str(cached).startswith(str(tmp_path / "torch"))
    served = []

    def serve_pickle(requested, dst, hash_prefix=None, progress=True):  # the network, not the code under test
        served.append((requested, hash_prefix))
        _payload_file(type(cached)(dst), marker)

    monkeypatch.setattr(torch.hub, "download_url_to_file", serve_pickle)
    with pytest.raises(FrostError, match="not a readable PyTorch checkpoint"):
        load_classifier_state("resnet18", "imagenet")
    assert not marker.exists()
    assert served == [
        (url, cached.name.split("-")[-1].split(".")[0])
    ]  # the file name's sha256 prefix is checked


def test_imagenet_weights_planted_in_the_hub_cache_never_run(tmp_path, monkeypatch):
    from trainers.weights import imagenet_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    _, cached = imagenet_weights_file("resnet18")
    cached.parent.mkdir(parents=True)
    _payload_file(cached, marker)
    with pytest.raises(FrostError, match="not a readable PyTorch checkpoint"):
        load_classifier_state("resnet18", "imagenet")
    assert not marker.exists()
