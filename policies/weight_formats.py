"""Weight formats recognised by their structure, wherever they sit (EXT005, and the pickle part of EXT006).

Two entry points, one per kind of evidence:
- `weights_kind_at(path)`: a file's bytes. One read of its first `HEAD_BYTES` (and, for a larger file, one of its
  last `TAIL_BYTES`) decides the common case; a format is confirmed by walking its structure, never by a magic
  number alone: safetensors (the header parses as a tensor table), pickle of any protocol, 0 and 1 included (the
  opcodes from `pickletools.genops`, with the stack, mark and memo discipline the unpickler needs), PyTorch zip and
  legacy files, GGUF/GGML, HDF5, TFLite, ONNX (`ModelProto` fields, producer or not), Flax and other msgpack state
  dicts, numpy `.npy`/`.npz`, and archives — zip (also one appended to another file), tar, gzip/bzip2/xz — whose
  members are judged by name and content, one level of nesting deep. The size of a file never skips it
  (`max_file_bytes` limits text analysis only). A file that cannot be read raises `OSError`: the caller reports it.
  An archive that cannot be opened, or that is too large to inspect, is reported as such (fail closed).
- `pointer_kind(path, text)`: text files that stand for weights stored elsewhere (Git LFS pointers, DVC files).

A kind is a short phrase for the finding ("pickle (protocol 0/1)", "archive containing model.safetensors");
`executes_code(kind)` says whether loading it runs code from the file (pickle-based formats), for EXT006.
No pickle scanner (fickling, picklescan) is in requirements.lock; the opcode walk uses the standard library only.
"""

from __future__ import annotations

import ast
import bz2
import fnmatch
import gzip
import io
import json
import lzma
import os
import pickletools
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from oracle_base.errors import InternalError

HEAD_BYTES = 8192  # the one read every file gets (most files of a repository are smaller)
TAIL_BYTES = 1024  # the end of a larger file: a zip's end-of-central-directory record (a zip appended to a file)
MODEL_SIZED_BYTES = 16 * 2**20  # the smallest pointer target or bare array treated as weights for its size alone
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers: such a file does not load
PICKLE_WINDOW = 1 << 16  # how far a pickle's opcodes are walked (its structure precedes its big payloads)
PICKLE_MIN_OPS = 12  # valid opcodes needed unless the file is exactly its pickles
PICKLE_READ_BUDGET = 1 << 20  # bytes of opcodes read at most (long payloads are skipped, not read)
STRUCTURE_BUDGET = 200_000  # msgpack items or protobuf fields walked at most
MEMBER_WINDOW = 1 << 20  # bytes of an archive member kept to sniff it
ARCHIVE_MEMBERS_MAX = 20_000  # members of one archive judged; an archive with more is reported, not skipped
DECOMPRESS_BUDGET = 1 << 30  # bytes decompressed from one compressed file; more is reported, not skipped
NESTED_ARCHIVE_MAX = 1 << 28  # a zip inside an archive larger than this is reported, not opened

PYTORCH_ZIP = "PyTorch zip archive"
_CODE_KINDS = ("pickle", "PyTorch", "object dtype", ".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt")

# Names that say "weights" (archive members, pointers): suffixes, and the file names hub checkpoints use.
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".hdf5",
    ".keras",
    ".onnx",
    ".tflite",
    ".gguf",
    ".ggml",
    ".pkl",
    ".pickle",
    ".joblib",
    ".nemo",
    ".mar",
    ".llamafile",
    ".caffemodel",
    ".pdparams",
    ".ot",
)
_WEIGHT_FILE_NAME = re.compile(
    r"(^|/)((pytorch|tf|flax|diffusion_pytorch|adapter)_model[\w.-]*|consolidated\.\d+\.pth|"
    r"variables\.(data-\d+-of-\d+|index)|ggml-[\w.-]+\.bin|model-\d+-of-\d+\.\w+)$"
)
_WEIGHT_FOLDER = re.compile(r"(^|/)(models?|weights|checkpoints?|ckpts?|pretrained)/")
# A state dict's key: a path (`encoder.layers.0.weight`, `dense/kernel:0`, `params/Dense_0/kernel`) ending in the
# name of a parameter.
_PARAMETER_NAME = re.compile(
    r"[./:](weight|bias|kernel|scale|embeddings?|running_(mean|var)|gamma|beta|moving_(mean|variance))(:\d+)?$"
)


def executes_code(kind: str) -> bool:
    """Whether loading a file of this kind runs code from the file (pickle-based formats): EXT006's concern."""
    return any(word in kind for word in _CODE_KINDS)


def weights_name(name: str, folders: bool = False) -> bool:
    """Whether a file name says weights (a suffix, or a hub checkpoint's file name); with `folders`, also a path in a
    folder named for models or checkpoints (for pointers, whose content is elsewhere)."""
    lowered = name.lower()
    if lowered.endswith(WEIGHT_SUFFIXES) or _WEIGHT_FILE_NAME.search(lowered):
        return True
    return folders and bool(_WEIGHT_FOLDER.search(lowered + "/"))


class _MalformedError(InternalError):
    """The bytes are not the format being tried."""


class _BudgetError(InternalError):
    """Valid so far, but more than a budget allows to read."""


