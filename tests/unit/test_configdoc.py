"""docs/configuration.md's reference is what the configuration model accepts: regenerated here and
compared, so a new or changed setting without its document fails."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from lossproof import configdoc
from lossproof.config import Config, _Section
from lptest import TESTS

DOC = TESTS.parent / "docs" / "configuration.md"


def _fields(model: type[BaseModel]) -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, _Section):
            out += _fields(ann)
        elif not info.exclude and name != "tenants":
            out.append(name)
    return out


def test_the_reference_is_up_to_date() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert configdoc.update(text) == text, "run: python -m lossproof.configdoc docs/configuration.md"


def test_every_setting_is_in_the_reference_with_its_description() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in [*_fields(Config), "key_hashes", "key_created"]:
        assert f"| `{name}` |" in text, name
    for name in ("dsn", "pg_schema", "pool_size", "retention_days", "connect_timeout_seconds"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.split("|")[5].strip(), f"{name} has no description"
        assert f"LOSSPROOF_STORE_{name.upper()}" in row


def test_check_fails_on_a_drifted_document(tmp_path: Path) -> None:
    drifted = tmp_path / "configuration.md"
    text = DOC.read_text(encoding="utf-8")
    drifted.write_text(text.replace("| `pool_size` |", "| `pool_sizes` |"), encoding="utf-8")
    assert configdoc.main(["--check", str(drifted)]) == 1
    assert configdoc.main([str(drifted)]) == 0  # rewritten in place ...
    assert configdoc.main(["--check", str(drifted)]) == 0 and drifted.read_text(encoding="utf-8") == text
