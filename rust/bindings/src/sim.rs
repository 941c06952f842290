//! `DetectorEmitter`: the simulated detector front-end (`opsims_core::sim`) as a Python
//! object. Arguments are copied into owned Rust values, then the GIL is released.

use numpy::{IntoPyArray, PyArray3, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use opsims_core::raster::{MarkerMasks, RasterConfig};
use opsims_core::sim::{Emitter, EmitterConfig, SimError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::to_py;
use crate::raster_args::{self, PolarityArg};

fn sim_err(e: SimError) -> PyErr {
    match e {
        SimError::Core(e) => to_py(e),
        SimError::Value(m) => PyValueError::new_err(m),
    }
}

#[pyclass(module = "opsims._native")]
pub struct DetectorEmitter {
    emitter: Emitter,
}

impl DetectorEmitter {
    fn species_index(&self, species: &Bound<'_, PyAny>) -> PyResult<usize> {
        raster_args::species_index(&self.emitter.species(), species)
    }
}

#[pymethods]
impl DetectorEmitter {
    #[new]
    #[pyo3(signature = (
        record_type, tick_s, nx, ny, dwell_ticks, polarities, *,
        line_settle_ticks = 0, flyback_ticks = 0, frame_gap_ticks = 0,
        frames_per_slice = 1, frame_marker = 4, line_start_marker = 1,
        line_stop_marker = 2, mass_switch_marker = 0, frame_marker_at = "start",
        dead_time_ticks = 0, dark_rate_hz = 0.0, settle_rate_fraction = 0.0,
        start_tick = 0, seed = 0, record_truth = false, record_events = false,
        max_records_per_frame = 65536, t3_fine_fs = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        record_type: u32,
        tick_s: f64,
        nx: u32,
        ny: u32,
        dwell_ticks: u64,
        polarities: Vec<PolarityArg>,
        line_settle_ticks: u64,
        flyback_ticks: u64,
        frame_gap_ticks: u64,
        frames_per_slice: u32,
        frame_marker: u8,
        line_start_marker: u8,
        line_stop_marker: u8,
        mass_switch_marker: u8,
        frame_marker_at: &str,
        dead_time_ticks: u64,
        dark_rate_hz: f64,
        settle_rate_fraction: f64,
        start_tick: u64,
        seed: u64,
        record_truth: bool,
        record_events: bool,
        max_records_per_frame: u32,
        t3_fine_fs: Option<u64>,
    ) -> PyResult<Self> {
        let polarities = raster_args::polarities(polarities).map_err(to_py)?;
        let frame_marker_at = raster_args::frame_marker_at(frame_marker_at).map_err(to_py)?;
        let cfg = EmitterConfig {
            record_type,
            tick_s,
            raster: RasterConfig {
                nx,
                ny,
                dwell_ticks,
                line_settle_ticks,
                flyback_ticks,
                line_tolerance_ticks: 0,
                frames_per_slice,
                markers: MarkerMasks {
                    frame: frame_marker,
                    line_start: line_start_marker,
                    line_stop: line_stop_marker,
                    mass_switch: mass_switch_marker,
                },
                frame_marker_at,
                polarities,
            },
            frame_gap_ticks,
            dead_time_ticks,
            dark_rate_hz,
            settle_rate_fraction,
            start_tick,
            seed,
            record_truth,
            record_events,
            max_records_per_frame,
            fine_fs: t3_fine_fs,
        };
        Ok(DetectorEmitter {
            emitter: Emitter::new(cfg).map_err(to_py)?,
        })
    }

    /// Count rates `[n_species, ny, nx]` in counts/s, used from the next line start on.
    fn set_rates(&mut self, py: Python<'_>, rates: &Bound<'_, PyAny>) -> PyResult<()> {
        let array: PyReadonlyArrayDyn<'_, f64> = match rates.extract() {
            Ok(a) => a,
            Err(_) => py
                .import("numpy")?
                .call_method1("asarray", (rates, "float64"))?
                .extract()?,
        };
        let cfg = &self.emitter.config().raster;
        let want = [
            self.emitter.config().n_species(),
            cfg.ny as usize,
            cfg.nx as usize,
        ];
        if array.shape() != want {
            return Err(PyValueError::new_err(format!(
                "rates: expected shape {want:?} (species, y, x), got {:?}",
                array.shape()
            )));
        }
        // C order whatever the array's strides.
        let values: Vec<f64> = array.as_array().iter().copied().collect();
        let emitter = &mut self.emitter;
        py.detach(|| emitter.set_rates(&values)).map_err(sim_err)
    }

    /// Every record with a tick below `tick`, as complete link frames.
    fn emit_until<'py>(&mut self, py: Python<'py>, tick: u64) -> PyResult<Bound<'py, PyList>> {
        let emitter = &mut self.emitter;
        let frames = py.detach(|| emitter.emit_until(tick)).map_err(sim_err)?;
        PyList::new(py, frames.iter().map(|f| PyBytes::new(py, f)))
    }

    /// The device counter jumps forward by `ticks` from the next line start on.
    fn jump(&mut self, ticks: i128) -> PyResult<()> {
        if ticks <= 0 {
            return Err(PyValueError::new_err(format!(
                "jump: ticks must be > 0, got {ticks}"
            )));
        }
        let ticks = u64::try_from(ticks)
            .map_err(|_| PyValueError::new_err(format!("jump: {ticks} ticks exceed 64 bits")))?;
        self.emitter.jump(ticks).map_err(sim_err)
    }

    /// `(tick_before, ticks)` of every jump so far.
    fn jumps(&self) -> Vec<(u64, u64)> {
        self.emitter.jumps().to_vec()
    }

    /// Drain the true event log into numpy arrays (moved, not copied).
    fn take_events<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let log = self.emitter.take_events().map_err(sim_err)?;
        let d = PyDict::new(py);
        d.set_item("tick", log.tick.into_pyarray(py))?;
        d.set_item("channel", log.channel.into_pyarray(py))?;
        d.set_item("species", log.species.into_pyarray(py))?;
        d.set_item("z", log.z.into_pyarray(py))?;
        d.set_item("y", log.y.into_pyarray(py))?;
        d.set_item("x", log.x.into_pyarray(py))?;
        d.set_item("fate", log.fate.into_pyarray(py))?;
        Ok(d)
    }

    #[getter]
    fn next_sequence(&self) -> u64 {
        self.emitter.next_sequence()
    }

    #[getter]
    fn position(&self) -> (u64, u32, u64) {
        self.emitter.position()
    }

    #[getter]
    fn line_period_ticks(&self) -> u64 {
        self.emitter.config().line_period_ticks()
    }

    #[getter]
    fn frame_period_ticks(&self) -> u64 {
        self.emitter.config().frame_period_ticks()
    }

    #[getter]
    fn n_slices(&self) -> usize {
        self.emitter.n_slices()
    }

    fn truth_counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, value) in self.emitter.truth_counters().named() {
            d.set_item(name, value)?;
        }
        Ok(d)
    }

    /// A copy of slices `z_start..z_stop` of one species' true counts, `uint32 [z, y, x]`.
    #[pyo3(signature = (species, z_start = 0, z_stop = None))]
    fn truth_cube<'py>(
        &self,
        py: Python<'py>,
        species: &Bound<'py, PyAny>,
        z_start: usize,
        z_stop: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray3<u32>>> {
        let s = self.species_index(species)?;
        let z1 = z_stop.unwrap_or(self.emitter.n_slices());
        let cfg = &self.emitter.config().raster;
        let (ny, nx) = (cfg.ny as usize, cfg.nx as usize);
        let mut out = vec![0u32; z1.saturating_sub(z_start) * ny * nx];
        let emitter = &self.emitter;
        py.detach(|| emitter.truth_cube(s, z_start, z1, &mut out))
            .map_err(sim_err)?;
        out.into_pyarray(py).reshape([z1 - z_start, ny, nx])
    }

    #[getter]
    fn species(&self) -> Vec<String> {
        self.emitter.species()
    }

    fn __repr__(&self) -> String {
        let cfg = self.emitter.config();
        let (frame, line, tick) = self.emitter.position();
        format!(
            "DetectorEmitter(0x{:08x}, {}x{}, species={:?}, frame={frame}, line={line}, tick={tick})",
            cfg.record_type,
            cfg.raster.ny,
            cfg.raster.nx,
            self.emitter.species()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DetectorEmitter>()?;
    Ok(())
}
