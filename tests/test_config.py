import pytest

from trainers.config import TrialSpec, load_trial_spec
from trainers.errors import FrostError


def test_defaults_describe_a_cpu_trial():
    spec = TrialSpec()
    assert spec.data.source == "synth"
    assert spec.backbone.freeze == "frozen" and spec.backbone.weights == "builtin"
    assert spec.input.image_size <= 128 and spec.train.device == "auto"


@pytest.mark.parametrize(
    ("value", "mode", "stages"),
    [
        ("frozen", "frozen", 0),
        ("finetune", "finetune", 4),
        ("partial:2", "partial", 2),
        ("partial:9", "partial", 4),
    ],
)
def test_freeze_forms(value, mode, stages):
    backbone = load_trial_spec(None, [f"backbone.freeze={value}"]).backbone
    assert backbone.freeze_mode == mode
    assert backbone.trainable_stages(4) == stages


def test_partial_mapping_form_is_normalised(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("backbone:\n  freeze: {partial: 3}\ntrain:\n  epochs: 2\n")
    spec = load_trial_spec(path)
    assert spec.backbone.freeze == "partial:3" and spec.train.epochs == 2


def test_overrides_parse_yaml_scalars_and_revalidate():
    spec = load_trial_spec(None, ["train.epochs=3", "optim.lr=0.5", "backbone.returned_stages=[3, 4]"])
    assert (spec.train.epochs, spec.optim.lr, spec.backbone.returned_stages) == (3, 0.5, [3, 4])


def test_bad_values_name_every_field():
    with pytest.raises(FrostError) as info:
        load_trial_spec(None, ["backbone.freeze=banana", "heads.nope=1", "train.epochs=0"])
    message = str(info.value)
    assert "backbone.freeze: must be 'frozen', 'finetune' or 'partial:K'" in message
    assert "heads.nope: unknown field" in message
    assert "train.epochs:" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "train: [\n"])
def test_bad_yaml_files_name_the_file(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FrostError, match="bad.yaml"):
        load_trial_spec(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(FrostError, match="cannot read"):
        load_trial_spec(tmp_path / "absent.yaml")


def test_coco_source_needs_a_root():
    with pytest.raises(FrostError, match="data.root is required"):
        load_trial_spec(None, ["data.source=coco"])


def test_detection_cap_is_raised_to_the_evaluations_never_lowered():
    spec = TrialSpec()
    assert spec.heads.detections_per_image == 100  # COCO's cap
    assert spec.with_detection_cap(300).heads.detections_per_image == 300  # LVIS evaluates 300 per image
    assert spec.with_detection_cap(100) is spec
    roomy = TrialSpec.model_validate({"heads": {"detections_per_image": 500}})
    assert roomy.with_detection_cap(300).heads.detections_per_image == 500
    assert spec.heads.detections_per_image == 100  # a copy: the trial's own spec is unchanged


def test_eval_protocol_fields():
    assert (TrialSpec().eval.protocol, TrialSpec().eval.max_detections) == ("auto", None)
    with pytest.raises(FrostError, match="eval.protocol"):
        load_trial_spec(overrides=["eval.protocol=voc"])
    with pytest.raises(FrostError, match="data.synth.format"):
        load_trial_spec(overrides=["data.synth.format=yolo"])
