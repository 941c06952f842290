//! The segment files as the writer thread sees them: what is written, what is durable,
//! and how to go back to the durable length after a failed write or sync.
//!
//! After a failed `fdatasync` the kernel may already have dropped the dirty pages, and a
//! second sync can report success for data that never reached the disk; so a failure
//! rolls the file back to its last durable length and everything since is rewritten
//! (<https://lwn.net/Articles/752063/>).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::format::{SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_LEN};
use super::segment_name;
use crate::acquisition::realtime_ns;

pub(super) struct Sink {
    dir: PathBuf,
    run_id: String,
    segment_bytes: u64,
    index: u32,
    file: Option<File>,
    /// Bytes of the current segment known to be on disk.
    durable_len: u64,
    /// Bytes of the current segment written, durable or not.
    written_len: u64,
    /// The current segment file is ours: a retry may truncate it.
    ours: bool,
    dir_synced: bool,
    /// Durable bytes of the segments before the current one.
    done_bytes: u64,
    segments: u32,
}

/// An I/O error with what was being done and to which file.
fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| context(e, "syncing directory", dir))
}

impl Sink {
    pub(super) fn new(dir: &Path, run_id: &str, segment_bytes: u64, first_index: u32) -> Self {
        Sink {
            dir: dir.to_path_buf(),
            run_id: run_id.to_owned(),
            segment_bytes,
            index: first_index,
            file: None,
            durable_len: 0,
            written_len: 0,
            ours: false,
            dir_synced: false,
            done_bytes: 0,
            segments: 0,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(segment_name(self.index))
    }

    pub(super) fn durable_bytes(&self) -> u64 {
        self.done_bytes + self.durable_len
    }

    pub(super) fn segments(&self) -> u32 {
        self.segments
    }

    pub(super) fn unsynced(&self) -> u64 {
        self.written_len - self.durable_len
    }

    /// Whether a block of `len` bytes must go into a new segment.
    pub(super) fn needs_roll(&self, len: usize) -> bool {
        self.written_len > SEGMENT_HEADER_LEN as u64
            && self.written_len + len as u64 > self.segment_bytes
    }

    /// The current segment open at its durable length (with its header written).
    fn ensure_open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let path = self.path();
            let f = self
                .reopen(&path)
                .map_err(|e| context(e, "opening segment", &path))?;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("segment not open"))
    }

    fn reopen(&mut self, path: &Path) -> io::Result<File> {
        // Not truncated here: an existing file is checked first, ours cut to its durable length.
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let meta = f.metadata()?;
        // Never write over a segment this writer did not create.
        if !self.ours && meta.is_file() && meta.len() > 0 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the segment exists and is not empty",
            ));
        }
        if !self.ours {
            self.ours = true;
            self.segments += 1;
        }
        if meta.is_file() {
            f.set_len(self.durable_len)?;
        }
        f.seek(SeekFrom::Start(self.durable_len))?;
        if self.durable_len == 0 {
            let header = SegmentHeader {
                version: FORMAT_VERSION,
                index: self.index,
                created_ns: realtime_ns(),
                run_id: self.run_id.clone(),
            };
            f.write_all(&header.encode())?;
            self.written_len = SEGMENT_HEADER_LEN as u64;
        } else {
            self.written_len = self.durable_len;
        }
        Ok(f)
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let path = self.path();
        let f = self.ensure_open()?;
        f.write_all(bytes)
            .map_err(|e| context(e, "writing segment", &path))?;
        self.written_len += bytes.len() as u64;
        Ok(())
    }

    /// Make everything written durable: the data, and once per segment its directory entry.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        let path = self.path();
        let f = self.ensure_open()?;
        f.sync_data()
            .map_err(|e| context(e, "syncing segment", &path))?;
        if !self.dir_synced {
            sync_dir(&self.dir)?;
            self.dir_synced = true;
        }
        self.durable_len = self.written_len;
        Ok(())
    }

    /// Open (and sync) the first segment, so `open` fails at once on an unusable disk.
    pub(super) fn start(&mut self) -> io::Result<()> {
        self.ensure_open()?;
        self.sync()
    }

    /// Forget what was not durable: the next write truncates back to the durable length.
    pub(super) fn fail(&mut self) {
        self.file = None;
        self.written_len = self.durable_len;
    }

    /// Go on in the next segment; the current one must be synced.
    pub(super) fn roll(&mut self) {
        self.done_bytes += self.durable_len;
        self.index += 1;
        self.file = None;
        self.durable_len = 0;
        self.written_len = 0;
        self.ours = false;
        self.dir_synced = false;
    }
}