# --- sources: a file, or a stream (an archive member, a decompressor) -----------------------------------------------
class _Source:
    """Random reads: `size` is the true size; a read past what can be reached returns fewer bytes."""

    size: int

    def read(self, offset: int, n: int) -> bytes:
        raise NotImplementedError


class _FileSource(_Source):
    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def read(self, offset: int, n: int) -> bytes:
        if offset >= self.size or n <= 0 or offset < 0:
            return b""
        return os.pread(self.fd, min(n, self.size - offset), offset)


class _StreamSource(_Source):
    """A forward-only stream. Keeps up to `limit` bytes from its start; a read further on slides the kept window
    forward (reading through what lies between, up to `DECOMPRESS_BUDGET` bytes); what was dropped reads as empty."""

    def __init__(self, stream: IO[bytes], size: int, limit: int = MEMBER_WINDOW) -> None:
        self.stream, self.size, self.limit = stream, size, limit
        self.start, self.buffer, self.ended = 0, bytearray(), False

    def _pull(self, n: int) -> bytes:
        if self.ended or self.start + len(self.buffer) >= DECOMPRESS_BUDGET:
            return b""
        chunk = self.stream.read(n)
        if not chunk:
            self.ended, self.size = True, self.start + len(self.buffer)
        return chunk

    def read(self, offset: int, n: int) -> bytes:
        end = offset + max(n, 0)
        if offset < self.start:
            return b""
        if end - self.start > self.limit:  # keep at most `limit` bytes: drop what lies before `offset`
            drop = min(offset - self.start, len(self.buffer))
            del self.buffer[:drop]
            self.start += drop
        while not self.buffer and self.start < offset:  # read through a gap without keeping it
            chunk = self._pull(min(offset - self.start, 1 << 20))
            if not chunk:
                return b""
            self.start += len(chunk)
            if self.start > offset:
                self.buffer += chunk[len(chunk) - (self.start - offset) :]
                self.start = offset
        while self.start + len(self.buffer) < end:
            chunk = self._pull(max(end - self.start - len(self.buffer), 1 << 14))
            if not chunk:
                break
            self.buffer += chunk
        return bytes(self.buffer[offset - self.start : end - self.start])


class _Cursor:
    """Sequential reads over a source, with a read-ahead buffer (starting with the head already read)."""

    def __init__(self, source: _Source, offset: int = 0, buffer: bytes = b"") -> None:
        self.source, self.offset = source, offset
        self._start, self._buffer = 0 if buffer else offset, buffer

    def take(self, n: int) -> bytes:
        end = self.offset + n
        if not (self._start <= self.offset and end <= self._start + len(self._buffer)):
            self._start, self._buffer = self.offset, self.source.read(self.offset, max(n, HEAD_BYTES))
        data = self._buffer[self.offset - self._start : end - self._start]
        if len(data) < n:
            raise _MalformedError  # the source ends first
        self.offset = end
        return data

    def byte(self) -> int:
        return self.take(1)[0]

    def skip(self, n: int) -> None:
        self.offset += n
        if self.offset > self.source.size:
            raise _MalformedError

    def varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
        raise _MalformedError


class _Reader(io.RawIOBase):
    """A seekable binary file object over a source (zipfile and tarfile need one)."""

    def __init__(self, source: _Source) -> None:
        super().__init__()
        self.source, self.position = source, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self.position, self.source.size)[whence]
        self.position = max(base + offset, 0)
        return self.position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.source.read(self.position, len(buffer))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


class _Budget(io.RawIOBase):
    """A stream that gives at most `budget` bytes, then raises `_BudgetError` (a decompressor's output)."""

    def __init__(self, stream: IO[bytes], budget: int) -> None:
        super().__init__()
        self.stream, self.left = stream, budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.stream.read(min(len(buffer), self.left + 1))
        if len(data) > self.left:
            raise _BudgetError(f"more than {DECOMPRESS_BUDGET >> 20} MiB once decompressed")
        self.left -= len(data)
        buffer[: len(data)] = data
        return len(data)


