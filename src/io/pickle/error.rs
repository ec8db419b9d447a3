//! Why a pickle could not be decoded: one variant per way the inert VM refuses or fails.

use crate::tensor::ViewError;

/// Why a pickle could not be decoded; `offset` is the byte position of the failing opcode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pickle offset {offset}: {fault}{}", names_suffix(.named))]
pub struct PickleError {
    /// Byte offset of the opcode that failed.
    pub offset: usize,
    /// What went wrong.
    #[source]
    pub fault: PickleFault,
    /// The globals the pickle named before the failure, for the message (empty when none).
    pub named: Vec<String>,
}

fn names_suffix(named: &[String]) -> String {
    if named.is_empty() {
        String::new()
    } else {
        format!("; before that it names {}", named.join(", "))
    }
}

/// One way decoding a pickle fails; the text names the opcode, literal or limit involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PickleFault {
    /// More opcodes than [`super::Limits::max_ops`].
    #[error("more than {0} opcodes")]
    TooManyOps(u64),
    /// More graph nodes than [`super::Limits::max_nodes`].
    #[error("more than {0} objects")]
    TooManyObjects(usize),
    /// More values pushed than [`super::Limits::max_values`].
    #[error("more than {0} values pushed")]
    TooManyValues(usize),
    /// The decoded objects would outgrow the memory budget (in MiB).
    #[error(
        "the decoded objects would take more than {0} MiB, more than a file of this size can hold"
    )]
    TooLarge(usize),
    /// MARKs nested deeper than [`super::Limits::max_depth`].
    #[error("nesting deeper than {0}")]
    TooDeep(usize),
    /// The data ends before STOP.
    #[error("truncated: no STOP opcode")]
    NoStop,
    /// An operand reaches past the end of the pickle.
    #[error("truncated: needs {needs} bytes, {remain} remain in the pickle")]
    Truncated {
        /// Bytes the operand needs.
        needs: usize,
        /// Bytes left.
        remain: usize,
    },
    /// A text operand has no terminating newline.
    #[error("truncated: line without newline")]
    NoNewline,
    /// A FRAME declares more bytes than are left.
    #[error("truncated: a FRAME of {len} bytes with {remaining} bytes left")]
    FrameTruncated {
        /// The frame's declared length.
        len: usize,
        /// Bytes left after its header.
        remaining: usize,
    },
    /// CPython's two unpicklers would read the frames differently.
    #[error("ambiguous: {0} (CPython's C and Python unpicklers read it differently)")]
    FrameAmbiguous(FrameConflict),
    /// A dict key Python cannot hash (a list, dict or set): `torch.load` fails on it.
    #[error("a {0} used as a dict key or set member (Python cannot hash it; torch.load fails)")]
    UnhashableKey(&'static str),
    /// A dict key whose equality with another key cannot be known without running code.
    #[error("ambiguous dict key or set member: {0}")]
    UndecidableKey(&'static str),
    /// A PROTO above 5.
    #[error("unsupported pickle protocol {0}")]
    Protocol(u8),
    /// An opcode byte no protocol defines.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// NEXT_BUFFER / READONLY_BUFFER.
    #[error("out-of-band buffers (protocol 5) are not supported")]
    OutOfBand,
    /// A LONG4 longer than the VM reads.
    #[error("LONG4 of {len} bytes (at most {max} are read)")]
    LongTooLong {
        /// Its declared length.
        len: usize,
        /// The most the VM reads.
        max: usize,
    },
    /// An INT or LONG text literal too long to be a checkpoint's integer.
    #[error("{opcode} literal of {len} characters")]
    LiteralTooLong {
        /// `INT` or `LONG`.
        opcode: &'static str,
        /// Its length in characters.
        len: usize,
    },
    /// A text literal that does not parse (`FLOAT literal`, `integer literal`, `memo index`).
    #[error("bad {what} {text:?}")]
    BadLiteral {
        /// What was expected.
        what: &'static str,
        /// The text found.
        text: String,
    },
    /// A protocol-0 STRING without matching quotes.
    #[error("STRING argument is not quoted: {0:?}")]
    Unquoted(String),
    /// A malformed escape in a STRING or UNICODE literal (the text says which).
    #[error("{0}")]
    BadEscape(&'static str),
    /// String bytes that are not strict UTF-8 (the text says which opcode's): torch.load fails on
    /// them, or (lone surrogates) holds text no UTF-8 string can.
    #[error("{0} that is not UTF-8 (torch.load decodes it strictly)")]
    NotUtf8(&'static str),
    /// A line CPython decodes as strict ASCII (INST's module and name, a PERSID) with a byte
    /// above 127: torch.load fails on it.
    #[error("{0} that is not ASCII (torch.load decodes it strictly)")]
    NotAscii(&'static str),
    /// `_rebuild_tensor_v2` metadata torch applies to the values (a negative or conjugate view).
    #[error(
        "tensor metadata {0} (torch applies it to the values: a negative or conjugate view); not read"
    )]
    TensorMetadata(String),
    /// A parameter or tensor subclass rebuilt with a state torch applies (its items become
    /// attributes: `data` replaces the values).
    #[error(
        "{0} with a non-empty state (torch sets its items on the tensor; `data` replaces the values); not read"
    )]
    ObjectState(&'static str),
    /// An opcode needs more values than the stack holds.
    #[error("stack underflow")]
    StackUnderflow,
    /// An opcode needs a MARK and none is open.
    #[error("no MARK on the stack")]
    NoMark,
    /// GET of a memo key never PUT.
    #[error("memo key {0} was never stored")]
    MemoMissing(u32),
    /// The memo holds as many entries as the node limit.
    #[error("memo too large")]
    MemoTooLarge,
    /// An 8-byte length that does not fit this machine's address space.
    #[error("length overflows")]
    LengthOverflow,
    /// DICT or SETITEMS with an odd number of items.
    #[error("odd number of items for a dict")]
    OddDict,
    /// STACK_GLOBAL whose operands are not two strings.
    #[error("STACK_GLOBAL needs two strings")]
    StackGlobalNotStrings,
    /// REDUCE / NEWOBJ arguments that are not a tuple.
    #[error("arguments are not a tuple")]
    ArgsNotTuple,
    /// OBJ with an empty mark.
    #[error("OBJ without a class")]
    ObjWithoutClass,
    /// APPEND(S) to something that is not a list, object or set (its kind).
    #[error("APPEND to a {0}")]
    AppendTo(&'static str),
    /// SETITEM(S) on something that is not a dict or object (its kind).
    #[error("SETITEM on a {0}")]
    SetItemOn(&'static str),
    /// ADDITEMS to something that is not a set.
    #[error("ADDITEMS to something that is not a set")]
    AddItemsNotSet,
    /// BUILD on a value that cannot take a state (its kind).
    #[error("BUILD on a {0}")]
    BuildOn(&'static str),
    /// BUILD with a state on a builtin container without `__dict__` (its kind): Python raises
    /// AttributeError, so `torch.load` fails.
    #[error(
        "BUILD on a {0}, which has no __dict__ (Python raises AttributeError; torch.load fails)"
    )]
    BuildNoDict(&'static str),
    /// BUILD on a tensor: `Tensor.__setstate__` can replace its data or re-point it at another
    /// storage, which torch.save never asks for.
    #[error(
        "BUILD on a tensor (Tensor.__setstate__ would replace its data or storage; torch.save never writes it)"
    )]
    TensorState,
    /// A BUILD whose state fuse-ema cannot apply as Python would (the text says why).
    #[error("BUILD on {class}: {why}")]
    BuildState {
        /// The target's class, `module.Name`.
        class: String,
        /// What Python would do that is not modelled.
        why: &'static str,
    },
    /// NEWOBJ of a builtin container with arguments: its `__new__` ignores them (only
    /// `__init__`, which NEWOBJ does not run, would fill it).
    #[error(
        "NEWOBJ of {0} with arguments: its __new__ ignores them, so Python's object is empty (readers disagree)"
    )]
    NewWithArguments(String),
    /// NEWOBJ_EX whose keyword arguments are not a dict (Python raises UnpicklingError).
    #[error("NEWOBJ_EX keyword arguments are not a dict")]
    KwargsNotDict,
    /// A builtin container called with arguments Python rejects or reads in a way not modelled.
    #[error("{class}() with {why}")]
    ContainerArguments {
        /// The container, `module.name`.
        class: String,
        /// What is wrong with the arguments.
        why: &'static str,
    },
    /// A reconstructor read as data was called with arguments of the wrong form (the text says
    /// which reconstructor and what is missing).
    #[error("{0}")]
    ReconstructorArgs(&'static str),
    /// `_rebuild_tensor` with too few arguments.
    #[error("_rebuild_tensor with {0} arguments")]
    RebuildArgCount(usize),
    /// `_rebuild_from_type_v2` nested in itself beyond the limit.
    #[error("_rebuild_from_type_v2 nested in itself more than {0} times")]
    RebuildNesting(usize),
    /// A tensor's size or stride is not a tuple (`size` / `stride`).
    #[error("tensor {0} is not a tuple")]
    ShapeNotTuple(&'static str),
    /// A tensor's size or stride holds a negative or non-integer entry.
    #[error("tensor {0} has a negative or non-integer entry")]
    ShapeEntry(&'static str),
    /// A tensor view that does not fit its storage.
    #[error("tensor on storage '{storage}': {source}")]
    View {
        /// The storage's key.
        storage: String,
        /// Why the view does not fit.
        #[source]
        source: ViewError,
    },
    /// The reader's persistent-id resolution refused the id.
    #[error("{0}")]
    PersistentId(#[from] PersistentIdError),
}

/// Why a reader refused a persistent id (torch's reference to a storage or tensor); the text
/// names the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PersistentIdError {
    /// A pickle that may not reference anything outside itself.
    #[error("persistent id in a pickle that may not have any")]
    NotAllowed,
    /// The id is not a tuple.
    #[error("persistent id is not a tuple")]
    NotTuple,
    /// A tuple of the wrong length.
    #[error("persistent id with {got} fields{}", expected.map(|n| format!(", expected {n}")).unwrap_or_default())]
    Fields {
        /// Fields found.
        got: usize,
        /// Fields the reader needs exactly, when it says.
        expected: Option<usize>,
    },
    /// A tuple whose first field is not `'storage'` (its repr).
    #[error("persistent id of kind {0}, expected 'storage'")]
    Kind(String),
    /// A storage view (torch < 0.4).
    #[error("storage views (torch < 0.4) are not supported")]
    StorageView,
    /// A storage key that is not a string.
    #[error("storage key is not a string")]
    KeyNotString,
    /// A storage type global that names no dtype.
    #[error("unknown storage type {0}")]
    StorageType(String),
    /// A storage type that is not a global.
    #[error("storage type is not a global")]
    TypeNotGlobal,
    /// A storage size that is negative or not an integer.
    #[error("storage size is negative or not an integer")]
    BadSize,
    /// A storage the archive does not hold.
    #[error("data.pkl references storage '{key}' but the archive has no {entry}")]
    Missing {
        /// The storage key.
        key: String,
        /// The entry looked for.
        entry: String,
    },
    /// A storage whose byte size overflows.
    #[error("storage '{0}' size overflows")]
    Overflow(String),
    /// A storage entry smaller than its elements.
    #[error("storage '{key}' needs {need} bytes ({numel} x {dtype}) but {entry} holds {size}")]
    TooSmall {
        /// The storage key.
        key: String,
        /// Bytes needed.
        need: usize,
        /// Elements.
        numel: usize,
        /// Element type.
        dtype: crate::tensor::DType,
        /// The entry.
        entry: String,
        /// Bytes it holds.
        size: usize,
    },
    /// A storage entry whose bytes cannot be had.
    #[error("{entry}: {source}")]
    Entry {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        #[source]
        source: crate::io::EntryError,
    },
    /// A storage that does not fit its own bytes.
    #[error("{0}")]
    View(#[from] ViewError),
    /// An empty tuple (torch < 0.4's tar layout).
    #[error("empty persistent id tuple")]
    EmptyTuple,
    /// An id that is neither an int nor a string.
    #[error("persistent id is not a key")]
    NotKey,
    /// A key that names nothing the tar member lists.
    #[error("persistent id '{0}' names no tensor or storage")]
    Unknown(String),
}

/// How a pickle's frames could be read differently by CPython's C and Python unpicklers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameConflict {
    /// A fixed-size read straddles the frame's end.
    #[error("a {len}-byte read at offset {pos} crosses the end of the frame at offset {end}")]
    ReadCrossesEnd {
        /// Bytes read.
        len: usize,
        /// Where the read starts.
        pos: usize,
        /// Where the frame ends.
        end: usize,
    },
    /// A text line's newline lies past the frame's end.
    #[error("a line at offset {pos} runs past the end of the frame at offset {end}")]
    LineCrossesEnd {
        /// Where the line starts.
        pos: usize,
        /// Where the frame ends.
        end: usize,
    },
    /// A FRAME inside a frame not yet used up.
    #[error("a FRAME at offset {pos} starts before the frame ending at offset {end} is used up")]
    FrameInFrame {
        /// Where the new frame's bytes start.
        pos: usize,
        /// Where the current frame ends.
        end: usize,
    },
    /// STOP before the frame's end.
    #[error("the pickle stops at offset {pos}, inside a frame that ends at offset {end}")]
    StopInFrame {
        /// Just past STOP.
        pos: usize,
        /// Where the frame ends.
        end: usize,
    },
}
