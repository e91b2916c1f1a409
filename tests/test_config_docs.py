"""config/README.md documents every experiment-config key, with the true defaults.

The tables in config/README.md have one row per dotted key:
``| `data.N` | `32` | px | power of two in [8, 1024] | ... |``. This test walks the
dataclasses of :mod:`ptycho_torch.config` recursively and fails when a key is
missing from the README, when a documented default differs from the dataclass
default (the cell is parsed with PyYAML's safe loader, as Snakemake reads
config.yaml, so a documented default can be pasted into a config file), when a
documented choice list is incomplete, or when the README documents a key that no
longer exists.

To draft rows for new keys: ``python tests/test_config_docs.py [section ...]``
prints the tables from the dataclass metadata; edit the prose by hand.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import resolve_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
README = CONFIG_DIR / "README.md"
OVERLAYS = sorted(CONFIG_DIR.glob("examples/*.yaml")) + sorted(CONFIG_DIR.glob("presets/*.yaml"))
ROW = re.compile(r"^\|\s*`([A-Za-z0-9_.]+)`\s*\|(.*)\|\s*$")


def _is_section(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
        f.default_factory)


def walk(cls: type = ExperimentConfig, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Every leaf ``(dotted key, field)`` of the config dataclasses, in declaration order."""
    for f in dataclasses.fields(cls):
        if _is_section(f):
            yield from walk(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def sections(cls: type = ExperimentConfig, prefix: str = "") -> Iterator[tuple[str, type]]:
    """``(dotted section, dataclass)`` for every section, the top level as ``''``."""
    yield prefix.rstrip("."), cls
    for f in dataclasses.fields(cls):
        if _is_section(f):
            yield from sections(f.default_factory, f"{prefix}{f.name}.")


def documented() -> dict[str, list[str]]:
    """``{key: [default, unit, allowed, description]}`` from the README tables."""
    rows: dict[str, list[str]] = {}
    for line in README.read_text().splitlines():
        m = ROW.match(line)
        if m:
            key = m.group(1)
            assert key not in rows, f"config/README.md documents {key} twice"
            rows[key] = [c.strip() for c in m.group(2).split("|")]
    return rows


def parse_default(cell: str) -> Any:
    text = cell.strip()
    assert text.startswith("`") and text.endswith("`"), f"default {cell!r} must be `code`"
    return yaml.safe_load(text[1:-1])


# ----------------------------------------------------------------- tests

KEYS = [k for k, _ in walk()]


def test_readme_has_tables():
    assert len(documented()) >= 20


@pytest.mark.parametrize("key", KEYS)
def test_key_documented_with_true_default(key):
    rows = documented()
    if key not in rows:
        pytest.fail(f"config/README.md lacks a row for `{key}` (draft: python {__file__})")
    f = dict(walk())[key]
    default, unit, allowed, description = rows[key][:4]
    value = parse_default(default)
    expected = f.default
    assert type(value) is type(expected), (
        f"`{key}`: documented default {default} reads as {type(value).__name__} under PyYAML, "
        f"the dataclass default is {type(expected).__name__} {expected!r}")
    if isinstance(expected, float):
        assert math.isclose(value, expected, rel_tol=1e-12), f"`{key}`: {value} != {expected}"
    else:
        assert value == expected, f"`{key}`: documented default {value!r} != {expected!r}"
    for choice in f.metadata.get("choices") or ():
        assert f"`{choice}`" in allowed, f"`{key}`: choice {choice!r} not documented"
    if f.metadata.get("unit"):
        assert f.metadata["unit"] in unit, f"`{key}`: unit {f.metadata['unit']!r} not documented"
    assert len(description) >= 10, f"`{key}`: describe it"


def test_readme_documents_no_stale_keys():
    stale = sorted(set(documented()) - set(KEYS))
    assert not stale, f"config/README.md documents keys that no longer exist: {stale}"


def test_readme_explains_precedence_and_overlays():
    text = README.read_text()
    for words in ("--configfile", "--set", "precedence", "1.0e-3"):
        assert words in text, words


# ----------------------------------------------------------------- drafting rows

def _fmt_number(x: float) -> str:
    """A float as PyYAML 1.1 reads it back as a float: 1.0e+6, 7.5e-5, 0.001."""
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return repr(float(x))
    mant, exp = f"{x:.6e}".split("e")
    mant = mant.rstrip("0")
    mant = mant + "0" if mant.endswith(".") else mant
    return f"{mant}e{int(exp):+d}"


def format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _fmt_number(value)
    return str(value)


def allowed_text(f: dataclasses.Field) -> str:
    md = f.metadata
    if md.get("choices"):
        return ", ".join(f"`{c}`" for c in md["choices"])
    if f.type == "bool":
        return "`true`, `false`"
    lo, hi = md.get("lo"), md.get("hi")
    num = (lambda v: str(int(v))) if f.type == "int" else (lambda v: _fmt_number(v))
    rng = f"[{num(lo)}, {num(hi)}]" if lo is not None and hi is not None else ""
    if md.get("power_of_two"):
        return f"power of two in {rng}"
    if f.type == "str":
        return "letters, digits, `-`, `_`"
    return rng


def table(section: str, cls: type) -> str:
    lines = ["| key | default | unit | allowed | description |",
             "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if _is_section(f):
            continue
        key = f"{section}.{f.name}" if section else f.name
        doc = f.metadata.get("doc", "").replace("|", "\\|")
        lines.append(f"| `{key}` | `{format_default(f.default)}` | {f.metadata.get('unit', '')} "
                     f"| {allowed_text(f)} | {doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    wanted = sys.argv[1:]
    for name, cls in sections():
        if not wanted or name in wanted:
            print(f"### `{name or '(top level)'}`\n\n{table(name, cls)}\n")


def _overlay(base: dict, over: dict) -> dict:
    """Snakemake's ``--configfile`` merge: mappings merged key by key, anything else replaced."""
    return {**base, **{k: _overlay(base[k], v) if isinstance(v, dict) and isinstance(
        base.get(k), dict) else v for k, v in over.items()}}


def _leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("path", OVERLAYS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_shipped_overlay_is_a_valid_experiment_with_its_settings(path):
    """config/examples/ and config/presets/: merged over config.yaml, each passes the config
    factory, is named after its file, and every experiment setting it states takes effect."""
    overlay = yaml.safe_load(path.read_text())
    merged = _overlay(yaml.safe_load((CONFIG_DIR / "config.yaml").read_text()), overlay)
    science = {f.name for f in dataclasses.fields(ExperimentConfig)}
    cfg = resolve_config({k: v for k, v in merged.items() if k in science})
    assert cfg.experiment == path.stem
    for dotted, value in _leaves({k: v for k, v in overlay.items() if k in science}):
        resolved = cfg
        for part in dotted.split("."):
            resolved = getattr(resolved, part)
        assert resolved == value, dotted