# --- entry points ---------------------------------------------------------------------------------------------------
def weights_kind_at(path: Path | str, size: int | None = None, name: str | None = None) -> str | None:
    """The weights format of the file at `path` by its structure, or None. Raises OSError when it cannot be read.
    `size`: its size when already known (saves a stat); `name`: its path in the repository (pointers and numpy
    arrays are judged by it too), the file name by default. Git LFS pointers and DVC files are judged by
    `pointer_kind` (without `.gitattributes` patterns: pass those to `pointer_kind` where they matter)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO raises on the read below instead of blocking
    try:
        if size is None:
            size = os.fstat(fd).st_size
        return weights_kind_open(fd, size, os.pread(fd, HEAD_BYTES, 0), name or os.path.basename(path))
    finally:
        os.close(fd)


def weights_kind_open(fd: int, size: int, start: bytes, name: str) -> str | None:
    """`weights_kind_at` for a file the caller opened (`fd`, of `size` bytes) and read from its start: `start` holds
    at least its first HEAD_BYTES (or all of it), so that one read serves the caller and this sniffing."""
    head = start[:HEAD_BYTES]
    if size <= HEAD_BYTES:
        tail = b""
    elif size <= len(start):  # the end was read too
        tail = start[size - TAIL_BYTES : size]
    else:
        tail = os.pread(fd, TAIL_BYTES, size - TAIL_BYTES)
    if head.startswith(b"version https://git-lfs") or name.endswith(_DVC_NAMES):
        pointer = _pointer_at(fd, size, head, name)
        if pointer is not None:
            return pointer
    if head and head[0] not in _CANDIDATE_FIRST_BYTES and not _candidate_elsewhere(head, tail):
        return None  # the common case, decided on the bytes already read
    return _kind(_FileSource(fd, size), head, tail, name, depth=0)


_DVC_NAMES = (".dvc", "dvc.yaml", "dvc.lock")


def _pointer_at(fd: int, size: int, head: bytes, name: str) -> str | None:
    """A Git LFS pointer (at most 1024 bytes, by the spec) or a DVC file, read as text."""
    if size > MEMBER_WINDOW:
        return None  # not a pointer: too large to be one
    data = head if size <= len(head) else head + os.pread(fd, size - len(head), len(head))
    return pointer_kind(name, data.decode("utf-8", "replace"))


def weights_kind(path: Path) -> str | None:
    """The weights format of a file by its structure, or None (the earlier name of `weights_kind_at`)."""
    return weights_kind_at(path)


def zip_weights(path: Path) -> str | None:
    """The weights format of a zip archive by its members (a `torch.save` file, a zip of weight files, an npz of
    parameters), or None for a file that is not a zip or holds no weights. Raises OSError when it cannot be read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        source = _FileSource(fd, os.fstat(fd).st_size)
        return _zip_kind(source, depth=0, strict=False)
    finally:
        os.close(fd)


def sniff_weights(head: bytes, size: int) -> str | None:
    """The weights format that a file's first bytes show (`head`: its first bytes, or all of it), or None. Archives
    need the whole file: use `weights_kind_at`."""
    if head.startswith(b"PK") or head[257:262] == b"ustar" or head.startswith(tuple(p for p, _ in _COMPRESSED)):
        return None
    source = _StreamSource(io.BytesIO(head), size, limit=len(head))
    return _kind(source, head, b"", "", depth=_MAX_DEPTH)


# --- dispatch by the first bytes ------------------------------------------------------------------------------------
_MAX_DEPTH = 2  # 0: the file; 1: a member of an archive; 2: a member of an archive inside an archive (not opened)
_GGML_MAGICS = (b"ggml", b"ggjt", b"ggmf", b"ggla", b"ggsn", b"lmgg", b"tjgg", b"fmgg", b"algg", b"nsgg")
_HDF5 = b"\x89HDF\r\n\x1a\n"
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
_OPAQUE = ((b"7z\xbc\xaf\x27\x1c", "7z"), (b"Rar!\x1a\x07", "RAR"), (b"\x28\xb5\x2f\xfd", "zstd"))


_JSON_START = frozenset(b"{ \t\r\n")  # a safetensors header, after its 8-byte length


def _candidate_elsewhere(head: bytes, tail: bytes) -> bool:
    """Whether bytes other than the first may start a format (`_kind` decides)."""
    return (
        (len(head) > 8 and head[8] in _JSON_START)
        or head[4:8] == b"TFL3"
        or head[257:262] == b"ustar"
        or (len(head) > 512 and _HDF5 in (head[512:520], head[1024:1032], head[2048:2056]))
        or b"PK\x05\x06" in tail
    )


def _kind(source: _Source, head: bytes, tail: bytes, name: str, depth: int) -> str | None:
    if not head:
        return None
    if head[0] in _MAGIC_FIRST_BYTES:
        decided, kind = _magic_kind(source, head, name, depth)
        if decided:
            return kind
    if b"PK\x05\x06" in tail:  # a zip appended to another file
        kind = _zip_kind(source, depth, strict=False)
        if kind is not None:
            return kind
    if len(head) > 512 and _HDF5 in (head[512:520], head[1024:1032], head[2048:2056]):  # after a user block
        return _hdf5_kind(source)
    if head[257:262] == b"ustar":
        return _tar_kind(io.BufferedReader(_Reader(source)), depth, "tar", isinstance(source, _StreamSource))
    if head[4:8] == b"TFL3" and 8 <= int.from_bytes(head[:4], "little") < source.size:
        return "TFLite"
    if len(head) > 8 and head[8] in _JSON_START:
        kind = _safetensors_kind(source, head)
        if kind:
            return kind
    if head[:1] in _PICKLE_STARTS:
        kind = _pickle_kind(source, head)
        if kind:
            return kind
    if 0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF):
        kind = _msgpack_kind(source, head)
        if kind:
            return kind
    if head[0] in _ONNX_FIRST_BYTES:
        return _onnx_kind(source, head)
    return None


