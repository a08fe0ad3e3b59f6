"""The settings reference, ``docs/settings.md``, written from ``Settings`` itself.

Every field of ``service/settings.py`` becomes one row: its environment variable,
its default, what values it takes (the field's type and bounds) and its
description. ``python -m service.settings_doc`` rewrites the file;
``tests/test_settings_doc.py`` fails when the committed file differs from what
this produces, so the reference cannot drift from the code.
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from service.settings import DEFAULT_REPOSITORY, ENV_PREFIX, Settings

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "settings.md"

HEADER = f"""# Settings

<!-- Written by `python -m service.settings_doc` from service/settings.py: edit the
     descriptions there, then run it again (tests/test_settings_doc.py checks). -->

Every setting is an environment variable with the `{ENV_PREFIX}` prefix, read once at
startup (`service/settings.py`). `lstm-serve --host/--port/--model-repository/--workers/
--device/--log-level/--ssl-certfile/--ssl-keyfile` override the eight of the same names.
Lists and maps are JSON (`{ENV_PREFIX}API_KEYS='["app:inference:<secret>"]'`).

The five most people change: `{ENV_PREFIX}WORKERS`, `{ENV_PREFIX}MODEL_REPOSITORY`,
`{ENV_PREFIX}API_KEYS` (or `_FILE`), `{ENV_PREFIX}STATE_URL` and
`{ENV_PREFIX}MODEL_CONTROL_MODE`. What the limits add up to: [limits.md](limits.md).

| variable | default | values | meaning |
|---|---|---|---|
"""


def _type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``auto, cpu, cuda``, ``integer``, ``JSON list``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(names)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is list:
        return "JSON list"
    if origin is dict:
        return "JSON object"
    if isinstance(annotation, type):
        if issubclass(annotation, bool):
            return "`true`, `false`"
        if issubclass(annotation, enum.Enum):
            return ", ".join(f"`{member.value}`" for member in annotation)
        simple = {int: "integer", float: "number", str: "text", Path: "path", SecretStr: "text"}
        for kind, name in simple.items():
            if issubclass(annotation, kind):
                return name
        if issubclass(annotation, BaseModel):
            return "JSON object"
    return "text"


def _bounds(field: FieldInfo) -> str:
    words = []
    for bound in field.metadata:
        if isinstance(bound, Ge):
            words.append(f"≥ {bound.ge}")
        elif isinstance(bound, Gt):
            words.append(f"> {bound.gt}")
        elif isinstance(bound, Le):
            words.append(f"≤ {bound.le}")
        elif isinstance(bound, Lt):
            words.append(f"< {bound.lt}")
    return ", ".join(words)


def _default(field: FieldInfo) -> str:
    value = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if value is None:
        return "unset"
    if value == DEFAULT_REPOSITORY:
        return "`models/repository` of this checkout"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value)}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def render() -> str:
    """The whole of ``docs/settings.md``."""
    rows = []
    for name, field in Settings.model_fields.items():
        values = _type_name(field.annotation)
        bounds = _bounds(field)
        if bounds:
            values = f"{values}, {bounds}"
        description = field.description or ""
        rows.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {_default(field)} | {_cell(values)} "
            f"| {_cell(description)} |"
        )
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write ``docs/settings.md`` (``--check``: only say whether it is current)."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    current = DOCUMENT.read_text() if DOCUMENT.exists() else ""
    if "--check" in args:
        if current != text:
            print(f"{DOCUMENT} is out of date: run python -m service.settings_doc")
            return 1
        return 0
    if current != text:
        DOCUMENT.write_text(text)
        print(f"wrote {DOCUMENT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
