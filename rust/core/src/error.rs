//! The one error type of the core. The bindings turn each variant into a specific
//! Python exception at a single boundary (`rust/bindings/src/errors.rs`).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoreError {
    /// A configuration value is out of range or inconsistent; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A TTTR record type code this decoder does not know.
    #[error("unknown TTTR record type 0x{0:08x}")]
    UnknownRecordType(u32),
    /// A live-link frame that cannot be decoded (bad magic, length, version).
    #[error("malformed link frame: {0}")]
    Frame(String),
    /// A PicoQuant `.ptu` file that cannot be read.
    #[error("PTU file: {0}")]
    Ptu(String),
    /// The cube memory budget would be exceeded and the policy is to refuse.
    #[error("memory budget exceeded: {0}")]
    Budget(String),
    /// A run journal that cannot be opened, written or read as asked.
    #[error("journal: {0}")]
    Journal(String),
    /// The journal's queue is at its memory bound (the disk is failing or too slow): the
    /// append was refused and counted; the caller decides what to do.
    #[error("journal queue full: {0}")]
    JournalFull(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, CoreError>;