def _magic_kind(source: _Source, head: bytes, name: str, depth: int) -> tuple[bool, str | None]:
    """Formats that start with a magic number: (whether the magic decided, the kind)."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return True, _zip_kind(source, depth, strict=True)
    magic = head[:4]
    if (magic == b"GGUF" or magic in _GGML_MAGICS) and len(head) >= 8:
        version = int.from_bytes(head[4:8], "little")  # GGML without a version: the vocabulary size
        if 1 <= version <= (16 if magic == b"GGUF" else 1 << 24):
            return True, "GGUF" if magic == b"GGUF" else "GGML"
    if head.startswith(_HDF5):
        return True, _hdf5_kind(source)
    if head.startswith(b"\x93NUMPY"):
        return True, _npy_kind(source, name)
    for prefix, label in _COMPRESSED:
        if head.startswith(prefix):
            return True, _compressed_kind(source, label, depth)
    for prefix, label in _OPAQUE:
        if head.startswith(prefix):
            return True, f"{label} archive (cannot be inspected; weights may be inside)"
    return False, None


def _hdf5_kind(source: _Source) -> str:
    keras = any(word in source.read(0, 1 << 16) for word in (b"keras_version", b"model_weights", b"layer_names"))
    return "HDF5 (Keras weights)" if keras else "HDF5"


# --- safetensors ----------------------------------------------------------------------------------------------------
def _safetensors_kind(source: _Source, head: bytes) -> str | None:
    """An 8-byte length, then a JSON table of tensors (dtype, shape, data_offsets) and an optional __metadata__."""
    length = int.from_bytes(head[:8], "little")
    if not 2 <= length <= min(source.size - 8, SAFETENSORS_MAX_HEADER):
        return None
    raw = head[8 : 8 + length] if 8 + length <= len(head) else source.read(8, length)
    try:
        table = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(table, dict):
        return None
    tensors = [entry for key, entry in table.items() if key != "__metadata__"]
    if not (tensors or "__metadata__" in table) or not isinstance(table.get("__metadata__", {}), dict):
        return None  # (an empty table is a safetensors file only with its metadata)
    for entry in tensors:
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)):
            return None
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            return None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return None
        if not 0 <= offsets[0] <= offsets[1]:
            return None
    return "safetensors"


# --- pickle ---------------------------------------------------------------------------------------------------------
_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
# A pickle starts with an opcode that needs nothing on the stack: PROTO (protocol 2 on) or, in protocols 0 and 1,
# one that pushes a value or a mark (`(`, `}`, `]`, `c`, `I`, `V`, ...).
_PICKLE_STARTS = frozenset(code for code, op in _OPCODES.items() if not op.stack_before and op.name != "STOP")
_LENGTH_FIELD = {  # opcodes whose argument is a length and that many bytes: skipped, never read
    "BINSTRING": 4,
    "BINUNICODE": 4,
    "BINBYTES": 4,
    "BINUNICODE8": 8,
    "BINBYTES8": 8,
    "BYTEARRAY8": 8,
}
_GLOBAL_NAME = re.compile(r"[A-Za-z_][\w.]*")


class _PickleWalk:
    """Walks pickles over a source, opcode by opcode (`pickletools.genops` over windows of `PICKLE_WINDOW` bytes,
    skipping long byte and string payloads), checking what the unpickler would refuse: unknown opcodes, bad
    arguments, a stack or mark underflow, a memo key read before it is written, a STOP that does not leave exactly
    one value. Bounded: `PICKLE_READ_BUDGET` bytes read and `STRUCTURE_BUDGET` opcodes at most."""

    def __init__(self, source: _Source, head: bytes) -> None:
        self.source, self.head = source, head
        self.ops, self.protocol, self.read = 0, 0, 0

    def window(self, offset: int) -> bytes:
        """The bytes from `offset`: the head already read first, then windows of the source."""
        if offset == 0 and self.head:
            head, self.head = self.head, b""
            return head
        self.read += PICKLE_WINDOW
        if self.read > PICKLE_READ_BUDGET:
            raise _BudgetError
        return self.source.read(offset, PICKLE_WINDOW)

    def pickle(self, offset: int) -> int:
        """One pickle from `offset`; returns the offset after its STOP."""
        stack: list[bool] = []  # True: a mark
        memo: set[object] = set()
        first = True
        while True:
            data = self.window(offset)
            if not data:
                raise _MalformedError  # the data ends before STOP
            stream = io.BytesIO(data)
            done = 0  # bytes of `data` taken by whole opcodes
            try:
                for op, arg, _ in pickletools.genops(stream):
                    self._opcode(op, arg, stack, memo, first)
                    first = False
                    done = stream.tell()
                    if op.name == "STOP":
                        return offset + done
            except (_MalformedError, _BudgetError):
                raise
            except Exception as exc:  # pickletools' own errors: a bad argument, or the window ends
                if stream.tell() < len(data) or isinstance(exc, UnicodeDecodeError):
                    raise _MalformedError from exc
            offset = self._past_window(data, done, offset, stack, memo)

    def _past_window(self, data: bytes, done: int, offset: int, stack: list[bool], memo: set[object]) -> int:
        """Where to go on when an opcode does not fit in the window: past a long payload that fits in the file, or
        to the start of that opcode (a full window that does not hold one opcode exceeds the budget)."""
        op = _OPCODES.get(data[done : done + 1])
        width = _LENGTH_FIELD.get(op.name, 0) if op else 0
        field = data[done + 1 : done + 1 + width]
        if op and width and len(field) == width:
            length = int.from_bytes(field, "little", signed=True)
            end = offset + done + 1 + width + length
            if length < 0 or end > self.source.size:
                raise _MalformedError  # a payload longer than the file
            self._opcode(op, None, stack, memo, False)
            return end
        if offset + len(data) >= self.source.size:
            raise _MalformedError  # the file ends inside an opcode
        if done == 0 and len(data) >= PICKLE_WINDOW:
            raise _BudgetError
        return offset + done

    def _opcode(
        self, op: pickletools.OpcodeInfo, arg: object, stack: list[bool], memo: set[object], first: bool
    ) -> None:
        self.ops += 1
        if self.ops > STRUCTURE_BUDGET:
            raise _BudgetError
        if op.name == "PROTO":
            if not first or not isinstance(arg, int) or not 2 <= arg <= 5:
                raise _MalformedError
            self.protocol = self.protocol or arg
        elif op.name in ("GLOBAL", "INST") and not all(map(_GLOBAL_NAME.fullmatch, str(arg).split(" "))):
            raise _MalformedError
        before, after = op.stack_before, op.stack_after
        pops = len(before)
        if pickletools.markobject in before or (op.name == "POP" and stack and stack[-1]):
            if True not in stack:
                raise _MalformedError  # no mark to pop to
            while not stack.pop():
                pass
            pops = before.index(pickletools.markobject) if pickletools.markobject in before else 0
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack or stack[-1]:
                raise _MalformedError
            memo.add(len(memo) if op.name == "MEMOIZE" else arg)
        elif op.name in ("GET", "BINGET", "LONG_BINGET") and arg not in memo:
            raise _MalformedError
        if pops > len(stack) or any(stack[len(stack) - pops :]):
            raise _MalformedError  # pops more than there is, or pops a mark as a value
        del stack[len(stack) - pops :]
        stack.extend(item is pickletools.markobject for item in after)
        if op.name == "STOP" and stack:
            raise _MalformedError


def _pickle_kind(source: _Source, head: bytes) -> str | None:
    """Pickles back to back from the start (a legacy `torch.save` file is five, then raw tensor bytes): a pickle when
    the opcodes walked are enough not to be chance (`PICKLE_MIN_OPS`), or the file is exactly its pickles."""
    walk = _PickleWalk(source, head)
    offset, complete = 0, 0
    try:
        while offset < source.size and complete < 64:
            offset = walk.pickle(offset)
            complete += 1
    except _MalformedError:
        pass  # what follows the pickles, or no pickle at all
    except _BudgetError:
        return _pickle_label(walk.protocol)  # valid over the whole budget
    if not complete:
        return None
    if walk.ops >= PICKLE_MIN_OPS or (offset == source.size and walk.ops >= 3):
        return _pickle_label(walk.protocol)
    return None


def _pickle_label(protocol: int) -> str:
    return f"pickle (protocol {protocol})" if protocol else "pickle (protocol 0/1)"


# --- numpy ----------------------------------------------------------------------------------------------------------
def _npy_header(source: _Source) -> dict[str, object] | None:
    start = source.read(0, 12)
    if len(start) < 10 or start[6] not in (1, 2, 3):
        return None
    wide = start[6] >= 2
    length = int.from_bytes(start[8:12] if wide else start[8:10], "little")
    offset = 12 if wide else 10
    if length > 1 << 20:
        return None
    try:
        text = re.sub(r"\b(\d+)L\b", r"\1", source.read(offset, length).decode("latin-1"))  # Python 2's longs
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= header.keys():
        return None
    return header


def _object_dtype(descr: object) -> bool:
    if isinstance(descr, str):
        return "O" in descr
    if isinstance(descr, (list, tuple)):
        return any(_object_dtype(part) for part in descr)
    return True  # not a dtype numpy writes


def _npy_kind(source: _Source, name: str) -> str | None:
    header = _npy_header(source)
    if header is None:
        return "numpy .npy whose header cannot be read"
    if _object_dtype(header["descr"]):
        return "numpy .npy with object dtype (a pickle)"
    parameter = _PARAMETER_NAME.search(name.rsplit("/", 1)[-1].lower().removesuffix(".npy"))
    if source.size >= MODEL_SIZED_BYTES or parameter:
        return "numpy .npy array of model weights"
    return None


# --- archives -------------------------------------------------------------------------------------------------------
Member = tuple[str, int, Callable[[], IO[bytes]]]  # name, size, open


def _zip_kind(source: _Source, depth: int, strict: bool) -> str | None:
    """A zip's members; `strict`: the file starts as a zip, so one that cannot be read is reported (else None)."""
    if depth >= _MAX_DEPTH:
        return "archive nested more than one level (not inspected)"
    if isinstance(source, _StreamSource) and source.limit < source.size:
        if source.size > NESTED_ARCHIVE_MAX:
            return f"zip archive of {source.size} bytes inside an archive (not inspected)"
        source.limit = source.size  # a zip's directory is at its end
    try:
        with zipfile.ZipFile(io.BufferedReader(_Reader(source))) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
            names = [info.filename for info in infos]
            if any(n.endswith("data.pkl") for n in names) or (
                any("/data/" in n for n in names) and any(n.endswith("/version") for n in names)
            ):
                return PYTORCH_ZIP
            if len(infos) > ARCHIVE_MEMBERS_MAX:
                return f"zip archive of {len(infos)} members (more than {ARCHIVE_MEMBERS_MAX} to inspect)"
            members = ((i.filename, i.file_size, lambda i=i: archive.open(i)) for i in infos)
            return _members_kind(members, depth, npz=bool(infos) and all(n.endswith(".npy") for n in names))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        return f"zip archive that cannot be read ({exc}; weights may be inside)" if strict else None
    except ValueError as exc:  # a member whose data cannot be decompressed
        return f"zip archive that cannot be read ({exc}; weights may be inside)" if strict else None


