"""The README documents what a user needs: every config key of the schema, every finding ID
the code can emit, and no pointer to a design file users do not have."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from quantdoctor.config import DoctorConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
INTERNAL = {"source"}  # set by load_config, not by users


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _keys(schema: dict[str, Any], defs: dict[str, Any], path: str = "") -> set[str]:
    """Dotted key paths of a pydantic JSON schema (recipe commands as ``recipe.<command>``)."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    out: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for branch in schema.get(key, []):
            out |= _keys(branch, defs, path)
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        out |= _keys(schema["items"], defs, path)
    for name, sub in schema.get("properties", {}).items():
        if not path and name in INTERNAL:
            continue
        full = f"{path}.{name}" if path else name
        out.add(full)
        out |= _keys(sub, defs, full)
    return out


def test_every_config_key_is_documented() -> None:
    schema = DoctorConfig.model_json_schema()
    text = _section("The config file: every key")
    quoted = set(re.findall(r"`([^`]+)`", text))
    words = {w for q in quoted for w in re.split(r"[^\w]+", q) if w}
    missing = []
    for key in sorted(_keys(schema, schema["$defs"])):
        leaf = key.rsplit(".", 1)[-1]
        # documented as the full path (`data.evaluation.limit`) or, inside its parent's row,
        # by its own name (`interpolation` in the `preprocess.resize` row)
        if key not in quoted and leaf not in words:
            missing.append(key)
    assert not missing, f"README 'The config file: every key' does not mention: {missing}"


def test_every_finding_id_is_documented() -> None:
    emitted = set()
    for path in (ROOT / "src" / "quantdoctor").rglob("*.py"):
        emitted |= set(re.findall(
            r'"((?:setup|pipeline|calibration|evaluation|layers|quantization)\.[a-z_]+)"',
            path.read_text(encoding="utf-8"),
        ))
    assert len(emitted) >= 20  # the scan itself works
    text = _section("findings.json")
    assert not {i for i in emitted if f"`{i}`" not in text}


def test_no_pointer_to_the_design_file_for_users() -> None:
    user_part = README[: README.index("## Development")]
    assert "DESIGN" not in user_part
