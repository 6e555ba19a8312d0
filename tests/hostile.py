"""Tools of ``test_hostile_files.py``: hostile bytes, and a sandboxed child that reads them.

- :func:`pickle_bytes` writes a pickle opcode by opcode, so a test can say exactly which
  globals, persistent ids, ``BUILD``s and memo references a file holds (``pickle.dumps`` would
  refuse most of them, or pickle what it finds instead of what is named).
- :func:`write_zip` writes a zip archive member by member; a :class:`Deflated` member carries
  its own compressed stream, so a few MiB can declare and inflate to gigabytes.
- :func:`run` runs one entry point (the public API, or ``python -m jaxlstm`` via ``runpy``) on
  a file in a child process forked from a server that has imported jaxlstm, torch and onnx
  once, so each read costs a fork instead of an interpreter start. The child has a bounded
  address space, records every ``open`` (and every command run) through an audit hook, and is
  killed when it takes longer than ``TIMEOUT_S``; an inotify watch of the directories outside
  the case catches opens made by native code (safetensors, onnx, torch) too.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import multiprocessing
import os
import pickle
import resource
import signal
import site
import struct
import sys
import sysconfig
import time
import zlib
from pathlib import Path
from typing import Any, NamedTuple

TIMEOUT_S = 20
"""A read that takes longer than this has hung (a valid file reads in a second or two)."""
HEADROOM = 2 << 30
"""Address space the child may map beyond what its imports use: a valid file fits easily, a
4 GiB allocation does not."""
PRELOAD = ["jaxlstm", "jaxlstm.files", "jaxlstm.cli", "jaxlstm.porting", "jaxlstm.discovery",
           "jaxlstm.formats", "jaxlstm.formats.onnx", "jaxlstm.formats.jax_rnn",
           "jaxlstm.testing", "jaxlstm.formats.keras_h5", "torch", "onnx", "onnx.numpy_helper",
           "safetensors.numpy", "h5py"]
COMMANDS = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
            "pty.spawn")
"""Audit events of running another program: a checkpoint read must raise none."""


# --- pickles, opcode by opcode ------------------------------------------------------------------


class Global(NamedTuple):
    """``GLOBAL module name``: what an unpickler must look up (and should refuse)."""

    module: str
    name: str


class Call(NamedTuple):
    """``func(*args)`` by ``REDUCE``."""

    func: Any
    args: tuple


class Persistent(NamedTuple):
    """``BINPERSID``: a reference to data outside the pickle (a tensor storage record)."""

    pid: tuple


class Build(NamedTuple):
    """``BUILD``: ``obj.__setstate__(state)`` or an update of its attributes."""

    obj: Any
    state: Any


class Obj(NamedTuple):
    """``cls.__new__(cls)`` then ``BUILD`` with ``state``, as TorchScript pickles modules."""

    cls: Global
    state: Any


class SelfList(NamedTuple):
    """A list that holds ``items`` and then itself (a memo reference to the list)."""

    items: tuple


def pickle_bytes(value: Any) -> bytes:
    """``value`` as a protocol-2 pickle, written opcode by opcode (see the classes above)."""
    memo = iter(range(1 << 30))

    def emit(v: Any) -> bytes:
        if v is None:
            return b"N"
        if isinstance(v, bool):
            return b"\x88" if v else b"\x89"
        if isinstance(v, int):
            if 0 <= v < 256:
                return b"K" + bytes([v])
            if -(1 << 31) <= v < 1 << 31:
                return b"J" + struct.pack("<i", v)
            encoded = pickle.encode_long(v)
            return b"\x8a" + bytes([len(encoded)]) + encoded
        if isinstance(v, float):
            return b"G" + struct.pack(">d", v)
        if isinstance(v, str):
            raw = v.encode()
            return b"X" + struct.pack("<I", len(raw)) + raw
        if isinstance(v, Global):
            return b"c" + f"{v.module}\n{v.name}\n".encode()
        if isinstance(v, Call):
            return emit(v.func) + emit(tuple(v.args)) + b"R"
        if isinstance(v, Persistent):
            return emit(tuple(v.pid)) + b"Q"
        if isinstance(v, Build):
            return emit(v.obj) + emit(v.state) + b"b"
        if isinstance(v, Obj):
            return emit(v.cls) + b")\x81" + emit(v.state) + b"b"
        if isinstance(v, SelfList):
            slot = struct.pack("<I", next(memo))
            return b"]r" + slot + b"(" + b"".join(map(emit, v.items)) + b"j" + slot + b"e"
        if isinstance(v, tuple):
            return b"(" + b"".join(map(emit, v)) + b"t"
        if isinstance(v, list):
            return b"](" + b"".join(map(emit, v)) + b"e"
        if isinstance(v, dict):
            return b"}(" + b"".join(emit(k) + emit(x) for k, x in v.items()) + b"u"
        raise TypeError(f"cannot emit {type(v).__name__}")

    return b"\x80\x02" + emit(value) + b"."


def tensor(key: str, shape: tuple, stride: tuple | None = None, offset: int = 0,
           numel: int | None = None, storage: str = "FloatStorage") -> Call:
    """torch's pickled tensor: ``_rebuild_tensor_v2`` of storage record ``data/<key>``."""
    if stride is None:
        stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
    numel = math.prod(shape) if numel is None else numel
    pid = Persistent(("storage", Global("torch", storage), key, "cpu", numel))
    return Call(Global("torch._utils", "_rebuild_tensor_v2"),
                (pid, offset, tuple(shape), tuple(stride), False,
                 Call(Global("collections", "OrderedDict"), ())))


