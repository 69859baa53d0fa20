"""Bad input gets one clear line naming the file, field or flag, exit 2, and no traceback.

Each case is run through the real command line (in-process); none may reach training or Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.cli import main

GOOD_TRIAL = "train: {epochs: 1}\n"


def _specs(tmp_path):
    """name -> (file content as bytes, what the message must name)."""
    deep = "a: " + "[" * 200 + "]" * 200 + "\n"
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(15)
    )
    return {
        "binary": (bytes(range(256)) * 4, "spec.yaml"),
        "latin1": ("name: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        "deep": (deep.encode(), "nested"),
        "alias-bomb": (laughs.encode(), "aliases"),
        "top-level-list": (b"- 1\n- 2\n", "mapping"),
        "top-level-int-key": (b"1: 2\n", "keys"),
        "bad-yaml": (b"a: [1, 2\n", "not valid YAML"),
        "inf-lr": (b"optim: {lr: .inf}\n", "optim.lr"),
        "nan-lr": (b"optim: {lr: .nan}\n", "optim.lr"),
        "unknown-field": (b"optim: {lr: 0.1, lrr: 2}\n", "optim.lrr"),
        "string-epochs": (b"train: {epochs: many}\n", "train.epochs"),
    }


CASES = ["binary", "latin1", "deep", "alias-bomb", "top-level-list", "top-level-int-key", "bad-yaml",
         "inf-lr", "nan-lr", "unknown-field", "string-epochs"]  # fmt: skip


def _assert_user_error(code, capsys, *needles):
    captured = capsys.readouterr()
    assert code == 2, captured.err[-2000:]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    for needle in needles:
        assert needle in captured.err, captured.err[-2000:]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_trial_spec_is_a_user_error(tmp_path, capsys, case):
    content, needle = _specs(tmp_path)[case]
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    code = main(["train", str(path), "--out", str(tmp_path / "out")])
    _assert_user_error(code, capsys, needle)
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("case", CASES[:7])
def test_a_bad_sweep_spec_file_is_a_user_error(tmp_path, capsys, case):
    content, needle = _specs(tmp_path)[case]
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    _assert_user_error(main(["validate", str(path)]), capsys, needle)


def test_a_spec_that_is_a_folder_or_missing(tmp_path, capsys):
    _assert_user_error(main(["validate", str(tmp_path)]), capsys, "folder")
    _assert_user_error(main(["validate", str(tmp_path / "nope.yaml")]), capsys, "nope.yaml")


def test_out_naming_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    _assert_user_error(main(["train", "--out", str(tmp_path / "f")]), capsys, "--out")


@pytest.mark.parametrize("command", [["ls"], ["status", "x"], ["resume", "x"]])
def test_root_naming_a_file(tmp_path, capsys, command):
    (tmp_path / "f").write_text("x")
    _assert_user_error(main([*command, "--root", str(tmp_path / "f")]), capsys, "--root")


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc", ".."])
@pytest.mark.parametrize("command", ["status", "resume"])
def test_sweep_names_that_are_paths(tmp_path, capsys, command, name):
    _assert_user_error(main([command, name, "--root", str(tmp_path)]), capsys, "sweep name")


def test_an_unreachable_cluster_fails_at_once_before_anything_is_prepared(tmp_path, capsys):
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = Path(__file__).resolve().parents[1] / "sweeps" / "catalog" / "smoke.yaml"
    code = main(["run", str(spec), "--address", f"127.0.0.1:{port}", "--root", str(tmp_path)])
    _assert_user_error(code, capsys, f"127.0.0.1:{port}")
    assert not (tmp_path / "sweeps").exists()  # nothing prepared, nothing written


@pytest.mark.parametrize("where", ["root", "sweeps", "sweep"])
@pytest.mark.parametrize("kind", ["group-writable", "other-owner"])
def test_storage_others_may_write_is_refused(tmp_path, capsys, kind, where):
    root = tmp_path / "root"
    target = {"root": root, "sweeps": root / "sweeps", "sweep": root / "sweeps" / "smoke"}[where]
    target.mkdir(parents=True)
    spec = Path(__file__).resolve().parents[1] / "sweeps" / "catalog" / "smoke.yaml"
    if kind == "group-writable":
        target.chmod(0o775)
        _assert_user_error(main(["run", str(spec), "--root", str(root)]), capsys, str(target), "chmod g-w")
        return
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    other = os.geteuid() + 4242  # a uid that is not ours
    os.chown(target, other, -1)
    try:
        code = main(["run", str(spec), "--root", str(root)])
    finally:
        os.chown(target, os.geteuid(), -1)
    _assert_user_error(code, capsys, str(target), f"owned by uid {other}", "chown")


def test_folders_frost_creates_pass_its_own_check_under_a_group_writable_umask(tmp_path):
    from service.project import check_private, make_folder

    old = os.umask(0o002)  # common on shared machines: new folders would be group-writable
    try:
        make_folder(tmp_path / "root" / "sweeps" / "smoke")
    finally:
        os.umask(old)
    folders = [tmp_path / "root", tmp_path / "root" / "sweeps", tmp_path / "root" / "sweeps" / "smoke"]
    assert all(f.stat().st_mode & 0o022 == 0 for f in folders)
    check_private(*folders)  # no FrostError


def test_storage_every_user_may_write_is_refused(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o777)
    spec = Path(__file__).resolve().parents[1] / "sweeps" / "catalog" / "smoke.yaml"
    _assert_user_error(main(["run", str(spec), "--root", str(root)]), capsys, "writable by every user")
    assert not (root / "sweeps").exists()


# --------------------------------------------------------------------------------------------- output folders
@contextlib.contextmanager
def _unwritable(folder: Path):
    """`folder`, which no write into can succeed: mode 0500 for a normal user; for root, whom permission bits do
    not stop, the immutable flag of ext4 (chattr +i), which stops root too. Skipped where neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield folder
        finally:
            folder.chmod(0o700)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root ignores permission bits and this file system has no immutable flag (chattr +i)")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _out_argv(command: str, target: Path) -> list[str]:
    return {
        "train": ["train", "--out", str(target)],
        "synth": ["data", "synth", str(target), "--set", "train_images=2", "--set", "val_images=1"],
        "pretrain": ["pretrain", "--out", str(target / "p.pt")],
    }[command]


