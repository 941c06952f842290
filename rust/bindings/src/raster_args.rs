//! Raster arguments as Python passes them, shared by `EventCore` and `DetectorEmitter`
//! so both ends of the detector link read a configuration the same way.

use opsims_core::raster::{FrameMarkerAt, Polarity, Switching};
use opsims_core::CoreError;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// (name, channels, species, switching, settle_ticks) as Python passes a polarity.
pub(crate) type PolarityArg = (String, Vec<u8>, Vec<String>, String, u64);

pub(crate) fn polarities(args: Vec<PolarityArg>) -> Result<Vec<Polarity>, CoreError> {
    args.into_iter()
        .map(|(name, channels, species, switching, settle_ticks)| {
            let switching = match switching.as_str() {
                "per_frame" => Switching::PerFrame,
                "per_pixel" => Switching::PerPixel,
                other => {
                    return Err(CoreError::Config(format!(
                        "raster.polarities.{name}.switching: expected 'per_frame' or 'per_pixel', got {other:?}"
                    )))
                }
            };
            Ok(Polarity {
                name,
                channels,
                species,
                switching,
                settle_ticks,
            })
        })
        .collect()
}

pub(crate) fn frame_marker_at(s: &str) -> Result<FrameMarkerAt, CoreError> {
    match s {
        "start" => Ok(FrameMarkerAt::Start),
        "end" => Ok(FrameMarkerAt::End),
        other => Err(CoreError::Config(format!(
            "raster.markers.frame_at: expected 'start' or 'end', got {other:?}"
        ))),
    }
}

/// A species given by index or by name.
pub(crate) fn species_index(names: &[String], species: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Ok(i) = species.extract::<usize>() {
        if i < names.len() {
            return Ok(i);
        }
        return Err(PyValueError::new_err(format!(
            "species index {i} out of range (0..{})",
            names.len()
        )));
    }
    let name: String = species.extract()?;
    names
        .iter()
        .position(|n| *n == name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown species {name:?}; known: {names:?}")))
}
