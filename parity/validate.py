"""Reading the user's files at the boundary: JSON and TOML text read safely (size, encoding,
nesting depth bounded), then checked against a pydantic schema, every failure one
:class:`~parity.errors.ParityError` naming the file, the key and what is valid.

Each file kind has its schema next to its loader (``parity.loading.schema`` for config.json
and generation_config.json, ``parity.capture.schema`` for probe maps, ``parity.loading.dump_schema``
for dump maps and manifests, ``parity.report.schema`` for report JSON); this module holds
what they share. pydantic is imported only when a schema is checked.
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from parity.errors import ParityError

#: no file parity reads as JSON/TOML text needs more (report.json of a 7B run: ~1 MB)
MAX_TEXT_BYTES = 256 * 1024 * 1024
#: JSON/TOML nesting deeper than this is refused before it reaches the parser's recursion
MAX_DEPTH = 64

T = TypeVar("T")


def read_text(path: str | Path, error: type[ParityError], label: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path``; ``error`` naming ``label`` when it is missing, a folder,
    too large or not UTF-8."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise error(f"{label} '{p}' is a folder, not a file.", note="give the file's path")
        if size > max_bytes:
            raise error(f"{label} '{p}' is {size} bytes; more than {max_bytes} is not a file parity reads.",
                        note="is it the right file?")
        data = p.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {label} '{p}': {exc.strerror or exc}.", note="check the path and its permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label} '{p}' is not UTF-8 text (byte {exc.start}).", note="save it as UTF-8") from None


def nesting_depth(value: Any) -> int:
    """How deep lists and dicts nest in a parsed document (iterative: no recursion limit)."""
    if not isinstance(value, (list, dict)):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > deepest:
            deepest = d
        for x in (v.values() if isinstance(v, dict) else v):
            if isinstance(x, (list, dict)):
                stack.append((x, d + 1))
    return deepest


def _check_depth(data: Any, error: type[ParityError], label: str) -> Any:
    if nesting_depth(data) > MAX_DEPTH:
        raise error(f"{label} nests more than {MAX_DEPTH} levels deep.", note="not a file parity writes or reads")
    return data


def parse_json(text: str, error: type[ParityError], label: str) -> Any:
    """JSON text -> Python, nesting bounded (NaN/Infinity read as Python reads them)."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise error(f"{label} nests more than {MAX_DEPTH} levels deep.", note="not a file parity writes or reads") from None
    except ValueError as exc:
        raise error(f"{label} is not valid JSON: {exc}.", note="check the file with a JSON validator") from None
    return _check_depth(data, error, label)


def parse_toml(text: str, error: type[ParityError], label: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise error(f"{label} nests more than {MAX_DEPTH} levels deep.", note="not a file parity writes or reads") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise error(f"{label} is not valid TOML: {exc}.", note="check the file's TOML syntax") from None
    return _check_depth(data, error, label)


def read_json(path: str | Path, error: type[ParityError], label: str) -> Any:
    return parse_json(read_text(path, error, label), error, f"{label} '{path}'")


def read_toml(path: str | Path, error: type[ParityError], label: str) -> dict[str, Any]:
    return parse_toml(read_text(path, error, label), error, f"{label} '{path}'")


def check(schema: type[T], data: Any, error: type[ParityError], label: str, note: str | None = None) -> T:
    """``data`` validated by the pydantic model ``schema``; the first problem as ``error``
    naming ``label``, the key path and what the key takes."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(data)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        msg, why = describe(exc, label, schema)
        raise error(msg, note=why or note) from None
    except (RecursionError, OverflowError) as exc:
        raise error(f"{label}: {type(exc).__name__}.", note="the file's values are not what parity reads (--debug shows where)") from None


def describe(exc: Any, label: str, schema: Any = None) -> tuple[str, str | None]:
    """(message, note) for the first error of a pydantic ValidationError."""
    errs = exc.errors(include_url=False)
    e = errs[0]
    loc = ".".join(str(p) for p in e.get("loc", ())) or "(top level)"
    given = e.get("input")
    shown = repr(given)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    msg = " ".join(str(e.get("msg", "invalid")).split()).removeprefix("Value error, ")
    msg = re.sub(r" or instance of \w+", "", msg)
    if e.get("type") == "extra_forbidden":
        fields = ", ".join(sorted(_fields_at(schema, list(e.get("loc", ()))[:-1])))
        return f"{label}: unknown key '{loc}'{more}.", (f"valid keys: {fields}" if fields else None)
    if e.get("type") == "missing":
        return f"{label}: key '{loc}' is missing{more}.", None
    return f"{label}: key '{loc}' = {shown}: {msg[0].lower() + msg[1:] if msg else 'invalid'}{more}.", None


def _fields_at(schema: Any, loc: list[Any]) -> list[str]:
    """The keys the (sub)model at ``loc`` of ``schema`` takes (aliases where set)."""
    model = _model_in(schema)
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            field = next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is not None:
            model = _model_in(field.annotation)
        # else: a list index or a dict key -- the element type is the model already found
    return [f.alias or n for n, f in model.model_fields.items()] if model is not None else []


def _model_in(tp: Any) -> Any:
    """The first pydantic model class in a type annotation (through Optional, list, dict)."""
    import typing

    from pydantic import BaseModel

    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