@pytest.mark.parametrize("command", ["train", "synth", "pretrain"])
@pytest.mark.parametrize("kind", ["is-a-file", "under-a-file", "not-writable"])
def test_an_output_folder_that_cannot_be_written(tmp_path, capsys, command, kind):
    needle = {"train": "--out", "synth": "OUT_DIR", "pretrain": "--out"}[command]
    if kind == "is-a-file":
        target = tmp_path / "out"
        target.write_text("x")
        if command == "pretrain":  # pretrain's --out is a file: its folder is the one that must be writable
            target = tmp_path / "f"
            target.write_text("x")
            argv = ["pretrain", "--out", str(target / "sub" / "p.pt")]
        else:
            argv = _out_argv(command, target)
        _assert_user_error(main(argv), capsys, needle, "file")
    elif kind == "under-a-file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "deeper" / "out"
        _assert_user_error(
            main(_out_argv(command, target)), capsys, needle, f"{tmp_path / 'f'}, which is a file"
        )
    else:
        with _unwritable(tmp_path / "locked") as locked:
            target = locked / "out" if command != "pretrain" else locked
            _assert_user_error(main(_out_argv(command, target)), capsys, needle, "not writable")


def test_pretrain_out_naming_a_folder(tmp_path, capsys):
    _assert_user_error(main(["pretrain", "--out", str(tmp_path)]), capsys, "--out", "is a folder")


def _saved_sweep(root: Path, name: str = "smoke") -> Path:
    folder = root / "sweeps" / name
    folder.mkdir(parents=True)
    shutil.copy(CATALOG / "smoke.yaml", folder / "frost-sweep.yaml")
    return folder


@pytest.mark.parametrize("kind", ["is-a-file", "symlink-to-a-file", "not-writable"])
def test_a_report_folder_that_cannot_be_written(tmp_path, capsys, kind):
    folder = _saved_sweep(tmp_path)
    if kind == "is-a-file":
        (folder / "report").write_text("x")
        needle = "is a file"
    elif kind == "symlink-to-a-file":
        (tmp_path / "elsewhere").write_text("x")
        (folder / "report").symlink_to(tmp_path / "elsewhere")
        needle = "is a file"
    else:
        needle = "not writable"
    with contextlib.ExitStack() as stack:
        if kind == "not-writable":
            stack.enter_context(_unwritable(folder / "report"))
        code = main(["report", "smoke", "--root", str(tmp_path)])
    _assert_user_error(code, capsys, "report folder", str(folder / "report"), needle)


# --------------------------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny real COCO dataset written by `frost data synth`; each case corrupts a copy of its train file."""
    out = tmp_path_factory.mktemp("coco")
    assert main(["data", "synth", str(out), "--set", "train_images=4", "--set", "val_images=2",
                 "--set", "image_size=64", "--set", "classes=3"]) == 0  # fmt: skip
    return out


