"""Griffe extension: the docstrings' reST roles as Markdown for the API reference.

``:func:`name``` (and ``:class:``, ``:mod:``, ``:meth:``, ``:data:``, ``~`` prefix) becomes a
cross-reference when ``name`` resolves — as written, in the docstring's class, in its module or
in the package — to a public object with a docstring (the ones the reference shows), and inline
code otherwise. A reST literal-block marker (a paragraph ending in ``::``) becomes ``:``; the
indented block after it is a Markdown code block already.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|obj):`(~?)([\w.]+)`")
LITERAL_MARKER = re.compile(r"(\S)::\n\n")


def _target(obj: griffe.Object, name: str, loader: griffe.GriffeLoader) -> str | None:
    scopes = [obj.path]
    scopes += [parent.path for parent in _parents(obj)]
    candidates = [name] + [f"{scope}.{name}" for scope in scopes]
    for path in candidates:
        try:
            found = loader.modules_collection[path]
            if found.is_alias:
                found = found.final_target
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        public = not any(part.startswith("_") for part in found.path.split("."))
        return found.path if public and found.has_docstring else None
    return None


def _parents(obj: griffe.Object):
    parent = obj.parent
    while parent is not None:
        yield parent
        parent = parent.parent


class RestRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        for obj in _walk(pkg):
            if obj.docstring is None:
                continue

            def replace(match: re.Match, obj=obj) -> str:
                short, name = match.groups()
                title = name.rsplit(".", 1)[-1] if short else name
                path = _target(obj, name, loader)
                return f"[`{title}`][{path}]" if path else f"`{title}`"

            text = ROLE.sub(replace, obj.docstring.value)
            obj.docstring.value = LITERAL_MARKER.sub(r"\1:\n\n", text)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