# --- zip archives, member by member -------------------------------------------------------------


class Deflated(NamedTuple):
    """A zip member given as its raw deflate stream, with the CRC and size it inflates to."""

    stream: bytes
    crc: int
    size: int


def zeros_deflated(mib: int, head: bytes = b"") -> Deflated:
    """``head`` and ``mib`` MiB of zeros as one deflate stream of about ``mib`` KiB.

    Each MiB is compressed once after a full flush (no reference to earlier data), so the
    same bytes can be repeated: building 4 GiB costs a CRC, not a compression.
    """
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(head)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return Deflated(start + block * mib + end, crc, len(head) + (mib << 20))


def write_zip(path: Path, members: dict[str, bytes | Deflated]) -> Path:
    """A zip archive of ``members`` (bytes are stored, :class:`Deflated` ones deflated)."""
    local, central = bytearray(), bytearray()
    for name, data in members.items():
        if isinstance(data, Deflated):
            method, stream, crc, size = 8, data.stream, data.crc, data.size
        else:
            method, stream, crc, size = 0, bytes(data), zlib.crc32(data), len(data)
        raw = name.encode()
        fields = (method, 0, 0x21, crc, len(stream), size, len(raw))
        central += struct.pack("<IHHHH", 0x02014B50, 20, 20, 0, *fields[:1])
        central += struct.pack("<HHIIIHHHHHII", *fields[1:], 0, 0, 0, 0, 0, len(local)) + raw
        local += struct.pack("<IHH", 0x04034B50, 20, 0)
        local += struct.pack("<HHHIIIHH", *fields, 0) + raw + stream
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                      len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


# --- the child ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """What one child runs: ``argv`` is ``None`` for the API, else the ``jaxlstm`` command."""

    path: str
    case_dir: str
    guarded: tuple[str, ...]
    """Attack targets: the directories beside the case, ``/etc/passwd``; no open may reach
    them."""
    log: str
    argv: tuple[str, ...] | None = None


@dataclasses.dataclass
class Result:
    """What the child reported, and what the parent saw of it."""

    entries: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """API: ``{entry point: {"ok", "type", "checkpoint_error", "value_error", "message",
    "elapsed", "summary"}}``."""
    code: int | None = None
    """CLI: the exit status of ``python -m jaxlstm``."""
    stdout: str = ""
    stderr: str = ""
    violations: list[str] = dataclasses.field(default_factory=list)
    """Opens of attack targets or of unexpected places, commands run (audit hook)."""
    native_opens: list[str] = dataclasses.field(default_factory=list)
    """Files in the guarded directories that something in the child opened (inotify)."""
    failure: str | None = None
    """Set when the child did not report: timed out, crashed (signal), died."""


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _library_roots() -> list[str]:
    """Where the interpreter and its libraries live: opening files there is importing."""
    import jaxlstm

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values(),
             *site.getsitepackages(), site.getusersitepackages(),
             str(Path(jaxlstm.__file__).resolve().parents[1]),
             "/proc", "/sys", "/dev", "/usr", "/lib", "/lib64", "/etc/ld.so.cache",
             *(p for p in sys.path if p and os.path.isdir(p))}
    return [r for r in {os.path.realpath(r) for r in roots if r} if r != os.sep]


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 1 << 30


