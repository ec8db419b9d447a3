//! The pickle machine's stack, memo and operand reading: every push is counted against the
//! decoding budget, and every operand read is checked against the bytes (and the frame) left.

use std::sync::Arc;

use super::error::PickleFault;
use super::record;
use super::vm::{R, Vm};
use crate::checkpoint::value::{Global, Node, Value};

impl<'a> Vm<'a> {
    pub(super) fn push(&mut self, v: Value) {
        self.values += 1;
        self.stack.push(v);
    }

    pub(super) fn push_node(&mut self, n: Node) {
        let v = self.graph.add(n);
        self.push(v);
    }

    pub(super) fn push_global(&mut self, module: String, name: String) {
        // STACK_GLOBAL copies its strings, which memo references can repeat without end.
        self.values += (module.len() + name.len()) / std::mem::size_of::<Value>();
        let g = Global {
            module: module.into(),
            name: name.into(),
        };
        let v = self.graph.add(Node::Global(g.clone()));
        record::named(self.graph, &v, &g, self.proto);
        self.push(v);
    }

    pub(super) fn push_utf8(&mut self, n: usize) -> R<()> {
        let b = self.take(n)?;
        // Python reads lone surrogates ('surrogatepass'), which no Rust string holds: read lossily,
        // two distinct keys would become one, so text that is not strict UTF-8 is refused.
        let s: Arc<str> = std::str::from_utf8(b)
            .map_err(|_| {
                PickleFault::NotUtf8("a BINUNICODE string (or one holding a lone surrogate)")
            })?
            .into();
        self.push(Value::Str(s));
        Ok(())
    }

    pub(super) fn push_bytes(&mut self, n: usize) -> R<()> {
        let b: Arc<[u8]> = self.take(n)?.into();
        self.push_node(Node::Bytes(b));
        Ok(())
    }

    pub(super) fn pop(&mut self) -> R<Value> {
        self.stack.pop().ok_or(PickleFault::StackUnderflow)
    }

    pub(super) fn top(&self) -> R<&Value> {
        self.stack.last().ok_or(PickleFault::StackUnderflow)
    }

    pub(super) fn pop_mark(&mut self) -> R<Vec<Value>> {
        let outer = self.marks.pop().ok_or(PickleFault::NoMark)?;
        Ok(std::mem::replace(&mut self.stack, outer))
    }

    pub(super) fn get(&mut self, i: u32) -> R<()> {
        let v = self
            .memo
            .get(&i)
            .cloned()
            .ok_or(PickleFault::MemoMissing(i))?;
        self.push(v);
        Ok(())
    }

    pub(super) fn put(&mut self, i: u32) -> R<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= self.limits.max_nodes {
            return Err(PickleFault::MemoTooLarge);
        }
        self.memo.insert(i, v);
        Ok(())
    }

    pub(super) fn take(&mut self, n: usize) -> R<&'a [u8]> {
        self.frames.read(self.pos, n)?;
        let remaining = self.data.len() - self.pos;
        if n > remaining {
            return Err(PickleFault::Truncated {
                needs: n,
                remain: remaining,
            });
        }
        let data: &'a [u8] = self.data;
        let s = &data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(super) fn len4(&mut self) -> R<usize> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    pub(super) fn len8(&mut self) -> R<usize> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        usize::try_from(u64::from_le_bytes(a)).map_err(|_| PickleFault::LengthOverflow)
    }

    pub(super) fn line_bytes(&mut self) -> R<&'a [u8]> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleFault::NoNewline)?;
        self.frames.line(self.pos, self.pos + end)?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    pub(super) fn line(&mut self) -> R<String> {
        Ok(String::from_utf8_lossy(self.line_bytes()?).into_owned())
    }

    /// A line CPython decodes as strict UTF-8 (GLOBAL's module and name): other bytes make
    /// torch.load fail, so reading them any other way would disagree with it.
    pub(super) fn line_utf8(&mut self, what: &'static str) -> R<String> {
        let b = self.line_bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| PickleFault::NotUtf8(what))
    }

    /// A line CPython decodes as strict ASCII: INST's module and name, and a PERSID
    /// ("persistent IDs in protocol 0 must be ASCII strings").
    pub(super) fn line_ascii(&mut self, what: &'static str) -> R<String> {
        let b = self.line_bytes()?;
        if !b.is_ascii() {
            return Err(PickleFault::NotAscii(what));
        }
        Ok(String::from_utf8_lossy(b).into_owned())
    }
}
