//! The one place where core errors become Python exceptions.

use opsims_core::CoreError;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError};
use pyo3::panic::PanicException;
use pyo3::prelude::*;

create_exception!(
    opsims._native,
    OpsimsError,
    PyException,
    "Base class of every opsims native error."
);
create_exception!(
    opsims._native,
    ConfigError,
    OpsimsError,
    "An invalid configuration value; the message names it."
);
create_exception!(
    opsims._native,
    RecordFormatError,
    OpsimsError,
    "An unknown record type or a malformed link frame."
);
create_exception!(
    opsims._native,
    PtuError,
    OpsimsError,
    "A PicoQuant .ptu file that cannot be read."
);
create_exception!(
    opsims._native,
    BudgetError,
    OpsimsError,
    "The cube memory budget would be exceeded."
);

create_exception!(
    opsims._native,
    JournalError,
    OpsimsError,
    "A run journal that cannot be opened, written or read as asked."
);
create_exception!(
    opsims._native,
    JournalFullError,
    JournalError,
    "The journal's queue is at its memory bound: the append was refused (and counted)."
);

pub fn to_py(err: CoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        CoreError::Config(_) => ConfigError::new_err(msg),
        CoreError::UnknownRecordType(_) | CoreError::Frame(_) => RecordFormatError::new_err(msg),
        CoreError::Ptu(_) => PtuError::new_err(msg),
        CoreError::Budget(_) => BudgetError::new_err(msg),
        CoreError::Journal(_) => JournalError::new_err(msg),
        CoreError::JournalFull(_) => JournalFullError::new_err(msg),
        CoreError::Io(e) => PyOSError::new_err(e.to_string()),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("OpsimsError", py.get_type::<OpsimsError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("RecordFormatError", py.get_type::<RecordFormatError>())?;
    m.add("PtuError", py.get_type::<PtuError>())?;
    m.add("BudgetError", py.get_type::<BudgetError>())?;
    m.add("JournalError", py.get_type::<JournalError>())?;
    m.add("JournalFullError", py.get_type::<JournalFullError>())?;
    // A panic in native code (a bug: bad input is an error above or a counted rejection)
    // reaches Python as PyO3's PanicException instead of aborting the interpreter; the
    // module names it so callers need not import pyo3_runtime to recognise it.
    m.add("PanicException", py.get_type::<PanicException>())?;
    Ok(())
}
