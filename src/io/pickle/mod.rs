//! A pickle virtual machine that never executes anything.
//!
//! It decodes every opcode of protocols 0–5 into the inert object graph of
//! [`crate::checkpoint::value`]: a global is a `(module, name)` value, REDUCE / NEWOBJ / BUILD make
//! inert objects that keep their class, arguments and state. A small table of well-known
//! reconstructors (tensors, `OrderedDict`, `torch.Size`, sets, `_codecs.encode`, numpy scalars) is
//! interpreted as data; no other global is looked up, imported or called.

mod build;
mod containers;
mod error;
mod frame;
mod keys;
mod literal;
mod ops;
mod reconstruct;
mod record;
mod stack;
mod vm;

use crate::checkpoint::value::{Graph, Value};

pub use error::{FrameConflict, PersistentIdError, PickleError, PickleFault};
pub use vm::unpickle;

/// Hard limits that bound the work and memory a hostile pickle can demand.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Opcodes executed at most.
    pub max_ops: u64,
    /// Graph nodes created at most.
    pub max_nodes: usize,
    /// Values pushed or stored, counted cumulatively, at most: bounds memory whatever the mix of
    /// opcodes (real checkpoints push a few dozen per tensor).
    pub max_values: usize,
    /// Open MARKs (container nesting) at most.
    pub max_depth: usize,
    /// Approximate bytes of decoded objects at most (nodes and values); readers set it to
    /// 48 MiB plus the file's size, so a hostile file cannot make memory outgrow itself.
    pub max_bytes: usize,
}

impl Limits {
    /// The default limits with the memory budget of a file of `file_size` bytes.
    pub fn for_file(file_size: u64) -> Limits {
        Limits {
            max_bytes: (48usize << 20)
                .saturating_add(usize::try_from(file_size).unwrap_or(usize::MAX)),
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_ops: 50_000_000,
            max_nodes: 5_000_000,
            max_values: 8_000_000,
            max_depth: 10_000,
            max_bytes: 48 << 20,
        }
    }
}

/// Resolves a persistent id (torch's storage references) to a value; the only way a pickle reaches
/// data outside itself.
pub trait PersistentLoad {
    /// Turns the pid into a value, usually a storage node.
    fn load(&mut self, graph: &mut Graph, pid: &Value) -> Result<Value, PersistentIdError>;
}

/// A persistent loader for pickles that must not reference anything outside themselves.
pub struct NoPersistentLoad;

impl PersistentLoad for NoPersistentLoad {
    fn load(&mut self, _graph: &mut Graph, _pid: &Value) -> Result<Value, PersistentIdError> {
        Err(PersistentIdError::NotAllowed)
    }
}