def _mutations():
    def image(key, value):
        return lambda d: d["images"][0].__setitem__(key, value)

    def ann(key, value):
        return lambda d: d["annotations"][0].__setitem__(key, value)

    def cat(key, value):
        return lambda d: d["categories"][0].__setitem__(key, value)

    return {
        "width-string": (image("width", "wide"), "images[0].width"),
        "height-null": (image("height", None), "images[0].height"),
        "width-zero": (image("width", 0), "images[0].width"),
        "width-bool": (image("width", True), "images[0].width"),
        "image-id-list": (image("id", [1]), "images[0].id"),
        "image-id-string": (image("id", "1"), "images[0].id"),
        "image-id-duplicate": (lambda d: d["images"][1].__setitem__("id", d["images"][0]["id"]), "twice"),
        "file-name-escapes": (image("file_name", "../../etc/passwd"), "leaves the image folder"),
        "file-name-absolute": (image("file_name", "/etc/passwd"), "leaves the image folder"),
        "file-name-number": (image("file_name", 7), "images[0].file_name"),
        "neg-ids-not-list": (image("neg_category_ids", "1,2"), "neg_category_ids"),
        "category-id-string": (cat("id", "1"), "categories[0].id"),
        "category-not-object": (lambda d: d["categories"].__setitem__(0, 5), "categories[0]"),
        "ann-category-string": (ann("category_id", "1"), "annotations[0].category_id"),
        "ann-image-missing": (ann("image_id", 10**9), "no image with id"),
        "ann-id-null": (ann("id", None), "annotations[0].id"),
        "ann-not-object": (lambda d: d["annotations"].__setitem__(0, []), "annotations[0]"),
        "bbox-strings": (ann("bbox", ["a", "b", "c", "d"]), "bbox must be numbers"),
        "bbox-short": (ann("bbox", [1, 2]), "bbox must be [x, y, w, h]"),
        "bbox-nan-x": (ann("bbox", [float("nan"), 1, 2, 2]), "not a finite number"),
        "bbox-inf-width": (ann("bbox", [1, 1, float("inf"), 2]), "not a finite number"),
        "bbox-minus-inf-y": (ann("bbox", [1, float("-inf"), 2, 2]), "not a finite number"),
        "bbox-nan-height": (ann("bbox", [1, 1, 2, float("nan")]), "not a finite number"),
        "neg-ids-unknown": (image("neg_category_ids", [999]), "neg_category_ids: unknown category id"),
        "not-exhaustive-unknown": (
            image("not_exhaustive_category_ids", [1, 12345]),
            "not_exhaustive_category_ids: unknown category id",
        ),
        "neg-ids-negative": (image("neg_category_ids", [-1]), "neg_category_ids: unknown category id"),
        "neg-ids-zero": (image("neg_category_ids", [0, 1]), "neg_category_ids: unknown category id"),
        "file-name-huge": (image("file_name", "../" * 5000), "characters)"),
        "images-not-list": (lambda d: d.__setitem__("images", {}), "missing list(s): images"),
        "top-level-list": (None, "expected a COCO object"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_a_malformed_coco_file_is_a_user_error(tmp_path, capsys, dataset, case):
    mutate, needle = _mutations()[case]
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    train = root / "annotations" / "train.json"
    data = json.loads(train.read_text())
    if mutate is None:
        data = [data]
    else:
        mutate(data)
    train.write_text(json.dumps(data))
    code = main(
        ["train", "--out", str(tmp_path / "out"), "--set", "data.source=coco", "--set", f"data.root={root}"]
    )
    _assert_user_error(code, capsys, "train.json", needle)


@pytest.mark.parametrize(
    ("content", "needle"), [(b"\xff\xfe{}", "not UTF-8"), (b"{" * 100_000, "malformed JSON")]
)
def test_unreadable_annotation_bytes(tmp_path, capsys, dataset, content, needle):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    (root / "annotations" / "train.json").write_bytes(content)
    code = main(
        ["train", "--out", str(tmp_path / "out"), "--set", "data.source=coco", "--set", f"data.root={root}"]
    )
    _assert_user_error(code, capsys, "train.json", needle)


# --------------------------------------------------------------------------------------------- sweep specs
CATALOG = Path(__file__).resolve().parents[1] / "sweeps" / "catalog"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: 'smoke\\n'", "name"),
        ("name: Smoke", "name"),
        ("samples: .inf", "samples"),
        ("samples: 0", "samples"),
        ("search: {optim.lr: {uniform: [0.0, .inf]}}", "optim.lr"),
        ("search: {optim.lr: {loguniform: [.nan, 0.1]}}", "optim.lr"),
        ("search: {optim.lr: {grid: []}}", "optim.lr"),
        ("search: {no.such.field: {grid: [1, 2]}}", "no.such.field"),
        ("trial: {backbone: {returned_stages: [4, 2]}}", "returned_stages"),
        ("trial: {backbone: {weights: 'http://example.invalid/w.pt'}}", "weights"),
    ],
)
def test_a_bad_sweep_field_is_a_user_error(tmp_path, capsys, text, needle):
    spec = yaml.safe_load((CATALOG / "smoke.yaml").read_text())
    spec.update(yaml.safe_load(text))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    _assert_user_error(main(["validate", str(path)]), capsys, needle)


