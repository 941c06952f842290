//! `opsims._native`: thin PyO3 bindings over `opsims-core`. Each file converts types for
//! one concept and releases the GIL around native work; no logic lives here.

use pyo3::prelude::*;

mod acquisition;
mod clock;
mod cube_reads;
mod errors;
mod events;
mod interlock;
mod journal;
mod ptu;
mod raster_args;
mod sim;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    ptu::register(m)?;
    clock::register(m)?;
    events::register(m)?;
    sim::register(m)?;
    acquisition::register(m)?;
    journal::register(m)?;
    Ok(())
}
