//! Reads of a `CubeSet` as owned buffers with their numpy shapes, shared by every
//! binding that exposes cubes (each runs them with the GIL released).

use opsims_core::cube::CubeSet;
use opsims_core::engine::Engine;
use opsims_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Slices `z0..z1` (default: all) of one species, `u32 [z, y, x]`.
pub(crate) fn cube(
    c: &CubeSet,
    species: usize,
    z0: usize,
    z1: Option<usize>,
) -> Result<(Vec<u32>, [usize; 3]), CoreError> {
    let z1 = z1.unwrap_or(c.n_slices());
    let (ny, nx) = c.shape_yx();
    let nz = z1.saturating_sub(z0);
    let mut out = vec![0u32; nz * ny * nx];
    c.copy_range(species, z0, z1, &mut out)?;
    Ok((out, [nz, ny, nx]))
}

/// What a cube read was binned by: `(frames_per_slice, n_slices, rebins)`; read under
/// the same lock as the data it describes.
pub(crate) fn binning(e: &Engine) -> (u64, usize, u64) {
    (
        e.frames_per_slice(),
        e.cubes().n_slices(),
        e.counters().rebins,
    )
}

/// A `[y, x]` plane as a flat buffer and its shape.
pub(crate) type Plane<T> = (Vec<T>, [usize; 2]);

/// Slice `z` of one species, `u32 [y, x]`; None if there is no such slice (yet, or
/// any more after a rebin). An unknown species is an error.
pub(crate) fn slice(
    c: &CubeSet,
    species: usize,
    z: usize,
) -> Result<Option<Plane<u32>>, CoreError> {
    if species < c.n_species() && z >= c.n_slices() {
        return Ok(None);
    }
    let (ny, nx) = c.shape_yx();
    let mut out = vec![0u32; ny * nx];
    c.copy_range(species, z, z + 1, &mut out)?;
    Ok(Some((out, [ny, nx])))
}

/// One species summed over slices `z0..z1` (default: all), `u64 [y, x]`.
pub(crate) fn ion_map(
    c: &CubeSet,
    species: usize,
    z0: usize,
    z1: Option<usize>,
) -> Result<(Vec<u64>, [usize; 2]), CoreError> {
    let z1 = z1.unwrap_or(c.n_slices());
    let (ny, nx) = c.shape_yx();
    Ok((c.ion_map(species, z0, z1)?, [ny, nx]))
}

/// Counts per slice and species, `u64 [z, species]`.
pub(crate) fn depth_profile(c: &CubeSet, z_start: usize) -> (Vec<u64>, [usize; 2]) {
    let rows = c.n_slices().saturating_sub(z_start);
    (c.depth_profile_from(z_start), [rows, c.n_species()])
}

/// ``{species: value}`` in the engine's species order.
pub(crate) fn species_dict<'py>(
    py: Python<'py>,
    species: &[String],
    values: &[u64],
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, v) in species.iter().zip(values) {
        d.set_item(name, v)?;
    }
    Ok(d)
}