def _members_kind(members: Iterator[Member], depth: int, npz: bool = False) -> str | None:
    """The first member that is weights, by name or content, or an npz whose arrays together are; else None."""
    array_bytes, parameter_names, arrays, nested = 0, 0, 0, 0
    for name, size, opener in members:
        with opener() as stream:
            source = _StreamSource(stream, size)
            head = source.read(0, HEAD_BYTES)
            kind = _kind(source, head, b"", name, depth + 1)
        if kind is not None:
            return f"archive containing {name} ({kind})"
        if weights_name(name) and not _text(head):  # named as weights, in a format not recognised here
            return f"archive containing {name}"
        if npz and head.startswith(b"\x93NUMPY"):
            array_bytes += size
            parameter_names += bool(_PARAMETER_NAME.search(name.lower().removesuffix(".npy")))
            arrays += 1
            # a module tree ("model/h0/attn/c_attn/w", "encoder.layers.0.fc1"): three levels or more
            nested += len(re.split(r"[./]", name.removesuffix(".npy"))) >= 3
    if npz and parameter_names:
        return "numpy .npz of model weights (arrays named as parameters)"
    if npz and arrays >= 2 and nested * 2 >= arrays:
        return "numpy .npz of model weights (arrays named as a module tree)"
    if npz and array_bytes >= MODEL_SIZED_BYTES:
        return "numpy .npz of model size"
    return None


