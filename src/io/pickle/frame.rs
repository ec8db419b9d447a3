//! FRAME (protocol 4), read so that CPython's two unpicklers cannot disagree.
//!
//! The C unpickler (what `pickle.load` and torch use) only checks that a frame's bytes exist and
//! then reads straight on, across frame ends. The Python unpickler (`pickle._Unpickler`, and
//! scanners built on it) reads each frame into a buffer: a read that straddles the frame's end,
//! or a new FRAME before the current one is used up, fails there; a STOP before the frame's end
//! leaves the stream positioned at the frame's end rather than after STOP. Where the two differ,
//! a pickle can show one of them opcodes the other never sees (a BINBYTES whose length reaches
//! past the frame hides the opcodes inside it from a frame-aware reader, or the reverse), so
//! every such pickle is refused.

/// Where the current frame ends, if the reader is inside one.
#[derive(Debug, Default)]
pub(super) struct Frames {
    end: Option<usize>,
}

use super::error::{FrameConflict, PickleFault};

fn ambiguous(c: FrameConflict) -> PickleFault {
    PickleFault::FrameAmbiguous(c)
}

impl Frames {
    /// A read of `n` bytes at `pos`: inside the frame, or starting exactly at its end (which
    /// leaves the frame).
    pub fn read(&mut self, pos: usize, n: usize) -> Result<(), PickleFault> {
        if let Some(end) = self.end {
            if pos == end && n != 0 {
                self.end = None;
            } else if pos.saturating_add(n) > end {
                return Err(ambiguous(FrameConflict::ReadCrossesEnd {
                    len: n,
                    pos,
                    end,
                }));
            }
        }
        Ok(())
    }

    /// A line read at `pos` whose newline is at `newline`: it must end inside the frame.
    pub fn line(&mut self, pos: usize, newline: usize) -> Result<(), PickleFault> {
        if let Some(end) = self.end {
            if pos == end {
                self.end = None;
            } else if newline >= end {
                return Err(ambiguous(FrameConflict::LineCrossesEnd { pos, end }));
            }
        }
        Ok(())
    }

    /// A FRAME whose length field ended at `pos` declares `len` bytes, `remaining` are left.
    pub fn start(&mut self, pos: usize, len: usize, remaining: usize) -> Result<(), PickleFault> {
        if let Some(end) = self.end
            && pos != end
        {
            return Err(ambiguous(FrameConflict::FrameInFrame { pos, end }));
        }
        if len > remaining {
            return Err(PickleFault::FrameTruncated { len, remaining });
        }
        self.end = Some(pos + len);
        Ok(())
    }

    /// STOP has been read and the pickle ends at `pos`: it must not end inside a frame.
    pub fn stop(&self, pos: usize) -> Result<(), PickleFault> {
        match self.end {
            Some(end) if pos != end => Err(ambiguous(FrameConflict::StopInFrame { pos, end })),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::checkpoint::value::{Graph, Value};
    use crate::io::pickle::{Limits, NoPersistentLoad, unpickle};

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut b = vec![0x95];
        b.extend_from_slice(&(body.len() as u64).to_le_bytes());
        b.extend_from_slice(body);
        b
    }

    fn run(p: &[u8]) -> Result<(Value, usize), String> {
        let mut g = Graph::new();
        unpickle(p, &mut g, &mut NoPersistentLoad, &Limits::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn frames_that_both_unpicklers_read_alike_are_accepted() {
        let mut p = b"\x80\x04".to_vec();
        p.extend(frame(b"K\x07."));
        assert_eq!(run(&p).unwrap(), (Value::Int(7), p.len()));
        // A frame used up exactly, then unframed opcodes (Python leaves the frame there).
        let mut p = b"\x80\x04".to_vec();
        p.extend(frame(b"N0"));
        p.extend_from_slice(b"K\x02.");
        assert_eq!(run(&p).unwrap().0, Value::Int(2));
        // Consecutive frames, the second starting where the first ends.
        let mut p = b"\x80\x04".to_vec();
        p.extend(frame(b"N0"));
        p.extend(frame(b"K\x03."));
        assert_eq!(run(&p).unwrap().0, Value::Int(3));
    }

    #[test]
    fn an_argument_crossing_the_frame_end_is_refused() {
        // SHORT_BINBYTES of 12 bytes in a frame that ends after 3 of them: a frame-aware reader
        // fails, the C unpickler swallows the global inside the bytes.
        let mut body = b"C\x0c".to_vec();
        body.extend_from_slice(b"cos\nsystem\n");
        let mut p = b"\x80\x04".to_vec();
        p.extend(frame(&body[..5]));
        p.extend_from_slice(&body[5..]);
        p.extend_from_slice(b"0N.");
        let e = run(&p).unwrap_err();
        assert!(
            e.contains("ambiguous") && e.contains("crosses the end of the frame"),
            "{e}"
        );
    }

    #[test]
    fn an_opcode_line_crossing_the_frame_end_is_refused() {
        let mut p = b"\x80\x04".to_vec();
        p.extend(frame(b"cos\nsys"));
        p.extend_from_slice(b"tem\n0N.");
        let e = run(&p).unwrap_err();
        assert!(e.contains("ambiguous") && e.contains("line"), "{e}");
    }

    #[test]
    fn a_frame_inside_a_frame_is_refused() {
        let mut inner = frame(b"N.");
        inner.splice(0..0, b"N0".iter().copied());
        inner.extend_from_slice(b"xx");
        let mut p = b"\x80\x04".to_vec();
        p.extend(frame(&inner));
        let e = run(&p).unwrap_err();
        assert!(
            e.contains("ambiguous") && e.contains("before the frame"),
            "{e}"
        );
    }

    #[test]
    fn stop_inside_a_frame_is_refused() {
        let mut p = b"\x80\x04".to_vec();
        p.extend(frame(b"N.N."));
        let e = run(&p).unwrap_err();
        assert!(
            e.contains("ambiguous") && e.contains("inside a frame"),
            "{e}"
        );
    }

    #[test]
    fn a_frame_longer_than_the_data_is_refused() {
        let mut p = b"\x80\x04\x95".to_vec();
        p.extend_from_slice(&100u64.to_le_bytes());
        p.extend_from_slice(b"N.");
        assert!(run(&p).unwrap_err().contains("truncated"));
    }
}