def test_an_absurd_trial_count_needs_allow_large(tmp_path, capsys):
    spec = yaml.safe_load((CATALOG / "smoke.yaml").read_text())
    spec["search"] = {
        "backbone.freeze": {"grid": ["frozen", "finetune"]},  # smoke's scheduler stratifies by it
        "data.synth.seed": {"grid": list(range(200))},
        "optim.lr": {"grid": [i / 1e4 for i in range(1, 101)]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    _assert_user_error(main(["validate", str(path)]), capsys, "40,000 trials", "--allow-large")
    for command in (
        ["run", str(path), "--root", str(tmp_path / "r")],
        ["submit", str(path), "--address", "http://127.0.0.1:1"],
    ):
        _assert_user_error(main(command), capsys, "--allow-large")
    assert main(["validate", str(path), "--allow-large"]) == 0


# --------------------------------------------------------------------------------------------- flags and files
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--out", "{tmp}/o", "--set", "train.epochs"], "--set"),
        (["train", "--out", "{tmp}/o", "--set", "no.such=1"], "no: unknown field"),
        (["train", "--out", "{tmp}/o", "--set", "train.epochs=-1"], "train.epochs"),
        (["train", "--out", "{tmp}/o", "--set", "data.source=coco"], "data.root"),
        (
            ["train", "--out", "{tmp}/o", "--set", "data.source=coco", "--set", "data.root={tmp}/nowhere"],
            "data.root",
        ),
        (["data", "synth", "{tmp}/d", "--set", "classes=0"], "classes"),
        (["pretrain", "--backbone", "resnet1000", "--out", "{tmp}/p.pt"], "backbone"),
        (
            ["run", "{catalog}/smoke.yaml", "--address", "not-an-address", "--root", "{tmp}/r"],
            "not-an-address",
        ),
        (["validate", "{catalog}/smoke.yaml", "--set", "scheduler.stratify_by=optim.lr"], "stratify_by"),
        (["validate", "{catalog}/smoke.yaml", "--set", "samples=many"], "samples"),
    ],
)
def test_bad_flags(tmp_path, capsys, argv, needle):
    argv = [a.format(tmp=tmp_path, catalog=CATALOG) for a in argv]
    _assert_user_error(main(argv), capsys, needle)


@pytest.mark.parametrize("content", [b"\x00\x01\x02", b"name: [unclosed", b"- a list\n"])
@pytest.mark.parametrize("command", ["status", "resume"])
def test_a_corrupt_saved_spec_names_the_file(tmp_path, capsys, content, command):
    folder = tmp_path / "sweeps" / "demo"
    folder.mkdir(parents=True)
    (folder / "frost-sweep.yaml").write_bytes(content)
    _assert_user_error(main([command, "demo", "--root", str(tmp_path)]), capsys, "frost-sweep.yaml")


def test_a_corrupt_tracking_map_or_history_does_not_break_status(tmp_path, capsys):
    folder = tmp_path / "sweeps" / "smoke"
    (folder / "trials" / "t1" / "checkpoints" / "epoch-0001").mkdir(parents=True)
    shutil.copy(CATALOG / "smoke.yaml", folder / "frost-sweep.yaml")
    (folder / "tracking.json").write_bytes(b"\xff{")
    (folder / "trials" / "t1" / "checkpoints" / "epoch-0001" / "history.json").write_text('{"epoch": ')
    assert main(["status", "smoke", "--root", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [t["state"] for t in status["trials"]] == ["UNREADABLE"]


# --------------------------------------------------------------------------------------------- random mutations
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
)
_VALUES = st.recursive(
    _LEAVES, lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), catalog=st.sampled_from(sorted(p.name for p in CATALOG.glob("*.yaml"))))
