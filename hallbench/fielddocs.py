"""Field documentation of the configuration dataclasses, for the command-line help.

A configuration field is documented once, by the string literal under it (the convention of
``TrainConfig``, ``EvidenceConfig``, ``EvalConfig``, ``DecodingConfig``); the CLI's ``--help`` text
and its ``[default: ...]`` are read from there, so the two cannot drift (``tests/test_cli.py``
checks every option against its field).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from functools import cache
from typing import Any


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: its docstring}`` (whitespace collapsed) for every documented field of a dataclass,
    its dataclass bases' fields included (a subclass's own text wins)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not cls and dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split()).replace("``", "")
    return docs


def field_default(cls: type, name: str) -> Any:
    """The dataclass default of ``name`` (``dataclasses.MISSING`` when it has none)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def shown_default(value: Any) -> str:
    """A default as ``--help`` shows it: ``1e-05``, ``3``, ``fp32``, ``on``/``off``, ``none``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == "":
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def field_help(cls: type, name: str, *, default: str | None = None) -> str:
    """The field's docstring, then ``[default: X]`` (X: ``default``, else the field's own), escaped for
    rich markup, which would eat a bare ``[...]`` such as ``[default: 1e-05]`` or ``W_c [h; e]``."""
    from rich.markup import escape

    text = field_docs(cls)[name]
    if default is None and field_default(cls, name) is not dataclasses.MISSING:
        default = shown_default(field_default(cls, name))
    return escape(text + (f" [default: {default}]" if default is not None else ""))


def option_help(cls: type, name: str) -> str:
    """The field's docstring as the help of a flag whose default the CLI shows itself (Typer prints
    ``[default: X]`` for every default but None); a None default is shown as ``[default: none]``
    unless the docstring says what it means. Escaped for rich markup, as :func:`field_help`."""
    from rich.markup import escape

    text = field_docs(cls)[name]
    if field_default(cls, name) is None and "default" not in text.lower():
        text += " [default: none]"
    return escape(text)
