//! opsims-core: the native event core of opsims, free of Python.
//!
//! Data flow (one module per concept):
//! `link` (TTTR records, live-link frames, `.ptu` files) → `clock` (device ticks →
//! host ns) → `raster` (ticks + channel → slice, y, x, species, or a counted
//! rejection) → `cube` (u32 voxel cubes per species). `engine` ties them together
//! with the `counters` that prove nothing is lost.

pub mod clock;
pub mod counters;
pub mod cube;
pub mod engine;
pub mod error;
pub mod link;
pub mod raster;

pub use error::{CoreError, Result};
