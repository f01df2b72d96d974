"""A pickle reader that builds plain data and never runs anything a pickle names.

PyTorch files are pickles, and Python's unpickler imports and calls whatever a pickle names: that
is how ``torch.load(weights_only=False)`` runs code, and how bypasses of its restricted mode
(CVE-2025-32434, CVE-2026-24747) reached code or memory corruption. This module does not use
Python's unpickler at all. It walks the opcodes that ``pickletools.genops`` decodes and gives each
one a meaning of its own:

- a name (``GLOBAL``, ``STACK_GLOBAL``, ``INST``) becomes a ``GlobalRef``: two strings, never
  imported;
- a call (``REDUCE``) of one of the few functions PyTorch uses to rebuild tensors and containers
  runs bncheck's own version of it (``REBUILDERS``), which records where a tensor's bytes are and
  reads none;
- every other call, and every instance (``NEWOBJ``, ``OBJ``, ``INST``) with its state (``BUILD``),
  becomes an inert ``PickledObject`` that holds the name and the arguments. Nothing is called, not
  even ``__setstate__``; calls are logged with their position so the report can name them.

Dictionary keys are restricted to flat values, so a crafted key cannot make hashing explode, and
sets are kept as lists for the same reason. Nor can keys be chosen to collide: Python hashes
numbers and tuples of numbers predictably (``k * (2**61 - 1)`` hashes to 0 for every ``k``), so a
dict of such keys would take quadratic time to fill. Keys whose hash a pickle could steer (ints
beyond 2**61, floats that are not small integers, tuples) are held as ``SaltedKey``, hashed by a
keyed digest with a per-process secret.

A pickle is a program, and a few bytes of it can ask for a lot of work: a million ``EMPTY_DICT``
opcodes are a million objects, and one large list given to ``OrderedDict`` over and over is
copied each time. The machine therefore runs on a budget (``Budget``): steps (each opcode, and
each item a rebuild or ``BUILD`` copies), bytes copied, objects created, and the sizes of the
stack and the memo. A pickle that exceeds one is refused, in one line, before it costs seconds
or hundreds of MB. Calls are logged once per function, with a count.
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
import os
import pickletools
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bncheck.errors import ModelReadError
from bncheck.records import record

#: Names Python 2 pickles use for modules that Python 3 renamed (pickle protocol 2 writes them).
_RENAMED_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
#: Longest rendering of a call's arguments in a report.
_MAX_ARGUMENTS_TEXT = 80


@record
class GlobalRef:
    """A module attribute a pickle names (a class or function); never imported."""

    module: str
    name: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class PickledObject:
    """What a normal unpickler would build by running code: kept as its recipe, never built."""

    target: Any
    """The class or function: a ``GlobalRef``, or another ``PickledObject`` (a call's result)."""
    arguments: tuple[Any, ...]
    kind: str
    """``call`` (``REDUCE``: the target is called with the arguments) or ``instance``
    (``NEWOBJ``/``OBJ``/``INST``: an object of the target class is created)."""
    state: Any = None
    """What ``BUILD`` would hand to ``__setstate__`` (usually the object's ``__dict__``)."""

    @property
    def class_ref(self) -> GlobalRef | None:
        """The class of an instance, when the pickle names it."""
        target = self.target
        return target if self.kind == "instance" and isinstance(target, GlobalRef) else None

    def state_dict(self) -> dict[Any, Any]:
        """The instance's attributes from its state: a dict, or the first of ``(dict, slots)``."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        return state if isinstance(state, dict) else {}


@record
class StorageRef:
    """A tensor storage as the pickle's persistent id describes it; its bytes are elsewhere."""

    key: str
    """Where the bytes are: a zip member name's last part, or a legacy file's storage key."""
    dtype: str
    """Element type name (``float32``, ``bfloat16``, ...), see ``tensor_bytes``."""
    numel: int
    """Elements the storage holds."""
    offset: int = 0
    """Legacy format views: elements skipped at the start of the root storage."""


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A tensor: a view of a storage; its bytes are read only when a BatchNorm array needs them."""

    storage: StorageRef
    offset: int
    """First element, in elements of ``dtype``."""
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


class StateDict(dict[Any, Any]):
    """An ``OrderedDict`` from a pickle, with the attributes ``BUILD`` gave it (``_metadata``)."""

    def __init__(self) -> None:
        super().__init__()
        self.attributes: dict[Any, Any] = {}


@record
class CallRecord:
    """A call a normal unpickler would make; bncheck made none."""

    target: str
    """What is called, e.g. ``posix.system``."""
    arguments: str
    """The arguments, shortened for a report."""
    position: int
    """Byte offset of the ``REDUCE`` opcode in the pickle."""


#: Functions whose calls are listed; a pickle can ask for millions of calls, which are counted.
MAX_LISTED_CALLS = 100


@dataclass
class PickleLog:
    """What a pickle asked for beyond plain data."""

    calls: list[CallRecord] = field(default_factory=list)
    """Calls of anything bncheck does not know as plain data: the first call of each function,
    in pickle order (the first ``MAX_LISTED_CALLS`` functions)."""
    call_count: int = 0
    """All such calls, listed or not."""
    class_names: dict[str, None] = field(default_factory=dict)
    """Classes instances were made of, each once, in pickle order."""
    listed_targets: set[str] = field(default_factory=set)

    @property
    def classes(self) -> list[str]:
        return list(self.class_names)

    def add_call(self, target: str, arguments: Callable[[], str], position: int) -> None:
        """Counts a call; lists it if it is the first of its function (``arguments`` renders
        the arguments, only then)."""
        self.call_count += 1
        if target not in self.listed_targets and len(self.calls) < MAX_LISTED_CALLS:
            self.listed_targets.add(target)
            self.calls.append(CallRecord(target, arguments(), position))


@record
class Budget:
    """How much work one pickle may ask for. PyTorch's pickles of the largest state dicts
    (about 100,000 tensors) stay well inside each limit; a few MB of crafted opcodes would
    otherwise take minutes or GBs."""

    steps: int = 3_000_000
    """Opcodes run, plus the items each rebuild or ``BUILD`` copies: about 5 s of work."""
    copied_bytes: int = 256 << 20
    """Bytes of text or bytes that rebuilds copy (``_codecs.encode``)."""
    objects: int = 1_000_000
    """Containers, instances, calls and names created."""
    stack: int = 1_000_000
    """Items on the stack at once."""
    memo: int = 1_000_000
    """Memo entries."""


DEFAULT_BUDGET = Budget()


#: Element type of each PyTorch storage class.
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}

#: ``torch.<name>`` dtypes that ``_rebuild_tensor_v3`` names.
TORCH_DTYPES = {
    "float64": "float64",
    "double": "float64",
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}

#: Callables that build plain data, which ``torch.load(weights_only=True)`` also accepts or
#: which ordinary training scripts store in checkpoints. bncheck does not build them either, but
#: a call of one is not reported as code.
DATA_CALLS = frozenset(
    {
        "builtins.set",
        "builtins.frozenset",
        "builtins.bytearray",
        "builtins.slice",
        "builtins.complex",
        "builtins.range",
        "collections.defaultdict",
        "collections.deque",
        "collections.Counter",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.dtype",
        "numpy.ndarray",
        "torch.Size",
        "torch.device",
        "torch.serialization._get_layout",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_nested_tensor",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_wrapper_subclass",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch.jit._pickle.build_intlist",
        "torch.jit._pickle.build_doublelist",
        "torch.jit._pickle.build_boollist",
        "torch.jit._pickle.build_tensorlist",
        "torch.jit._pickle.build_complexlist",
        "torch.jit._pickle.restore_type_tag",
        "argparse.Namespace",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "datetime.datetime",
        "datetime.date",
        "datetime.time",
        "datetime.timedelta",
        "decimal.Decimal",
        "uuid.UUID",
    }
)

#: PyTorch's rebuilder of tensor subclasses: it calls its first argument with its third.
_TYPE_REBUILDER = "torch._tensor._rebuild_from_type_v2"
#: Calls that create an instance of the class they are given (protocol 0-2 object pickling).
_INSTANCE_MAKERS = frozenset(
    {"copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"}
)


class PickleRefused(ModelReadError):
    """The pickle is malformed, or asks for something no PyTorch file does."""


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise PickleRefused(f"tensor {what} is not a valid size: {short(value)}")
    return value


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > 64:
        raise PickleRefused(f"tensor {what} is not a tuple of sizes: {short(value)}")
    return tuple(_int(item, what) for item in value)


def _tensor(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None = None
) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise PickleRefused(f"tensor storage is not a storage reference: {short(storage)}")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise PickleRefused(f"tensor size {shape} and stride {strides} differ in length")
    return TensorRef(storage, _int(offset, "offset"), shape, strides, dtype or storage.dtype)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, _grad: Any, _hooks: Any, dtype: Any, *_: Any
) -> TensorRef:
    name = dtype.name if isinstance(dtype, GlobalRef) and dtype.module == "torch" else None
    if name not in TORCH_DTYPES:
        raise PickleRefused(f"tensor of unsupported dtype {short(dtype)}")
    return _tensor(storage, offset, size, stride, TORCH_DTYPES[name])


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _ordered_dict(*arguments: Any) -> StateDict:
    built = StateDict()
    if arguments:
        if len(arguments) != 1 or not isinstance(arguments[0], (list, tuple)):
            raise PickleRefused("OrderedDict built from something other than a list of pairs")
        for pair in arguments[0]:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise PickleRefused("OrderedDict built from something other than pairs")
            built[_key(pair[0])] = pair[1]
    return built


def _size(dimensions: Any = ()) -> tuple[Any, ...]:
    if not isinstance(dimensions, (list, tuple)):
        raise PickleRefused(f"torch.Size of {short(dimensions)}")
    return tuple(dimensions)


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol 2 pickles a bytes object as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise PickleRefused(f"_codecs.encode of {short(text)} as {short(encoding)}")
    return text.encode(encoding)


#: The functions a pickle may have called for real, by name: bncheck's own versions of them.
REBUILDERS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "collections.OrderedDict": _ordered_dict,
    "torch.Size": _size,
    "_codecs.encode": _encode,
}


#: Ints below this size hash to themselves (but -1, which hashes as -2): distinct such keys
#: never share a hash, so a dict of them cannot be filled in quadratic time.
_SAFE_INT = 2**61 - 1
#: The per-process secret of ``SaltedKey``'s hash.
_SALT = os.urandom(16)


class SaltedKey:
    """A dictionary key whose Python hash a pickle could choose (an int beyond 2**61, a float
    that is not a small integer, a tuple): hashed by a keyed digest of its canonical bytes, so
    that no pickle can make many keys share one hash. Equal when of the same types and values."""

    __slots__ = ("value", "_canonical", "_hash")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._canonical = _canonical(value)
        digest = hashlib.blake2b(self._canonical, digest_size=8, key=_SALT).digest()
        self._hash = int.from_bytes(digest, "little", signed=True)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SaltedKey) and self._canonical == other._canonical

    def __repr__(self) -> str:
        return f"SaltedKey({short(self.value)})"


def _canonical(value: Any) -> bytes:
    """Bytes that tell keys apart: equal exactly when the (flat) values are of the same types
    and equal; linear in the value's size."""
    if isinstance(value, tuple):
        parts = [_canonical(item) for item in value]
        return b"t" + b"".join(struct.pack("<Q", len(part)) + part for part in parts)
    if isinstance(value, bool) or value is None:
        return repr(value).encode()
    if isinstance(value, int):
        return b"i" + value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    if isinstance(value, float):
        return b"f" + struct.pack("<d", value)
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return b"b" + value
    if isinstance(value, GlobalRef):
        return (
            b"g"
            + value.module.encode("utf-8", "surrogatepass")
            + b"\0"
            + value.name.encode("utf-8", "surrogatepass")
        )
    return b"o" + struct.pack("<Q", id(value))  # compared by identity, as Python does


def _key(value: Any) -> Any:
    """A dictionary key, refused unless hashing it is cheap and cannot run code; held as a
    ``SaltedKey`` when a pickle could choose its hash."""
    flat = (str, bytes, int, float, bool, type(None), GlobalRef, PickledObject, TensorRef)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not (value.is_integer() and abs(value) < _SAFE_INT):
            return SaltedKey(value)
        return value if abs(value) < _SAFE_INT else SaltedKey(value)
    if isinstance(value, flat):
        return value
    if isinstance(value, tuple) and len(value) <= 16 and all(isinstance(v, flat) for v in value):
        return SaltedKey(value)
    raise PickleRefused(f"dictionary key {short(value)} is not a plain value")


def short(value: Any, depth: int = 2) -> str:
    """A short, printable rendering of pickled data, safe for self-referencing structures."""
    if isinstance(value, GlobalRef):
        return value.dotted
    if isinstance(value, SaltedKey):
        return short(value.value, depth)
    if isinstance(value, PickledObject):
        return f"{short(value.target, 0)}(...)"
    if isinstance(value, (TensorRef, StorageRef)):
        return type(value).__name__
    if isinstance(value, (str, bytes)):
        value = value[: _MAX_ARGUMENTS_TEXT + 1]  # never render more of a long text than shown
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        text = repr(value)
        return text if len(text) <= _MAX_ARGUMENTS_TEXT else text[: _MAX_ARGUMENTS_TEXT - 3] + "..."
    if depth <= 0:
        return "..."
    if isinstance(value, (tuple, list)):
        inner = ", ".join(short(item, depth - 1) for item in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"({inner}{more})" if isinstance(value, tuple) else f"[{inner}{more}]"
    if isinstance(value, dict):
        items = list(itertools.islice(value.items(), 4))
        inner = ", ".join(f"{short(k, 0)}: {short(v, depth - 1)}" for k, v in items)
        return "{" + inner + (", ..." if len(value) > 4 else "") + "}"
    return type(value).__name__


def _global(module: str, name: str) -> Any:
    module = _RENAMED_MODULES.get(module, module)
    dotted = f"{module}.{name}"
    return REBUILDERS.get(dotted) or GlobalRef(module, name)


def _describe_target(target: Any, depth: int = 2) -> str:
    if isinstance(target, GlobalRef):
        return target.dotted
    if isinstance(target, PickledObject):
        inner = _describe_target(target.target, depth - 1) if depth > 0 else "..."
        return f"the result of {inner}(...)"
    return short(target)


_MARK = object()


class _Machine:
    """The pickle stack machine, with bncheck's meaning for each opcode."""

    def __init__(self, persistent_load: Callable[[Any], Any], budget: Budget) -> None:
        self.persistent_load = persistent_load
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.log = PickleLog()
        self.budget = budget
        self.steps = 0
        self.copied_bytes = 0
        self.objects = 0

    def charge(self, steps: int) -> None:
        """Counts work against the budget; refuses the pickle once it is spent."""
        self.steps += steps
        if self.steps > self.budget.steps:
            raise PickleRefused(
                f"the pickle asks for more than {self.budget.steps} steps of work "
                "(opcodes and copied items); no PyTorch file needs that many"
            )

    def charge_copies(self, arguments: tuple[Any, ...]) -> None:
        """Charges a rebuild for the items and bytes its arguments make it copy."""
        for argument in arguments:
            if isinstance(argument, (list, tuple, dict)):
                self.charge(len(argument))
            elif isinstance(argument, (str, bytes)):
                self.copied_bytes += len(argument)
                if self.copied_bytes > self.budget.copied_bytes:
                    raise PickleRefused(
                        f"the pickle asks to copy more than {self.budget.copied_bytes} bytes"
                    )

    def created(self) -> None:
        self.objects += 1
        if self.objects > self.budget.objects:
            raise PickleRefused(
                f"the pickle creates more than {self.budget.objects} objects; no PyTorch file "
                "needs that many"
            )

    def pop_mark(self) -> list[Any]:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index] is _MARK:
                items = self.stack[index + 1 :]
                del self.stack[index:]
                return items
        raise PickleRefused("pickle has no MARK where one is needed")

    def pop(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise PickleRefused("pickle pops from an empty stack")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise PickleRefused("pickle reads from an empty stack")
        return self.stack[-1]

    def call(self, target: Any, arguments: Any, position: int) -> Any:
        if not isinstance(arguments, tuple):
            raise PickleRefused(f"call arguments are not a tuple: {short(arguments)}")
        if callable(target) and target in _REBUILDER_FUNCTIONS:
            self.charge_copies(arguments)
            return target(*arguments)
        if not isinstance(target, (GlobalRef, PickledObject)):
            raise PickleRefused(f"pickle calls {short(target)}, which is not callable")
        dotted = target.dotted if isinstance(target, GlobalRef) else None
        if dotted == _TYPE_REBUILDER:
            # Judge the call it makes: a tensor rebuilder, or anything else a file puts there.
            if len(arguments) != 4 or not isinstance(arguments[2], tuple):
                raise PickleRefused(f"{_TYPE_REBUILDER} with arguments {short(arguments)}")
            return self.call(arguments[0], arguments[2], position)
        if dotted in _INSTANCE_MAKERS and arguments and isinstance(arguments[0], GlobalRef):
            return self.instance(arguments[0], arguments[1:])
        if dotted not in DATA_CALLS:

            def described() -> str:
                text = ", ".join(short(argument) for argument in arguments[:3])
                if len(text) > _MAX_ARGUMENTS_TEXT:
                    text = text[: _MAX_ARGUMENTS_TEXT - 3] + "..."
                return text

            self.log.add_call(_describe_target(target), described, position)
        return PickledObject(target, arguments, "call")

    def instance(self, target: Any, arguments: tuple[Any, ...]) -> PickledObject:
        if not isinstance(target, (GlobalRef, PickledObject)):
            raise PickleRefused(f"pickle instantiates {short(target)}, which is not a class")
        self.log.class_names[_describe_target(target)] = None
        return PickledObject(target, arguments, "instance")

    def build(self, target: Any, state: Any) -> None:
        if isinstance(target, PickledObject):
            target.state = state
        elif isinstance(target, StateDict):
            attributes = state[0] if isinstance(state, tuple) and len(state) == 2 else state
            if isinstance(attributes, dict):
                self.charge(len(attributes))
                target.attributes.update(attributes)
        elif not isinstance(target, TensorRef):
            raise PickleRefused(f"pickle sets the state of a {type(target).__name__}")

    def set_items(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, dict) or len(items) % 2:
            raise PickleRefused("pickle sets items of something that is not a dictionary")
        for index in range(0, len(items), 2):
            target[_key(items[index])] = items[index + 1]

    def run(self, opcodes: Iterator[tuple[pickletools.OpcodeInfo, Any, int | None]]) -> Any:
        stack, memo, budget = self.stack, self.memo, self.budget
        for opcode, argument, position in opcodes:
            name = opcode.name
            handler = _HANDLERS.get(name)
            if handler is None:
                raise PickleRefused(f"pickle opcode {name} is not supported")
            self.charge(1)
            if name in _CREATING:
                self.created()
            if handler(self, argument, position or 0):
                return self.pop()
            if len(stack) > budget.stack or len(memo) > budget.memo:
                raise PickleRefused(
                    f"the pickle holds more than {budget.stack} values on its stack or "
                    f"{budget.memo} in its memo; no PyTorch file needs that many"
                )
        raise PickleRefused("pickle ends without STOP")


def _push(value: Callable[[Any], Any]) -> Callable[[_Machine, Any, int], bool]:
    def handler(machine: _Machine, argument: Any, position: int) -> bool:
        machine.stack.append(value(argument))
        return False

    return handler


def _op(function: Callable[[_Machine, Any, int], None]) -> Callable[[_Machine, Any, int], bool]:
    def handler(machine: _Machine, argument: Any, position: int) -> bool:
        function(machine, argument, position)
        return False

    return handler


def _append(m: _Machine, _: Any, __: int) -> None:
    value = m.pop()
    target = m.top()
    if not isinstance(target, list):
        raise PickleRefused("pickle appends to something that is not a list")
    target.append(value)


def _appends(m: _Machine, _: Any, __: int) -> None:
    items = m.pop_mark()
    target = m.top()
    if not isinstance(target, list):
        raise PickleRefused("pickle appends to something that is not a list")
    target.extend(items)


def _setitem(m: _Machine, _: Any, __: int) -> None:
    value, key = m.pop(), m.pop()
    m.set_items(m.top(), [key, value])


def _setitems(m: _Machine, _: Any, __: int) -> None:
    items = m.pop_mark()
    m.set_items(m.top(), items)


def _dict(m: _Machine, _: Any, __: int) -> None:
    built: dict[Any, Any] = {}
    m.set_items(built, m.pop_mark())
    m.stack.append(built)


def _tuple_of(count: int) -> Callable[[_Machine, Any, int], None]:
    def handler(m: _Machine, _: Any, __: int) -> None:
        items = [m.pop() for _ in range(count)]
        m.stack.append(tuple(reversed(items)))

    return handler


def _additems(m: _Machine, _: Any, __: int) -> None:
    items = m.pop_mark()
    target = m.top()
    if not isinstance(target, list):
        raise PickleRefused("pickle adds set items to something that is not a set")
    target.extend(items)


def _global_op(m: _Machine, argument: Any, __: int) -> None:
    module, _, name = str(argument).partition(" ")
    m.stack.append(_global(module, name))


def _stack_global(m: _Machine, _: Any, __: int) -> None:
    name, module = m.pop(), m.pop()
    if not isinstance(module, str) or not isinstance(name, str):
        raise PickleRefused("STACK_GLOBAL names something with non-text names")
    m.stack.append(_global(module, name))


def _reduce(m: _Machine, _: Any, position: int) -> None:
    arguments, target = m.pop(), m.pop()
    m.stack.append(m.call(target, arguments, position))


def _build(m: _Machine, _: Any, __: int) -> None:
    state = m.pop()
    m.build(m.top(), state)


def _newobj(m: _Machine, _: Any, __: int) -> None:
    arguments, target = m.pop(), m.pop()
    m.stack.append(m.instance(target, arguments if isinstance(arguments, tuple) else ()))


def _newobj_ex(m: _Machine, _: Any, __: int) -> None:
    _keywords, arguments, target = m.pop(), m.pop(), m.pop()
    m.stack.append(m.instance(target, arguments if isinstance(arguments, tuple) else ()))


def _inst(m: _Machine, argument: Any, __: int) -> None:
    module, _, name = str(argument).partition(" ")
    arguments = tuple(m.pop_mark())
    m.stack.append(m.instance(_global(module, name), arguments))


def _obj(m: _Machine, _: Any, __: int) -> None:
    items = m.pop_mark()
    if not items:
        raise PickleRefused("OBJ without a class")
    m.stack.append(m.instance(items[0], tuple(items[1:])))


def _persistent(m: _Machine, pid: Any) -> None:
    m.stack.append(m.persistent_load(pid))


def _memo_get(m: _Machine, argument: Any, _: int) -> None:
    if argument not in m.memo:
        raise PickleRefused(f"pickle reads memo entry {short(argument)} before writing it")
    m.stack.append(m.memo[argument])


def _memo_put(m: _Machine, argument: Any, _: int) -> None:
    m.memo[argument] = m.top()


def _memoize(m: _Machine, _: Any, __: int) -> None:
    m.memo[len(m.memo)] = m.top()


def _pop(m: _Machine, _: Any, __: int) -> None:
    if m.stack and m.stack[-1] is _MARK:
        m.stack.pop()
    else:
        m.pop()


def _pop_mark(m: _Machine, _: Any, __: int) -> None:
    m.pop_mark()


def _ignore(m: _Machine, _: Any, __: int) -> None:
    """PROTO and FRAME only say how the rest is encoded; genops has decoded it."""


def _stop(m: _Machine, _: Any, __: int) -> bool:
    return True


def _frozenset(m: _Machine, _: Any, __: int) -> None:
    m.stack.append(m.pop_mark())


_HANDLERS: dict[str, Callable[[_Machine, Any, int], bool]] = {
    "PROTO": _op(_ignore),
    "FRAME": _op(_ignore),
    "STOP": _stop,
    "MARK": _push(lambda _: _MARK),
    "POP": _op(_pop),
    "POP_MARK": _op(_pop_mark),
    "DUP": _op(lambda m, _, __: m.stack.append(m.top())),
    "NONE": _push(lambda _: None),
    "NEWTRUE": _push(lambda _: True),
    "NEWFALSE": _push(lambda _: False),
    "INT": _push(lambda a: a),
    "BININT": _push(lambda a: a),
    "BININT1": _push(lambda a: a),
    "BININT2": _push(lambda a: a),
    "LONG": _push(lambda a: a),
    "LONG1": _push(lambda a: a),
    "LONG4": _push(lambda a: a),
    "FLOAT": _push(lambda a: a),
    "BINFLOAT": _push(lambda a: a),
    "STRING": _push(lambda a: a),
    "BINSTRING": _push(lambda a: a),
    "SHORT_BINSTRING": _push(lambda a: a),
    "UNICODE": _push(lambda a: a),
    "BINUNICODE": _push(lambda a: a),
    "SHORT_BINUNICODE": _push(lambda a: a),
    "BINUNICODE8": _push(lambda a: a),
    "BINBYTES": _push(lambda a: a),
    "SHORT_BINBYTES": _push(lambda a: a),
    "BINBYTES8": _push(lambda a: a),
    "BYTEARRAY8": _push(lambda a: bytes(a)),
    "EMPTY_LIST": _push(lambda _: []),
    "APPEND": _op(_append),
    "APPENDS": _op(_appends),
    "LIST": _op(lambda m, _, __: m.stack.append(m.pop_mark())),
    "EMPTY_TUPLE": _push(lambda _: ()),
    "TUPLE": _op(lambda m, _, __: m.stack.append(tuple(m.pop_mark()))),
    "TUPLE1": _op(_tuple_of(1)),
    "TUPLE2": _op(_tuple_of(2)),
    "TUPLE3": _op(_tuple_of(3)),
    "EMPTY_DICT": _push(lambda _: {}),
    "DICT": _op(_dict),
    "SETITEM": _op(_setitem),
    "SETITEMS": _op(_setitems),
    "EMPTY_SET": _push(lambda _: []),
    "ADDITEMS": _op(_additems),
    "FROZENSET": _op(_frozenset),
    "GLOBAL": _op(_global_op),
    "STACK_GLOBAL": _op(_stack_global),
    "REDUCE": _op(_reduce),
    "BUILD": _op(_build),
    "NEWOBJ": _op(_newobj),
    "NEWOBJ_EX": _op(_newobj_ex),
    "INST": _op(_inst),
    "OBJ": _op(_obj),
    "PERSID": _op(lambda m, a, _: _persistent(m, a)),
    "BINPERSID": _op(lambda m, _, __: _persistent(m, m.pop())),
    "GET": _op(_memo_get),
    "BINGET": _op(_memo_get),
    "LONG_BINGET": _op(_memo_get),
    "PUT": _op(_memo_put),
    "BINPUT": _op(_memo_put),
    "LONG_BINPUT": _op(_memo_put),
    "MEMOIZE": _op(_memoize),
}
#: Opcodes that create an object (a container, an instance, a call's record, a name).
_CREATING = frozenset(
    {
        "EMPTY_LIST", "LIST", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_DICT", "DICT",
        "EMPTY_SET", "FROZENSET", "GLOBAL", "STACK_GLOBAL", "REDUCE", "NEWOBJ", "NEWOBJ_EX",
        "INST", "OBJ", "PERSID", "BINPERSID", "BYTEARRAY8",
    }
)  # fmt: skip
_REBUILDER_FUNCTIONS = frozenset(REBUILDERS.values())
# Not handled, so refused: EXT1/2/4 (a process-wide registry of names), NEXT_BUFFER and
# READONLY_BUFFER (out-of-band buffers): no PyTorch file uses them.


def load(
    source: bytes | mmap.mmap,
    persistent_load: Callable[[Any], Any],
    budget: Budget = DEFAULT_BUDGET,
) -> tuple[Any, PickleLog, int]:
    """The object a pickle describes, what it asked for beyond data, and where it ended (the
        offset just past ``STOP``, from the start of the file for a mapped file, read from where it
    stands).
        ``persistent_load`` maps a persistent id to a storage; ``budget`` bounds the work."""
    machine = _Machine(persistent_load, budget)
    end = 0

    def opcodes() -> Iterator[tuple[pickletools.OpcodeInfo, Any, int | None]]:
        nonlocal end
        for opcode, argument, position in pickletools.genops(source):  # type: ignore[arg-type]
            end = (position or 0) + 1
            yield opcode, argument, position

    try:
        root = machine.run(opcodes())
    except PickleRefused:
        raise
    except (ValueError, TypeError, EOFError, IndexError, KeyError, UnicodeDecodeError) as exc:
        # genops raises these for malformed opcodes and arguments; a bad handler input too.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PickleRefused(f"malformed pickle ({reason[:200]})") from None
    return root, machine.log, end
