//! A head start on the disk writes of an output, so the fsync before its rename waits for little.
//!
//! Every output is fsynced before it takes its name ([`super::AtomicFile::commit`]). Left to
//! itself the kernel writes dirty pages back after seconds, so that fsync would wait for the whole
//! file; `sync_file_range(SYNC_FILE_RANGE_WRITE)` queues the writes without waiting, and they then
//! overlap whatever the process does next (the rest of the file, or export's parity check).

use std::fs::File;
use std::io::{self, Seek, Write};

/// Bytes written between two starts of their writeback.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Starts the disk writeback of an output's bytes as they are written, [`WRITEBACK_STEP`] at a
/// time (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`: it queues the writes and does not wait
/// for them). Only a head start: durability still comes from the fsync before the rename, which
/// also reports any write error, so a failure to start is ignored here.
#[derive(Debug, Default)]
pub(crate) struct Writeback {
    from: u64,
}

impl Writeback {
    /// Bytes up to `to` have been written to `file`: starts the writeback of the ones not yet
    /// started once there are enough of them.
    pub(crate) fn written(&mut self, file: &File, to: u64) {
        if to >= self.from + WRITEBACK_STEP {
            self.finish(file, to);
        }
    }

    /// Bytes up to `to` are all there will be for now: starts the writeback of every one not
    /// yet started, however few.
    pub(crate) fn finish(&mut self, file: &File, to: u64) {
        if to > self.from {
            start_writeback(file, self.from, to - self.from);
            self.from = to;
        }
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on an open descriptor this process owns; it reads no memory.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _from: u64, _len: u64) {}

/// A writer to a file at its position that starts the writeback of what it wrote as it goes
/// ([`Writeback`], which may outlive it and serve the next part of the file).
pub(crate) struct WritebackFile<'f> {
    file: &'f mut File,
    pos: u64,
    writeback: &'f mut Writeback,
}

impl<'f> WritebackFile<'f> {
    /// Writes to `file` from its current position.
    pub(crate) fn new(
        file: &'f mut File,
        writeback: &'f mut Writeback,
    ) -> io::Result<WritebackFile<'f>> {
        let pos = file.stream_position()?;
        Ok(WritebackFile {
            file,
            pos,
            writeback,
        })
    }

    /// Done writing: starts the writeback of what is left (see [`Writeback::finish`]).
    pub(crate) fn finish(self) {
        self.writeback.finish(self.file, self.pos);
    }
}

impl Write for WritebackFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        self.writeback.written(self.file, self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeback_starts_per_step_and_finishes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("f")).unwrap();
        let mut w = Writeback::default();
        w.written(&f, WRITEBACK_STEP - 1);
        assert_eq!(w.from, 0, "less than a step waits");
        w.written(&f, WRITEBACK_STEP + 5);
        assert_eq!(w.from, WRITEBACK_STEP + 5, "a step or more starts");
        w.finish(&f, WRITEBACK_STEP + 9);
        assert_eq!(w.from, WRITEBACK_STEP + 9, "finish starts however few");
        w.finish(&f, WRITEBACK_STEP + 9);
        assert_eq!(w.from, WRITEBACK_STEP + 9, "nothing new, nothing started");
    }

    #[test]
    fn a_writeback_file_writes_at_its_position_and_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"head ").unwrap();
        let mut w = Writeback::default();
        let mut wf = WritebackFile::new(&mut f, &mut w).unwrap();
        wf.write_all(b"tail").unwrap();
        wf.finish();
        assert_eq!(w.from, 9);
        assert_eq!(std::fs::read(&path).unwrap(), b"head tail");
    }
}