def _text(head: bytes) -> bool:
    """Whether the first bytes of a file are text (UTF-8, no NUL; a character cut at the end is allowed)."""
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def _tar_members(archive: tarfile.TarFile) -> Iterator[Member]:
    count = 0
    for member in archive:
        if not member.isfile():
            continue
        count += 1
        if count > ARCHIVE_MEMBERS_MAX:
            raise _BudgetError(f"more than {ARCHIVE_MEMBERS_MAX} members")

        def opener(member: tarfile.TarInfo = member) -> IO[bytes]:
            stream = archive.extractfile(member)
            if stream is None:
                raise tarfile.TarError(f"{member.name} cannot be read")
            return stream

        yield member.name, member.size, opener


def _tar_kind(stream: IO[bytes], depth: int, label: str, stream_mode: bool = True) -> str | None:
    if depth >= _MAX_DEPTH:
        return "archive nested more than one level (not inspected)"
    try:
        mode = "r|" if stream_mode else "r:"
        with tarfile.open(fileobj=stream, mode=mode) as archive:  # type: ignore[call-overload]
            return _members_kind(_tar_members(archive), depth)
    except _BudgetError as exc:
        return f"{label} archive with {exc} (not inspected; weights may be inside)"
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        return f"{label} archive that cannot be read ({exc}; weights may be inside)"
    except OSError as exc:
        if exc.errno is not None:
            raise
        return f"{label} archive that cannot be read ({exc}; weights may be inside)"


def _compressed_kind(source: _Source, label: str, depth: int) -> str | None:
    raw = io.BufferedReader(_Reader(source))
    opened: IO[bytes]
    if label == "gzip":
        opened = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    else:
        opened = bz2.BZ2File(raw) if label == "bzip2" else lzma.LZMAFile(raw)  # noqa: SIM115 (closed with `raw`)
    stream = io.BufferedReader(_Budget(opened, DECOMPRESS_BUDGET), 1 << 16)
    try:
        inner_head = stream.peek(HEAD_BYTES)[:HEAD_BYTES]
        if inner_head[257:262] == b"ustar":
            return _tar_kind(stream, depth, f"{label}-compressed tar")
        if depth >= _MAX_DEPTH:
            return None
        inner = _StreamSource(stream, DECOMPRESS_BUDGET)
        kind = _kind(inner, inner.read(0, HEAD_BYTES), b"", "", depth + 1)
    except _BudgetError:
        return None  # a compressed file (not an archive) judged on its first bytes
    except (EOFError, lzma.LZMAError, zlib.error, ValueError) as exc:
        return f"{label} file that cannot be decompressed ({exc}; weights may be inside)"
    except OSError as exc:
        if exc.errno is not None:
            raise
        return f"{label} file that cannot be decompressed ({exc}; weights may be inside)"
    return f"{label}-compressed {kind}" if kind else None


# --- msgpack (Flax state dicts) -------------------------------------------------------------------------------------
def _msgpack_kind(source: _Source, head: bytes) -> str | None:
    """A msgpack map with named keys whose leaves are arrays: Flax's `to_bytes` (ndarray ext types) or binary arrays
    (msgpack-numpy) making up most of the file; the whole file must be that one map."""
    cursor = _Cursor(source, 0, head)
    seen = {"items": 0, "arrays": 0, "binary": 0}
    try:
        _msgpack_value(cursor, seen, depth=0, key=False)
        if cursor.offset != source.size:
            return None
    except _MalformedError:
        return None
    except _BudgetError:
        pass  # valid over the whole budget: judged on what was seen
    if seen["arrays"]:
        return "Flax msgpack state dict"
    if seen["binary"] >= max(source.size // 2, 1024):
        return "msgpack state dict of binary arrays"
    return None


_MSGPACK_LENGTH = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC7: 1, 0xC8: 2, 0xC9: 4}
_MSGPACK_FIXED = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_MSGPACK_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}