def _entry(call: Any) -> dict[str, Any]:
    from jaxlstm.files import CheckpointError

    start = time.monotonic()
    try:
        value = call()
    except BaseException as error:  # a MemoryError or RecursionError is a finding too
        return {"ok": False, "type": type(error).__name__,
                "checkpoint_error": isinstance(error, CheckpointError),
                "value_error": isinstance(error, ValueError), "message": str(error)[:4000],
                "elapsed": time.monotonic() - start}
    if hasattr(value, "state_dict"):
        summary = {"format": value.format, "keys": sorted(value.state_dict),
                   "sum": float(sum(float(abs(a.astype("float64")).sum())
                                    for a in value.state_dict.values()))}
    else:
        summary = {"type": type(value).__name__}
    return {"ok": True, "elapsed": time.monotonic() - start, "summary": summary}


def _cli(argv: tuple[str, ...]) -> int:
    """``python -m jaxlstm *argv``, in this process, as the interpreter would run it."""
    import runpy
    import traceback

    sys.argv = ["jaxlstm", *argv]
    try:
        runpy.run_module("jaxlstm", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _child(request: Request, report: Any) -> None:
    """Run in the forked child: confine, read, report through ``report`` (a pipe end)."""
    os.setsid()  # a group of its own: a timeout kills whatever it started, too
    log = os.open(request.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    out = os.open(request.log + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(log, 2)
    import jax

    jax.config.update("jax_platforms", "cpu")
    limit = _address_space() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    opened: list[Any] = []
    commands: list[str] = []
    recording = True

    def audit(event: str, args: tuple) -> None:
        if not recording:
            return
        if event == "open":
            opened.append(args[0])
        elif event.startswith(COMMANDS):
            commands.append(f"{event} {args!r}"[:300])

    sys.addaudithook(audit)
    result = Result()
    if request.argv is None:
        import jaxlstm
        from jaxlstm.files import read_checkpoint

        result.entries["read_checkpoint"] = _entry(lambda: read_checkpoint(request.path))
        result.entries["from_checkpoint"] = _entry(lambda: jaxlstm.from_checkpoint(request.path))
    else:
        result.code = _cli(request.argv)
    recording = False
    sys.stdout.flush()
    sys.stderr.flush()
    case_dir = os.path.realpath(request.case_dir)
    guarded = [os.path.realpath(g) for g in request.guarded]
    roots = _library_roots()
    for raw in dict.fromkeys(p for p in opened if isinstance(p, (str, bytes, os.PathLike))):
        path = os.path.realpath(os.fsdecode(raw))
        if any(_within(path, g) for g in guarded) or not (
                _within(path, case_dir) or any(_within(path, r) for r in roots)):
            result.violations.append(f"opened {path}")
    result.violations += [f"ran {command}" for command in commands]
    report.send(result)


# --- the parent ---------------------------------------------------------------------------------

_IN_OPEN, _IN_ISDIR = 0x20, 0x40000000


@contextlib.contextmanager
def _watch_opens(directories: list[str]):
    """Names of the files that anything opened in ``directories`` meanwhile (inotify; on a
    system without it, an empty list)."""
    opened: list[str] = []
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        fd = -1
    if fd >= 0:
        for directory in directories:
            libc.inotify_add_watch(fd, os.fsencode(directory), _IN_OPEN)
    try:
        yield opened
    finally:
        if fd >= 0:
            events = b""
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 1 << 16):
                    events += chunk
            os.close(fd)
            at = 0
            while at + 16 <= len(events):
                _wd, mask, _cookie, size = struct.unpack_from("iIII", events, at)
                name = events[at + 16:at + 16 + size].rstrip(b"\0").decode(errors="replace")
                if name and not mask & _IN_ISDIR:
                    opened.append(name)
                at += 16 + size


_context: Any = None


def _forkserver() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def run(request: Request) -> Result:
    """Run ``request`` in a fresh child; a hang is killed after ``TIMEOUT_S``."""
    context = _forkserver()
    receive, send = context.Pipe(duplex=False)
    watched = [g for g in request.guarded if os.path.isdir(g)]
    with _watch_opens(watched) as native:
        child = context.Process(target=_child, args=(request, send), daemon=True)
        child.start()
        send.close()
        result = None
        answered = receive.poll(TIMEOUT_S)  # True on a report, or when the child died
        if answered:
            with contextlib.suppress(EOFError):
                result = receive.recv()
        child.join(5 if answered else 0)
        if child.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.kill()
            child.join()
        receive.close()
    if result is None:
        result = Result()
        code = child.exitcode
        result.failure = (f"timed out after {TIMEOUT_S} s" if not answered else
                          f"crashed (signal {-code})" if code is not None and code < 0 else
                          f"died with exit status {code} without reporting")
    result.native_opens = native
    for name, log in (("stdout", Path(request.log + ".out")), ("stderr", Path(request.log))):
        if log.is_file():
            setattr(result, name, log.read_text(errors="replace"))
    return result
