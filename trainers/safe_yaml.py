"""YAML a person wrote (a sweep or trial spec, a `--set` value), read without letting it exhaust the machine:
size, nesting and alias expansion are bounded before anything is built, and every refusal is a FrostError
naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainers.errors import FrostError

# A spec is a small file written by a person: anything far beyond these is a mistake or an attack (a YAML
# "billion laughs" of aliases, nesting deep enough to exhaust the parser's recursion). A few aliases can still
# expand to billions of nodes (9 levels of 9 aliases each: 81 aliases, 9**9 nodes), so what the aliases expand
# to is counted too, from the parser's events, before anything is composed.
MAX_SPEC_BYTES = 1 << 20
MAX_SET_BYTES = 64 << 10
MAX_YAML_DEPTH = 50
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 100_000


def check_yaml_shape(path: Path | str, text: str) -> None:
    """Refuse YAML nested too deep, with too many aliases, or whose aliases expand to too many nodes.

    Each node's expanded size is counted as its events stream by: an alias counts the size its anchor's node
    had, so the total is what `yaml.safe_load` would build, without building it."""
    aliases = total = 0
    anchored: dict[str, int] = {}  # anchor -> expanded size of its node
    open_nodes: list[list[Any]] = []  # [expanded size so far, anchor] of each collection being read

    def count(size: int, into_parent: bool) -> None:
        nonlocal total
        if into_parent and open_nodes:
            open_nodes[-1][0] += size
        total += size
        if total > MAX_YAML_NODES:
            raise FrostError(
                f"{path}: its YAML aliases expand to more than {MAX_YAML_NODES:,} nodes; write the values "
                "out (a spec needs no aliases)"
            )

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(open_nodes) >= MAX_YAML_DEPTH:
                raise FrostError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep")
            count(
                1, into_parent=False
            )  # the collection's own node: its parent gets its whole size at its end
            open_nodes.append([1, event.anchor])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            size, anchor = open_nodes.pop()
            if anchor is not None:
                anchored[anchor] = size
            if open_nodes:
                open_nodes[-1][0] += size
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                anchored[event.anchor] = 1
            count(1, into_parent=True)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise FrostError(f"{path}: more than {MAX_YAML_ALIASES} YAML aliases")
            count(anchored.get(event.anchor or "", 1), into_parent=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a FrostError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise FrostError(f"{path}: larger than {MAX_SPEC_BYTES // 1024} KiB; not a spec")
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise FrostError(f"{path}: cannot read (a folder, not a YAML file)") from None
    except OSError as exc:
        raise FrostError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise FrostError(f"{path}: not UTF-8 text (byte {exc.start}); a spec is a YAML text file") from None
    try:
        check_yaml_shape(path, text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FrostError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise FrostError(f"{path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FrostError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if not all(isinstance(key, str) for key in data):
        raise FrostError(
            f"{path}: top-level keys must be names, got {[k for k in data if not isinstance(k, str)][:3]}"
        )
    return data


# libyaml's C parser when PyYAML has it (the PyPI wheels do): 7x faster on a trial.yaml (0.74 vs 5.4 ms,
# measured on this machine), which is what `frost status` and the report pay once per trial.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_machine_yaml(text: str) -> Any:
    """YAML that frost itself wrote (a trial's `trial.yaml`): the safe loader, in C where available. A torn or
    planted file raises yaml.YAMLError as with `yaml.safe_load`."""
    return yaml.load(text, Loader=_FAST_LOADER)  # noqa: S506  (a safe loader: no object construction)