def _msgpack_value(cursor: _Cursor, seen: dict[str, int], depth: int, key: bool) -> None:
    seen["items"] += 1
    if seen["items"] > STRUCTURE_BUDGET:
        raise _BudgetError
    byte = cursor.byte()
    is_map = 0x80 <= byte <= 0x8F or byte in (0xDE, 0xDF)
    if depth > 64 or (depth == 0 and not is_map):
        raise _MalformedError
    if key and not (0xA0 <= byte <= 0xBF or byte in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6)):
        raise _MalformedError  # a state dict's keys are names
    if byte <= 0x7F or byte >= 0xE0 or byte in (0xC0, 0xC2, 0xC3):
        return
    if is_map or 0x90 <= byte <= 0x9F or byte in (0xDC, 0xDD):
        width = 2 if byte in (0xDC, 0xDE) else 4
        count = byte & 0x0F if byte <= 0x9F else int.from_bytes(cursor.take(width), "big")
        for _ in range(count):
            if is_map:
                _msgpack_value(cursor, seen, depth + 1, key=True)
            _msgpack_value(cursor, seen, depth + 1, key=False)
    elif 0xA0 <= byte <= 0xBF:
        cursor.skip(byte & 0x1F)
    elif byte in _MSGPACK_FIXED:
        cursor.skip(_MSGPACK_FIXED[byte])
    elif byte in _MSGPACK_LENGTH or byte in _MSGPACK_FIXEXT:
        if byte in _MSGPACK_FIXEXT:
            length = _MSGPACK_FIXEXT[byte]
        else:
            length = int.from_bytes(cursor.take(_MSGPACK_LENGTH[byte]), "big")
        if byte >= 0xC7 and byte not in (0xD9, 0xDA, 0xDB):  # an ext: a type byte, then the payload
            ext_type = cursor.byte()
            payload = cursor.source.read(cursor.offset, min(length, 256))
            seen["arrays"] += ext_type == 1 and _flax_array(payload)
        if byte not in (0xD9, 0xDA, 0xDB):
            seen["binary"] += length
        cursor.skip(length)
    else:
        raise _MalformedError  # 0xC1 is never used


def _flax_array(payload: bytes) -> bool:
    """Flax packs an array as ext type 1 holding msgpack of (shape, dtype name, buffer): checks the first two and
    that the third is binary (its bytes lie beyond the part read)."""
    cursor = _Cursor(_StreamSource(io.BytesIO(payload), len(payload), limit=len(payload)), 0, payload)
    try:
        if _msgpack_array_length(cursor) != 3:
            return False
        for _ in range(_msgpack_array_length(cursor)):
            byte = cursor.byte()
            if byte > 0x7F and byte not in _MSGPACK_FIXED:
                return False  # a dimension is an integer
            cursor.skip(_MSGPACK_FIXED.get(byte, 0) if byte > 0x7F else 0)
        byte = cursor.byte()
        if 0xA0 <= byte <= 0xBF:
            length = byte & 0x1F
        elif byte == 0xD9:
            length = cursor.byte()
        else:
            return False
        dtype = cursor.take(length)
        return bool(re.fullmatch(rb"[a-z]+\d*", dtype)) and cursor.byte() in (0xC4, 0xC5, 0xC6)
    except _MalformedError:
        return False


def _msgpack_array_length(cursor: _Cursor) -> int:
    byte = cursor.byte()
    if 0x90 <= byte <= 0x9F:
        return byte & 0x0F
    if byte in (0xDC, 0xDD):
        return int.from_bytes(cursor.take(2 if byte == 0xDC else 4), "big")
    raise _MalformedError


# --- ONNX (protobuf ModelProto) -------------------------------------------------------------------------------------
# ModelProto: ir_version 1 (varint), producer_name 2, producer_version 3, domain 4, model_version 5 (varint),
# doc_string 6, graph 7, opset_import 8, metadata_props 14, training_info 20, functions 25, configuration 26.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_GRAPH_FIELDS = {1, 2, 5, 10, 11, 12, 13, 14, 15, 16}  # GraphProto: node, name, initializer, ... (all messages)
_ONNX_FIRST_BYTES = frozenset(((f << 3 | w) & 0x7F) | (0x80 if f >= 16 else 0) for f, w in _MODEL_FIELDS.items())


def _model_fields_in(head: bytes) -> bool:
    """Whether the fields that start within `head` are ModelProto fields of their wire types (a quick first pass)."""
    at = 0
    while at < len(head):
        tag, at = _varint_at(head, at)
        if tag < 0 or _MODEL_FIELDS.get(tag >> 3) != tag & 7:
            return tag == -2  # -2: the head ends inside the tag
        value, at = _varint_at(head, at)
        if value == -1:
            return False
        if tag & 7 == 2:
            at += value
    return True


def _varint_at(data: bytes, at: int) -> tuple[int, int]:
    """A varint at `at` and the offset after it; -2 when `data` ends first, -1 when it is too long."""
    value = 0
    for shift in range(0, 70, 7):
        if at >= len(data):
            return -2, at
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
    return -1, at


