//! opsims-core: the native event core of opsims, free of Python.
//!
//! Data flow (one module per concept):
//! `link` (TTTR records, live-link frames, `.ptu` files) → `clock` (device ticks →
//! host ns) → `raster` (ticks + channel → slice, y, x, species, or a counted
//! rejection) → `cube` (u32 voxel cubes per species). `engine` ties them together
//! with the `counters` that prove nothing is lost. `acquisition` runs the instrument
//! links in native threads: the detector link into the engine, the potentiostat link
//! (`link::potentiostat`) into unwrapped, host-stamped samples that pass the interlock's
//! check before they are queued; `interlock` is that check (issue 5). `sim` is the other
//! end of the detector link: a simulated detector front-end that writes the stream the
//! core reads, with its truth. `journal` records a run losslessly: raw link frames and
//! every other record in checksummed segment files, written by its own thread.

pub mod acquisition;
pub mod clock;
pub mod counters;
pub mod cube;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod interlock;
pub mod journal;
pub mod link;
pub mod raster;
pub mod sim;

pub use error::{CoreError, Result};
