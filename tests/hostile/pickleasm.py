"""A small pickle assembler for the hostile corpus: values are written as opcodes directly, so no
dangerous callable is ever imported, pickled or called while the corpus is built.

Values: None, bool, int, str, bytes, list, tuple, dict, and the node classes below (a global, a
call through REDUCE, NEWOBJ, BUILD, a persistent id, raw opcode bytes). `dumps(value, proto)`
gives a complete pickle; `ops(value, proto)` the opcodes without PROTO/STOP."""

import struct


class G:
    """A global `module name`, pushed with GLOBAL (protocol < 4) or STACK_GLOBAL (4+)."""

    def __init__(self, module, name, stack=None):
        self.module, self.name, self.stack = module, name, stack


class Call:
    """`func(*args)` through REDUCE."""

    def __init__(self, func, *args):
        self.func, self.args = func, args


class NewObj:
    """`cls.__new__(cls, *args)` through NEWOBJ (protocol 2+)."""

    def __init__(self, cls, *args):
        self.cls, self.args = cls, args


class Build:
    """`obj` with `state` applied through BUILD."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


class Persid:
    """A persistent id (BINPERSID) whose id is `value`."""

    def __init__(self, value):
        self.value = value


class Inst:
    """Protocol 0 INST: `module.name(*args)` with the global spelled inline."""

    def __init__(self, module, name, *args):
        self.module, self.name, self.args = module, name, args


class Raw:
    """Opcode bytes written as they are."""

    def __init__(self, data):
        self.data = data


def _string(s, proto):
    b = s.encode("utf-8")
    if proto == 0:
        return b"V" + s.encode("raw-unicode-escape") + b"\n"
    if proto >= 4 and len(b) < 256:
        return b"\x8c" + bytes([len(b)]) + b
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n, proto):
    if proto == 0:
        return b"I%d\n" % n
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def ops(v, proto):
    """The opcodes that push `v`."""
    out = bytearray()
    _emit(v, proto, out)
    return bytes(out)


def _emit(v, proto, out):
    if v is None:
        out += b"N"
    elif v is True or v is False:
        out += (b"\x88" if v else b"\x89") if proto >= 2 else (b"I01\n" if v else b"I00\n")
    elif isinstance(v, int):
        out += _int(v, proto)
    elif isinstance(v, float):
        out += b"G" + struct.pack(">d", v)
    elif isinstance(v, str):
        out += _string(v, proto)
    elif isinstance(v, bytes):
        assert proto >= 3, "bytes need protocol 3"
        out += (b"C" + bytes([len(v)]) if len(v) < 256 else b"B" + struct.pack("<I", len(v))) + v
    elif isinstance(v, list):
        # EMPTY_LIST + APPENDS as pickle writes them (torch's weights_only reader knows no LIST).
        out += b"(" if proto == 0 else b"](" if v else b"]"
        for x in v:
            _emit(x, proto, out)
        out += b"l" if proto == 0 else b"e" if v else b""
    elif isinstance(v, tuple):
        if proto >= 1 and not v:
            out += b")"
            return
        out += b"("
        for x in v:
            _emit(x, proto, out)
        out += b"t"
    elif isinstance(v, dict):
        out += b"(" if proto == 0 else b"}(" if v else b"}"
        for k, x in v.items():
            _emit(k, proto, out)
            _emit(x, proto, out)
        out += b"d" if proto == 0 else b"u" if v else b""
    elif isinstance(v, G):
        stack = v.stack if v.stack is not None else proto >= 4
        if stack:
            out += _string(v.module, max(proto, 4)) + _string(v.name, max(proto, 4)) + b"\x93"
        else:
            out += b"c" + v.module.encode() + b"\n" + v.name.encode() + b"\n"
    elif isinstance(v, Call):
        _emit(v.func, proto, out)
        _emit(tuple(v.args), proto, out)
        out += b"R"
    elif isinstance(v, NewObj):
        _emit(v.cls, proto, out)
        _emit(tuple(v.args), proto, out)
        out += b"\x81"
    elif isinstance(v, Build):
        _emit(v.obj, proto, out)
        _emit(v.state, proto, out)
        out += b"b"
    elif isinstance(v, Persid):
        _emit(v.value, proto, out)
        out += b"Q"
    elif isinstance(v, Inst):
        out += b"("
        for x in v.args:
            _emit(x, proto, out)
        out += b"i" + v.module.encode() + b"\n" + v.name.encode() + b"\n"
    elif isinstance(v, Raw):
        out += v.data
    else:
        raise TypeError(f"cannot assemble {type(v)}")


def dumps(v, proto=2):
    """A complete pickle of `v`: PROTO (protocol 2+), the value, STOP."""
    head = b"\x80" + bytes([proto]) if proto >= 2 else b""
    return head + ops(v, proto) + b"."


# ---- torch objects, spelled the way torch.save pickles them ----


def tensor(key, numel, shape, stride, offset=0, storage="FloatStorage"):
    """`torch._utils._rebuild_tensor_v2` over storage `key` (a zip record or legacy key)."""
    pid = ("storage", G("torch", storage), key, "cpu", numel)
    return Call(
        G("torch._utils", "_rebuild_tensor_v2"),
        Persid(pid),
        offset,
        tuple(shape),
        tuple(stride),
        False,
        Call(G("collections", "OrderedDict")),
    )


def legacy_tensor(key, numel, shape, stride):
    """A tensor of the legacy format: its persistent id carries a view slot (None)."""
    pid = ("storage", G("torch", "FloatStorage"), key, "cpu", numel, None)
    return Call(
        G("torch._utils", "_rebuild_tensor_v2"),
        Persid(pid),
        0,
        tuple(shape),
        tuple(stride),
        False,
        Call(G("collections", "OrderedDict")),
    )


def ordered_dict(items):
    """`collections.OrderedDict` built as torch.save writes it (REDUCE with no args, SETITEMS)."""
    out = Raw(ops(Call(G("collections", "OrderedDict")), 2))
    body = b"("
    for k, v in items:
        body += ops(k, 2) + ops(v, 2)
    return Raw(out.data + body + b"u")


def module_obj(cls_module, cls_name, state):
    """A module object as torch.save pickles it: copyreg._reconstructor(cls, object, None), BUILD."""
    return Build(
        Call(G("copy_reg", "_reconstructor"), G(cls_module, cls_name), G("__builtin__", "object"), None),
        state,
    )