def test_random_mutations_of_catalog_specs_never_crash(tmp_path, capsys, data, catalog):
    spec = yaml.safe_load((CATALOG / catalog).read_text())
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from([p for p in _paths(spec) if p]))
        node = spec
        for key in path[:-1]:
            node = node[key]
        if data.draw(st.booleans()):
            node[path[-1]] = data.draw(_VALUES)
        else:
            del node[path[-1]]
    file = tmp_path / "mutated.yaml"
    file.write_text(yaml.safe_dump(spec))
    code = main(["validate", str(file)])
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err[-2000:]
    assert "Traceback" not in captured.err


_SEARCH_PATHS = [
    "backbone.freeze",
    "neck.fpn_channels",
    "heads.box_convs",
    "seed",
    "optim.lr",
    "no.such",
    "",
    "a,b",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_joint_keys_strata_replicates_and_resources_never_crash(tmp_path, capsys, data):
    """The parts of a spec added since the first fuzz: joint search keys (several paths set together),
    ASHA's strata and replicate paths, and the data-parallel resources, mutated together."""
    spec = yaml.safe_load((CATALOG / "replication.yaml").read_text())
    paths = data.draw(st.lists(st.sampled_from(_SEARCH_PATHS), min_size=1, max_size=3))
    width = data.draw(st.sampled_from([len(paths), len(paths) + 1, max(len(paths) - 1, 0)]))
    rows = data.draw(st.lists(st.lists(_LEAVES, min_size=width, max_size=width), min_size=0, max_size=3))
    spec["search"][",".join(paths)] = data.draw(st.sampled_from([{"grid": rows}, {"choice": rows}, rows]))
    keys = [*spec["search"], *paths, "seed", data.draw(st.text(max_size=10))]
    spec["scheduler"] = {
        "type": data.draw(st.sampled_from(["asha", "fifo", "hyperband"])),
        "metric": "AP",
        "mode": "max",
        "grace_period": data.draw(st.integers(min_value=-1, max_value=9)),
        "max_epochs": 8,
        "stratify_by": data.draw(st.sampled_from(keys)),
        "replicates_by": data.draw(st.lists(st.sampled_from(keys), max_size=3)),
    }
    spec["resources"] = {
        "cpus": data.draw(st.one_of(st.integers(min_value=-2, max_value=64), st.floats(allow_nan=True))),
        "gpus": data.draw(st.sampled_from([0, 0.25, 1, 1.5, -1, "one"])),
        "workers_per_trial": data.draw(st.integers(min_value=-1, max_value=5)),
        "placement": data.draw(st.sampled_from(["pack", "spread", "", "STRICT_SPREAD", 3])),
    }
    file = tmp_path / "mutated.yaml"
    file.write_text(yaml.safe_dump(spec))
    code = main(["validate", str(file)])
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err[-2000:]
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    assert all(len(line) <= 600 for line in captured.err.splitlines()), "a message echoed a huge value"


# --------------------------------------------------------------------------------------------- state files
@pytest.mark.parametrize(
    "content",
    [b"\xff\x00garbage", b"[]", b'"boom"', b'{"epoch": 1}', b'{"error": 5}', b"", None],
    ids=["garbage", "list", "string", "no-error", "error-not-text", "empty", "folder"],
)
def test_a_failure_record_frost_did_not_write_is_bad_input(tmp_path, capsys, content):
    out = tmp_path / "out"
    out.mkdir()
    if content is None:
        (out / "failed.json").mkdir()
    else:
        (out / "failed.json").write_bytes(content)
    code = main(["train", "--out", str(out), "--set", "train.epochs=1"])
    _assert_user_error(code, capsys, str(out / "failed.json"), "remove it")


def test_a_real_failure_record_is_still_a_training_failure(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "failed.json").write_text('{"epoch": 2, "error": "non-finite loss"}')
    assert main(["train", "--out", str(out)]) == 1
    assert "non-finite loss" in capsys.readouterr().err


def _trial_folder(folder: Path, trial_id: str = "t1") -> Path:
    """A trial folder as the trainer leaves it: its spec and one epoch's history."""
    from trainers.config import TrialSpec, dump_trial_spec

    trial = folder / "trials" / trial_id
    (trial / "checkpoints" / "epoch-0001").mkdir(parents=True)
    dump_trial_spec(TrialSpec(), trial / "trial.yaml")
    (trial / "checkpoints" / "epoch-0001" / "history.json").write_text('[{"epoch": 1, "AP": 0.25}]')
    return trial


_TRACKING_MAPS = {
    "fate-a-list": {"trials": {"t1": {"fate": ["completed"], "status": "FINISHED"}}},
    "fate-a-number": {"trials": {"t1": {"fate": 5, "run_id": {"id": 1}}}},
    "status-an-object": {"trials": {"t1": {"status": {"RUNNING": True}}}},
    "record-a-list": {"trials": {"t1": ["completed"]}},
    "record-a-string": {"trials": {"t1": "completed"}},
    "trials-a-list": {"trials": [{"t1": {}}]},
    "uri-a-number": {"tracking_uri": 5, "parent_status": ["RUNNING"], "trials": {}},
}


@pytest.mark.parametrize("case", list(_TRACKING_MAPS))
def test_a_foreign_shaped_tracking_map_does_not_break_status(tmp_path, capsys, case):
    folder = _saved_sweep(tmp_path)
    _trial_folder(folder)
    (folder / "tracking.json").write_text(json.dumps(_TRACKING_MAPS[case]))
    assert main(["status", "smoke", "--root", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    status = json.loads(captured.out.strip().splitlines()[-1])
    assert [t["trial_id"] for t in status["trials"]] == ["t1"]


@pytest.mark.parametrize("case", ["fate-a-list", "fate-a-number", "record-a-list", "trials-a-list"])
def test_a_foreign_shaped_tracking_map_does_not_break_the_report(tmp_path, capsys, case):
    folder = _saved_sweep(tmp_path)
    _trial_folder(folder)
    (folder / "tracking.json").write_text(json.dumps(_TRACKING_MAPS[case]))
    assert main(["report", "smoke", "--root", str(tmp_path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["sweep"] == "smoke"
    assert (folder / "report" / "report.md").is_file()


def _decision(**changes):
    decision = {
        "trial_id": "t1", "stratum": "(all)", "rung": 1, "epoch": 1, "metric": "AP", "rung_metric": "last",
        "value": 0.1, "cutoff": 0.2, "configuration": "", "replicates_by": [], "replicates": {}, "trials": ["t1"],
    }  # fmt: skip
    decision.update(changes)
    return decision


@pytest.mark.parametrize(
    "decision",
    [
        _decision(value="0.1"),
        _decision(cutoff="0.2"),
        _decision(rung="1"),
        _decision(epoch=1.5),
        _decision(trials="t1"),
        _decision(replicates={"t1": "0.1"}),
        _decision(metric=None),
        "stopped",
    ],
    ids=[
        "value-text",
        "cutoff-text",
        "rung-text",
        "epoch-float",
        "trials-text",
        "replicate-text",
        "metric-null",
        "not-an-object",
    ],  # fmt: skip
)
def test_a_foreign_shaped_asha_decision_is_skipped_with_one_line(tmp_path, capsys, decision):
    folder = _saved_sweep(tmp_path)
    _trial_folder(folder)
    state = {"format": "frost.asha/2", "decisions": {"c1": decision, "c2": _decision(trials=["t2"])}}
    (folder / "asha-state.json").write_text(json.dumps(state))
    assert main(["status", "smoke", "--root", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "1 ASHA decision(s) of the wrong shape skipped" in captured.err
    status = json.loads(captured.out.strip().splitlines()[-1])
    assert [t["extra"]["asha"] if "extra" in t else t.get("asha") for t in status["trials"]] == [None]


def test_asha_decisions_that_are_not_a_mapping_are_ignored(tmp_path, capsys):
    folder = _saved_sweep(tmp_path)
    _trial_folder(folder)
    (folder / "asha-state.json").write_text(json.dumps({"format": "frost.asha/2", "decisions": [1, 2]}))
    assert main(["status", "smoke", "--root", str(tmp_path)]) == 0
    assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the feature cache
def _cache_key_dir(root: Path) -> Path:
    directory = root / "cache" / "features" / "k1"
    directory.mkdir(parents=True)
    return directory


def _shard_bytes(header) -> bytes:
    from trainers.feature_store import MAGIC

    raw = json.dumps(header).encode()
    return MAGIC + len(raw).to_bytes(8, "little") + raw + bytes(32)


@pytest.mark.parametrize(
    "header",
    [
        [],
        {"key": []},
        {"key": {"backbone": "resnet18"}, "image_ids": "1,2", "record": []},
        {"key": {}, "image_ids": [1], "record": [["a", "float32"]]},
        {"key": {}, "image_ids": [1], "record": [["a", "no-such-dtype", [2]]]},
        {"key": {}, "image_ids": [True], "record": [["a", "float32", [2]]]},
    ],
    ids=["list", "key-a-list", "ids-text", "field-short", "dtype-unknown", "ids-bools"],
)
@pytest.mark.parametrize("command", ["ls", "du", "clear"])
def test_a_shard_header_of_the_wrong_shape_does_not_break_the_cache_commands(
    tmp_path, capsys, header, command
):
    from trainers.feature_store import CorruptShard, open_shard

    directory = _cache_key_dir(tmp_path)
    (directory / "s.fc").write_bytes(_shard_bytes(header))
    assert main(["cache", command, "--root", str(tmp_path)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    if command == "ls":  # and a trial reading it treats it as corrupt (rebuilt), not as a crash
        with pytest.raises(CorruptShard, match="header"):
            open_shard(directory / "s.fc", {})


@pytest.mark.parametrize("debris", ["folder", "empty-file", "short-file"])
def test_folders_and_empty_files_are_not_counted_as_shards(tmp_path, capsys, debris):
    directory = _cache_key_dir(tmp_path)
    if debris == "folder":
        (directory / "x.fc").mkdir()
    else:
        (directory / "x.fc").write_bytes(b"" if debris == "empty-file" else b"FROSTFC1")
    assert main(["cache", "ls", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 shard(s)" in out, out


def test_a_key_lock_that_is_a_folder_is_skipped_with_one_line(tmp_path, capsys):
    directory = _cache_key_dir(tmp_path)
    (directory / ".lock").mkdir()
    assert main(["cache", "clear", "--root", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "kept k1: its lock" in captured.out and directory.is_dir()


@pytest.mark.parametrize("command", ["ls", "du", "clear"])
@pytest.mark.parametrize("kind", ["a-file", "missing", "under-a-file"])
def test_cache_root_checks_match_the_other_commands(tmp_path, capsys, command, kind):
    (tmp_path / "f").write_text("x")
    root = {"a-file": tmp_path / "f", "missing": tmp_path / "nowhere", "under-a-file": tmp_path / "f" / "r"}[
        kind
    ]
    _assert_user_error(main(["cache", command, "--root", str(root)]), capsys, "--root", str(root))
    assert not (tmp_path / "nowhere").exists()


# --------------------------------------------------------------------------------------------- numbers and sizes
def _bomb(levels: int, width: int, flow: bool = False) -> str:
    """A YAML "billion laughs" of few aliases: `levels` anchors of `width` aliases each (width**levels nodes)."""
    names = [f"l{i}" for i in range(levels + 1)]
    rows = [f"&{names[0]} [{', '.join(['x'] * width)}]"]
    rows += [f"&{names[i + 1]} [{', '.join([f'*{names[i]}'] * width)}]" for i in range(levels)]
    if flow:
        return "[" + ", ".join(rows) + "]"
    return "".join(f"k{i}: {row}\n" for i, row in enumerate(rows))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--out", "{tmp}/o", "--set", "optim.milestones=[0]"], "optim.milestones"),
        (["train", "--out", "{tmp}/o", "--set", "optim.milestones=[1.5]"], "optim.milestones"),
        (["train", "--out", "{tmp}/o", "--set", "optim.milestones=[0.5, -0.25]"], "optim.milestones"),
        (["train", "--out", "{tmp}/o", "--set", "optim.milestones=[.nan]"], "optim.milestones"),
        (["train", "--out", "{tmp}/o", "--set", "optim.milestones=[1]"], "optim.milestones"),
        (["train", "--out", "{tmp}/o", "--set", "cache.budget_mb=1e300"], "cache.budget_mb"),
        (["train", "--out", "{tmp}/o", "--set", "cache.budget_mb=.inf"], "cache.budget_mb"),
        (["train", "--out", "{tmp}/o", "--set", "cache.budget_mb=1e12"], "cache.budget_mb"),
        (["validate", "{catalog}/smoke.yaml", "--set", "trial.optim.milestones=[2]"], "optim.milestones"),
        (["validate", "{catalog}/smoke.yaml", "--set", "trial.cache.budget_mb=1e308"], "cache.budget_mb"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_field(tmp_path, capsys, argv, needle):
    argv = [a.format(tmp=tmp_path, catalog=CATALOG) for a in argv]
    _assert_user_error(main(argv), capsys, needle)
    assert not (tmp_path / "o" / "checkpoints").exists()


_LONG = 5000


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "{catalog}/smoke.yaml", "--set", "name=" + "x" * _LONG],
        ["validate", "{catalog}/smoke.yaml", "--set", "trial.backbone.freeze=" + "y" * _LONG],
        ["train", "--out", "{tmp}/o", "--set", "backbone.freeze=" + "y" * _LONG],
        ["train", "--out", "{tmp}/o", "--set", "z" * _LONG],
        ["train", "--out", "{tmp}/o", "--set", "optim.milestones=[" + "2, " * _LONG + "2]"],
        ["status", "n" * _LONG + "/x", "--root", "{tmp}"],
        ["validate", "{catalog}/smoke.yaml", "--set", "scheduler.stratify_by=" + "s" * _LONG],
    ],
    ids=[
        "sweep-name",
        "sweep-freeze",
        "trial-freeze",
        "set-no-equals",
        "milestones",
        "sweep-arg",
        "stratify",
    ],
)
def test_a_long_user_value_is_cut_in_the_message(tmp_path, capsys, argv):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{catalog}", str(CATALOG)) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "characters)" in err, err[:2000]
    assert max(len(line) for line in err.splitlines()) < 1000, err[:2000]


def test_a_long_value_in_a_spec_file_is_cut_in_the_message(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(f"backbone: {{freeze: '{'w' * _LONG}'}}\n")
    code = main(["train", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "backbone.freeze" in err and "characters)" in err, err[:2000]
    assert max(len(line) for line in err.splitlines()) < 1000


@pytest.mark.parametrize(("levels", "width"), [(9, 9), (6, 10), (4, 40), (3, 50)])
@pytest.mark.parametrize("command", ["train", "validate"])
def test_an_alias_bomb_of_few_aliases_is_refused_before_it_expands(tmp_path, capsys, levels, width, command):
    path = tmp_path / "spec.yaml"
    path.write_text(_bomb(levels, width))
    argv = (
        ["train", str(path), "--out", str(tmp_path / "o")] if command == "train" else ["validate", str(path)]
    )
    _assert_user_error(main(argv), capsys, "spec.yaml", "aliases expand")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("data.synth=" + _bomb(9, 9, flow=True), "aliases expand"),
        ("data.synth=" + _bomb(5, 12, flow=True), "aliases expand"),
        ("train.epochs=" + "[" * 200 + "]" * 200, "nested"),
        ("train.epochs=" + "1" * (70 << 10), "at most"),
    ],
    ids=["bomb-9x9", "bomb-5x12", "deep", "huge"],
)
@pytest.mark.parametrize("command", ["train", "validate"])
def test_set_values_have_the_limits_of_spec_files(tmp_path, capsys, value, needle, command):
    if command == "train":
        argv = ["train", "--out", str(tmp_path / "o"), "--set", value]
    else:
        argv = ["validate", str(CATALOG / "smoke.yaml"), "--set", f"trial.{value}"]
    _assert_user_error(main(argv), capsys, "--set", needle)


def test_a_few_honest_aliases_still_load(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("optim: &o {lr: 0.01}\ntrain: {epochs: 1}\n")
    assert main(["validate", str(CATALOG / "smoke.yaml")]) == 0
    from trainers.safe_yaml import read_yaml

    assert read_yaml(path)["optim"] == {"lr": 0.01}


@pytest.mark.parametrize(
    "search",
    [
        {"backbone.freeze,neck.fpn_channels": {"grid": [["frozen", 64], ["finetune", 128]]}},
        {"neck.fpn_channels,backbone.freeze": {"grid": [[64, "frozen"], [128, "finetune"]]}},
        {
            "optim.lr": {"grid": [0.01, 0.02]},
            "backbone.freeze,neck.fpn_channels,heads.box_fc": {
                "choice": [["frozen", 64, 128], ["finetune", 64, 64]]
            },
        },
    ],
    ids=["first", "second", "among-three"],
)
def test_stratifying_by_a_path_of_a_joint_key_says_so_without_contradiction(tmp_path, capsys, search):
    spec = yaml.safe_load((CATALOG / "smoke.yaml").read_text())
    spec["search"] = search
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "stratify_by" in err and "searched only jointly" in err, err
    assert "is not searched" not in err, err


@pytest.mark.parametrize(
    "uri",
    [
        "https://alice:hunter2-secret@mlflow.example.com",
        "http://alice:hunter2-secret@127.0.0.1:5000",
        "https://hunter2-secret@mlflow.example.com/path",
        "postgresql+psycopg2://alice:hunter2-secret@db.example.com/mlflow",
    ],
)
@pytest.mark.parametrize("how", ["file", "set"])
def test_a_tracking_uri_with_credentials_is_refused_and_never_echoed(tmp_path, capsys, uri, how):
    spec = yaml.safe_load((CATALOG / "smoke.yaml").read_text())
    argv = ["validate", str(tmp_path / "sweep.yaml")]
    if how == "file":
        spec["tracking"] = {"uri": uri}
    else:
        argv += ["--set", f"tracking.uri={uri}"]
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "tracking.uri" in captured.err and "credentials" in captured.err
    assert "hunter2" not in captured.err + captured.out
