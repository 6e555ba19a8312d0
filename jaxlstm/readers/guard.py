"""What every reader checks: confined paths, bounded zip members, bounded nesting, one error.

The numbers in a file (member sizes, shapes, counts) are claims; these helpers compare them
with the bytes actually present before anything is allocated.
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting of containers accepted in a checkpoint (real ones nest a handful deep)."""
MAX_RATIO = 64
"""Most a compressed zip member may inflate, relative to its stored bytes. torch and numpy
store tensors uncompressed, and compressed float weights shrink little; a higher claim is a
bomb."""
SMALL_MEMBER = 1 << 20
"""A member up to this size may inflate at any ratio (zero biases compress very well)."""


class CheckpointError(ValueError):
    """A file that cannot be read as a state dict; the message names the file, the key or
    member, what was wrong, and the fix."""


def name(path: Path | str) -> str:
    """How messages name a file: its path as given, quoted."""
    return repr(os.fspath(path))


def confined(directory: Path, relative: str, *, source: Path, what: str) -> Path:
    """``directory / relative``, refused unless it resolves (symlinks included) inside
    ``directory``.

    **Arguments:**

    - ``directory``: the checkpoint's own directory.
    - ``relative``: the path as the file ``source`` names it (a shard, external data).
    - ``source``: the file that names it, for the message.
    - ``what``: what the path is, for the message (``"shard"``, ``"external data"``).
    """
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise CheckpointError(f"{name(source)} names {what} {relative!r}, which is not a file "
                              "name")
    root = directory.resolve()
    target = (directory / relative).resolve()
    if target != root and root not in target.parents:
        raise CheckpointError(
            f"{name(source)} names {what} {relative!r}, which lies outside the checkpoint's "
            f"directory ({str(root)!r}); it is not opened. Copy that file into the directory "
            "and name it by its file name"
        )
    return target


def open_zip(path: Path) -> zipfile.ZipFile:
    """``path`` as a zip archive whose every member's claimed size is plausible.

    Each member must lie inside the file and inflate at most :data:`MAX_RATIO` times its stored
    size (or to :data:`SMALL_MEMBER`); Python's zip reader then stops at the claimed size.
    """
    try:
        archive = zipfile.ZipFile(path)
        members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as error:
        raise CheckpointError(f"{name(path)} is a damaged zip archive ({error}); it is truncated "
                              "or corrupt: copy or save it again") from error
    size = path.stat().st_size
    for info in members:
        if info.header_offset + info.compress_size > size:
            archive.close()
            raise CheckpointError(f"{name(path)}: zip member {info.filename!r} claims "
                                  f"{info.compress_size} bytes past the end of the file; it is "
                                  "truncated or corrupt")
        if info.file_size > max(SMALL_MEMBER, MAX_RATIO * info.compress_size):
            archive.close()
            raise CheckpointError(
                f"{name(path)}: zip member {info.filename!r} claims to inflate from "
                f"{info.compress_size} to {info.file_size} bytes, more than {MAX_RATIO} times; "
                "refused as a zip bomb (torch and numpy store tensors uncompressed: save the "
                "weights again with torch.save or numpy.savez)"
            )
    return archive


def read_member(archive: zipfile.ZipFile, member: str, path: Path, size: int | None = None
                ) -> bytes:
    """The bytes of ``member``, which must exist and, if ``size`` is given, hold exactly that
    many bytes (checked before reading)."""
    try:
        info = archive.getinfo(member)
    except KeyError as error:
        raise CheckpointError(f"{name(path)} has no member {member!r}, which its records name; "
                              "it is truncated or corrupt") from error
    if size is not None and info.file_size != size:
        raise CheckpointError(f"{name(path)}: member {member!r} holds {info.file_size} bytes, "
                              f"but its record claims {size}; it is corrupt")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as error:
        raise CheckpointError(f"{name(path)}: member {member!r} cannot be read ({error}); the "
                              "file is truncated or corrupt") from error


def bounded_walk(tree: Any, path: Path, expand: Callable[[Any], Any] = lambda value: value,
                 depth: int = 0, ancestors: frozenset[int] = frozenset()) -> Any:
    """A copy of the dicts, lists and tuples of ``tree`` (``expand`` turns an object into the
    container it stands for); leaves are kept as they are.

    A container inside itself, or nested deeper than :data:`MAX_DEPTH`, raises.
    """
    node = expand(tree)
    if not isinstance(node, (dict, list, tuple)):
        return node
    if id(tree) in ancestors or depth > MAX_DEPTH:
        why = "contains itself" if id(tree) in ancestors else f"nests deeper than {MAX_DEPTH}"
        raise CheckpointError(f"{name(path)} holds a container that {why}; a state dict is a "
                              "tree of tensors, so the file is crafted or corrupt")
    inner = ancestors | {id(tree)}

    def walk(value: Any) -> Any:
        return bounded_walk(value, path, expand, depth + 1, inner)

    if isinstance(node, dict):
        return {key: walk(value) for key, value in node.items()}
    return [walk(value) for value in node] if isinstance(node, list) else tuple(map(walk, node))


def pickled_globals(data: bytes) -> Iterator[str]:
    """The ``module.name`` of every global a pickle would import, read without unpickling."""
    strings: list[str] = []
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                yield str(argument).replace(" ", ".", 1)
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                yield f"{strings[-2]}.{strings[-1]}"
            elif isinstance(argument, str):
                strings.append(argument)
    except (ValueError, EOFError, TypeError, KeyError):  # a damaged stream: what was seen
        return
