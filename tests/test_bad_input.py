"""Bad input gets one clear line naming the file, field or flag, exit 2, and no traceback.

Each case is run through the real command line (in-process); none may reach training or Ray.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_storage_every_user_may_write_is_refused(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o777)
    spec = Path(__file__).resolve().parents[1] / "sweeps" / "catalog" / "smoke.yaml"
    _assert_user_error(main(["run", str(spec), "--root", str(root)]), capsys, "writable by every user")
    assert not (root / "sweeps").exists()