def _onnx_kind(source: _Source, head: bytes) -> str | None:
    """ONNX by its top-level fields: each a ModelProto field of its wire type, up to the end of the file, with an
    `ir_version` and a `graph` whose first field is a GraphProto field (a producer name is not needed)."""
    if not _model_fields_in(head):
        return None  # the common case (text whose first byte is a field tag), decided on the head alone
    cursor = _Cursor(source, 0, head)
    seen: set[int] = set()
    graph_ok = False
    try:
        for _ in range(STRUCTURE_BUDGET):
            if cursor.offset == source.size:
                break
            tag = cursor.varint()
            field, wire = tag >> 3, tag & 7
            if _MODEL_FIELDS.get(field) != wire:
                return None
            if wire == 0:
                value = cursor.varint()
                if field == 1 and not 1 <= value <= 64:
                    return None
            else:
                length = cursor.varint()
                if field == 7 and length:
                    graph_tag = _Cursor(source, cursor.offset).varint()
                    graph_ok = graph_tag & 7 == 2 and graph_tag >> 3 in _GRAPH_FIELDS
                cursor.skip(length)
            seen.add(field)
        else:
            return None
    except _MalformedError:
        return None
    return "ONNX" if {1, 7} <= seen and graph_ok else None


# --- pointers: Git LFS and DVC --------------------------------------------------------------------------------------
_LFS = re.compile(r"\Aversion https://git-lfs\.github\.com/spec/v1\s*\n(?:.*\n)*?size (\d+)\s*$", re.MULTILINE)
_LFS_OID = re.compile(r"^oid sha256:[0-9a-f]{64}\s*$", re.MULTILINE)
_YAML_ITEM = re.compile(r"^(\s*)(-\s+)?(?:(path|size|md5|hash|outs|deps|metrics|plots|[\w.-]+):)?\s*(.*?)\s*$")


def lfs_weight_patterns(gitattributes: str) -> list[str]:
    """The patterns of a `.gitattributes` routed to Git LFS that name weights (`*.safetensors filter=lfs ...`)."""
    patterns = []
    for line in gitattributes.splitlines():
        parts = line.split()
        lfs = len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]
        if lfs and weights_name(parts[0].replace("*", "x"), folders=True):
            patterns.append(parts[0])
    return patterns


def pointer_kind(path: str, text: str, lfs_patterns: list[str] | tuple[str, ...] = ()) -> str | None:
    """Whether a text file stands for weights kept elsewhere: a Git LFS pointer whose path (or a `.gitattributes` LFS
    pattern it matches, from `lfs_weight_patterns`) names weights, or whose object is model-sized; a DVC file
    (`*.dvc`, `dvc.yaml`, `dvc.lock`) whose outputs name weights or are model-sized. None otherwise."""
    text = text.lstrip("\ufeff")
    match = _LFS.match(text)
    if match and _LFS_OID.search(text):
        size = int(match.group(1))
        base = path.rsplit("/", 1)[-1]
        if weights_name(path, folders=True) or any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(base, p) for p in lfs_patterns
        ):
            return f"Git LFS pointer to weights ({size} bytes)"
        if size >= MODEL_SIZED_BYTES:
            return f"Git LFS pointer to a model-sized object ({size} bytes)"
        return None
    base = path.rsplit("/", 1)[-1]
    if base.endswith(".dvc") or base in ("dvc.yaml", "dvc.lock"):
        return _dvc_kind(path, base.endswith(".dvc"), text)
    return None


def _dvc_kind(path: str, tracking_file: bool, text: str) -> str | None:
    """A `.dvc` file's outputs are everything it lists; a `dvc.yaml`/`dvc.lock` stage's are under `outs:`."""
    if tracking_file and weights_name(path.removesuffix(".dvc"), folders=True):
        return f"DVC file tracking weights ({path.removesuffix('.dvc')})"
    outs_indent = -1
    for line in text.splitlines():
        match = _YAML_ITEM.match(line)
        if not match or not line.strip() or line.lstrip().startswith("#"):
            continue
        indent, item, key, value = len(match.group(1)), match.group(2), match.group(3), match.group(4)
        value = value.strip("'\"").rstrip(":").strip("'\"")
        if outs_indent >= 0 and (indent < outs_indent or (indent == outs_indent and not item)):
            outs_indent = -1
        if key in ("outs", "deps", "metrics", "plots") and not value:
            outs_indent = indent if key == "outs" else -1
            continue
        if not (tracking_file or outs_indent >= 0):
            continue
        if key == "size" and value.isdigit() and int(value) >= MODEL_SIZED_BYTES:
            return f"DVC output of model size ({value} bytes)"
        # `path: X` (dvc.lock, .dvc), `- X` (dvc.yaml), or `- X:` followed by its options
        out = value if key == "path" or (item and key is None) else (key if item and not value else None)
        if out and weights_name(out.rstrip("/"), folders=True):
            return f"DVC output naming weights ({out})"
    return None


# First bytes of the formats that start with a magic number, and of all the formats `_kind` tries by their first
# byte (a file starting otherwise needs `_candidate_elsewhere`).
_MAGIC_FIRST_BYTES = frozenset(
    magic[0] for magic in (*_GGML_MAGICS, b"GGUF", b"PK", _HDF5, b"\x93NUMPY", *(p for p, _ in _COMPRESSED + _OPAQUE))
)
_CANDIDATE_FIRST_BYTES = (
    _MAGIC_FIRST_BYTES
    | {code[0] for code in _PICKLE_STARTS}
    | set(range(0x80, 0x90))
    | {0xDE, 0xDF}
    | _ONNX_FIRST_BYTES
)
