//! One segment file read block by block through a window, verifying as it goes and
//! resynchronising on the block magic after anything that does not verify.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::codec::BlockDecoder;
use super::format::{
    BlockHeader, SegmentHeader, BLOCK_HEADER_LEN, BLOCK_MAGIC, SEGMENT_HEADER_LEN,
};
use super::reader::{Block, CorruptSpan};

/// Bytes read from the file at a time (a block may need more).
const READ_CHUNK: usize = 4 << 20;

/// What the next step through a segment found.
pub(super) enum Step {
    Header(SegmentHeader),
    Block(Block, u32),
    Corrupt(CorruptSpan),
    /// End of the file; bytes after the last whole block, if any.
    End(Option<CorruptSpan>),
}

pub(super) struct SegmentScan {
    index: u32,
    file: File,
    buf: Vec<u8>,
    pos: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
    header_read: bool,
}

fn find_magic(b: &[u8]) -> Option<usize> {
    b.windows(BLOCK_MAGIC.len()).position(|w| w == BLOCK_MAGIC)
}

impl SegmentScan {
    pub(super) fn open(index: u32, path: &Path) -> io::Result<Self> {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(SegmentScan {
            index,
            file,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            eof: false,
            header_read: false,
        })
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn avail(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// At least `need` bytes from `pos` in the window; false at end of file.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        while self.avail() < need && !self.eof {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.base += self.pos as u64;
                self.pos = 0;
            }
            let want = (need - self.avail()).max(READ_CHUNK);
            let n = (&mut self.file)
                .take(want as u64)
                .read_to_end(&mut self.buf)?;
            self.eof = n == 0;
        }
        Ok(self.avail() >= need)
    }

    fn span(&self, offset: u64, len: u64, reason: String) -> CorruptSpan {
        CorruptSpan {
            segment: self.index,
            offset,
            len,
            reason,
        }
    }

    /// Everything from `offset` to the end of the file, as the tail.
    fn tail(&mut self, offset: u64, reason: String) -> io::Result<Step> {
        let end = (self.base + self.buf.len() as u64).max(self.file.metadata()?.len());
        self.pos = self.buf.len();
        Ok(Step::End(
            (end > offset).then(|| self.span(offset, end - offset, reason)),
        ))
    }

    pub(super) fn next_step(&mut self, dec: &mut BlockDecoder) -> io::Result<Step> {
        if !self.header_read {
            self.header_read = true;
            return self.header();
        }
        let off = self.offset();
        if !self.fill(BLOCK_HEADER_LEN)? {
            return self.tail(off, "incomplete block header".into());
        }
        let h = match BlockHeader::parse(&self.buf[self.pos..]) {
            Ok(h) => h,
            Err(reason) => return self.resync(off, reason),
        };
        let len = h.block_len();
        if !self.fill(len)? {
            let reason = format!("block {} needs {len} bytes, {} left", h.seq, self.avail());
            return self.tail(off, reason);
        }
        let block = &self.buf[self.pos..self.pos + len];
        let checked = if BlockHeader::verify(block) {
            dec.decode(&h, &block[BLOCK_HEADER_LEN..])
        } else {
            Err("block CRC mismatch".into())
        };
        self.pos += len;
        Ok(match checked {
            Ok(payload) => Step::Block(
                Block {
                    kind: h.kind,
                    seq: h.seq,
                    host_ns: h.host_ns,
                    items: h.items,
                    segment: self.index,
                    offset: off,
                    payload,
                },
                h.stored_len,
            ),
            Err(why) => {
                Step::Corrupt(self.span(off, len as u64, format!("block {}: {why}", h.seq)))
            }
        })
    }

    fn header(&mut self) -> io::Result<Step> {
        if !self.fill(SEGMENT_HEADER_LEN)? {
            return self.tail(0, "incomplete segment header".into());
        }
        let parsed = SegmentHeader::parse(&self.buf[..SEGMENT_HEADER_LEN]);
        self.pos = SEGMENT_HEADER_LEN;
        Ok(match parsed {
            Ok(h) if h.index == self.index => Step::Header(h),
            Ok(h) => Step::Corrupt(self.span(
                0,
                SEGMENT_HEADER_LEN as u64,
                format!("segment header says index {}", h.index),
            )),
            Err(why) => Step::Corrupt(self.span(0, SEGMENT_HEADER_LEN as u64, why)),
        })
    }

    /// Skip to the next place a valid block header starts; the bytes skipped are corrupt.
    fn resync(&mut self, off: u64, reason: String) -> io::Result<Step> {
        self.pos += 1;
        loop {
            match find_magic(&self.buf[self.pos..]) {
                Some(i) => {
                    self.pos += i;
                    if !self.fill(BLOCK_HEADER_LEN)? {
                        return self.tail(off, reason);
                    }
                    if BlockHeader::parse(&self.buf[self.pos..]).is_ok() {
                        let len = self.offset() - off;
                        return Ok(Step::Corrupt(self.span(off, len, reason)));
                    }
                    self.pos += 1;
                }
                None => {
                    // Keep what could be the start of a magic cut by the window's end.
                    let keep = self.avail().min(BLOCK_MAGIC.len() - 1);
                    self.pos = self.buf.len() - keep;
                    if !self.fill(keep + 1)? {
                        return self.tail(off, reason);
                    }
                }
            }
        }
    }
}
