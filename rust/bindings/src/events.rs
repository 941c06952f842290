//! `EventCore`: the detector pipeline (decode → map → bin) as a Python object.
//! Arguments are copied into owned Rust values, then the GIL is released for the work.

use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArray3, PyArrayMethods, PyReadonlyArray1,
    PyUntypedArrayMethods,
};
use opsims_core::counters::Counters;
use opsims_core::cube::BudgetPolicy;
use opsims_core::engine::{Engine, EngineConfig, EngineDigest};
use opsims_core::link::tttr::RecordType;
use opsims_core::raster::{MarkerMasks, RasterConfig};
use opsims_core::CoreError;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::clock;
use crate::cube_reads;
use crate::errors::to_py;
use crate::raster_args::{self, PolarityArg};

#[pyclass(module = "opsims._native")]
pub struct EventCore {
    engine: Engine,
}

pub(crate) fn counters_dict<'py>(py: Python<'py>, c: &Counters) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, value) in c.named() {
        d.set_item(name, value)?;
    }
    Ok(d)
}

/// ``{"counters", "n_slices", "frames_per_slice", "species": {name: {"crc32", "binned"}}}``.
pub(crate) fn digest_dict<'py>(py: Python<'py>, g: &EngineDigest) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("counters", counters_dict(py, &g.counters)?)?;
    d.set_item("n_slices", g.n_slices)?;
    d.set_item("frames_per_slice", g.frames_per_slice)?;
    let species = PyDict::new(py);
    for (name, crc, binned) in &g.species {
        let s = PyDict::new(py);
        s.set_item("crc32", crc)?;
        s.set_item("binned", binned)?;
        species.set_item(name, s)?;
    }
    d.set_item("species", species)?;
    Ok(d)
}

impl EventCore {
    fn species_index(&self, species: &Bound<'_, PyAny>) -> PyResult<usize> {
        raster_args::species_index(&self.engine.species(), species)
    }
}

#[pymethods]
impl EventCore {
    #[new]
    #[pyo3(signature = (
        record_type, tick_s, nx, ny, dwell_ticks, polarities, *,
        line_settle_ticks = 0, flyback_ticks = 0, line_tolerance_ticks = 0,
        frames_per_slice = 1, frame_marker = 4, line_start_marker = 1,
        line_stop_marker = 2, mass_switch_marker = 0, frame_marker_at = "start",
        memory_budget_bytes = 1u64 << 30, budget_policy = "rebin", clock_window_s = 30.0,
        clock_time_scale = 1.0,
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
        line_tolerance_ticks: u64,
        frames_per_slice: u32,
        frame_marker: u8,
        line_start_marker: u8,
        line_stop_marker: u8,
        mass_switch_marker: u8,
        frame_marker_at: &str,
        memory_budget_bytes: u64,
        budget_policy: &str,
        clock_window_s: f64,
        clock_time_scale: f64,
    ) -> PyResult<Self> {
        let polarities = raster_args::polarities(polarities).map_err(to_py)?;
        let budget_policy = match budget_policy {
            "rebin" => BudgetPolicy::Rebin,
            "refuse" => BudgetPolicy::Refuse,
            other => {
                return Err(to_py(CoreError::Config(format!(
                    "cube.budget_policy: expected 'rebin' or 'refuse', got {other:?}"
                ))))
            }
        };
        let cfg = EngineConfig {
            record_type: RecordType::from_code(record_type).map_err(to_py)?,
            tick_s,
            raster: RasterConfig {
                nx,
                ny,
                dwell_ticks,
                line_settle_ticks,
                flyback_ticks,
                line_tolerance_ticks,
                frames_per_slice,
                markers: MarkerMasks {
                    frame: frame_marker,
                    line_start: line_start_marker,
                    line_stop: line_stop_marker,
                    mass_switch: mass_switch_marker,
                },
                frame_marker_at: raster_args::frame_marker_at(frame_marker_at).map_err(to_py)?,
                polarities,
            },
            memory_budget_bytes,
            budget_policy,
            clock_window_s,
            clock_time_scale,
        };
        Ok(EventCore {
            engine: Engine::new(cfg).map_err(to_py)?,
        })
    }

    /// Decode, map and bin raw TTTR records; returns the batch's statistics.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        records: PyReadonlyArray1<'py, u32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let engine = &mut self.engine;
        let records = clock::contiguous(&records);
        let stats = py.detach(|| engine.feed_records(&records));
        counters_dict(py, &stats)
    }

    /// Bytes from the live detector link, in any chunking, received at host time `host_ns`.
    fn feed_link<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
        host_ns: i64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let engine = &mut self.engine;
        let stats = py.detach(|| engine.feed_link(data, host_ns));
        counters_dict(py, &stats)
    }

    /// Close the open line at the end of a run.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.engine.finish();
        counters_dict(py, &stats)
    }

    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        counters_dict(py, &self.engine.counters())
    }

    /// What the engine built, in a few numbers (counters, slices, a CRC-32 per species'
    /// cube): equal for two engines fed the same bytes with the same arrival times.
    fn digest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let engine = &self.engine;
        let g = py.detach(|| engine.digest());
        digest_dict(py, &g)
    }

    #[getter]
    fn species(&self) -> Vec<String> {
        self.engine.species()
    }

    #[getter]
    fn n_slices(&self) -> usize {
        self.engine.cubes().n_slices()
    }

    #[getter]
    fn frames_per_slice(&self) -> u64 {
        self.engine.frames_per_slice()
    }

    #[getter]
    fn shape(&self) -> (usize, usize) {
        self.engine.cubes().shape_yx()
    }

    #[getter]
    fn allocated_bytes(&self) -> u64 {
        self.engine.cubes().allocated_bytes()
    }

    /// A copy of slices `z_start..z_stop` of one species' cube, `uint32 [z, y, x]`.
    #[pyo3(signature = (species, z_start = 0, z_stop = None))]
    fn cube<'py>(
        &self,
        py: Python<'py>,
        species: &Bound<'py, PyAny>,
        z_start: usize,
        z_stop: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray3<u32>>> {
        let s = self.species_index(species)?;
        let cubes = self.engine.cubes();
        let (out, shape) = py
            .detach(|| cube_reads::cube(cubes, s, z_start, z_stop))
            .map_err(to_py)?;
        out.into_pyarray(py).reshape(shape)
    }

    /// Counts per slice and species from slice `z_start` on, `uint64 [z, species]`.
    #[pyo3(signature = (z_start = 0))]
    fn depth_profile<'py>(
        &self,
        py: Python<'py>,
        z_start: usize,
    ) -> PyResult<Bound<'py, PyArray2<u64>>> {
        let cubes = self.engine.cubes();
        let (flat, shape) = py.detach(|| cube_reads::depth_profile(cubes, z_start));
        flat.into_pyarray(py).reshape(shape)
    }

    /// Sum of one species over slices `z_start..z_stop`, `uint64 [y, x]`.
    #[pyo3(signature = (species, z_start = 0, z_stop = None))]
    fn ion_map<'py>(
        &self,
        py: Python<'py>,
        species: &Bound<'py, PyAny>,
        z_start: usize,
        z_stop: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray2<u64>>> {
        let s = self.species_index(species)?;
        let cubes = self.engine.cubes();
        let (map, shape) = py
            .detach(|| cube_reads::ion_map(cubes, s, z_start, z_stop))
            .map_err(to_py)?;
        map.into_pyarray(py).reshape(shape)
    }

    /// ``{species: counts binned}`` since the cubes were made (no pass over them).
    fn binned_by_species<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let totals = self.engine.cubes().binned_by_species();
        crate::cube_reads::species_dict(py, &self.engine.species(), totals)
    }

    /// The lowest slice changed since the last call, or None.
    fn take_dirty(&mut self) -> Option<usize> {
        self.engine.cubes_mut().take_dirty()
    }

    /// The source's clock model: offset, drift, residual.
    fn clock_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        clock::state_dict(py, self.engine.clock())
    }

    /// Host ns of device ticks per the clock model; RuntimeError before the first frame.
    fn to_host_ns<'py>(
        &self,
        py: Python<'py>,
        ticks: PyReadonlyArray1<'py, u64>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        clock::host_ns(py, self.engine.clock(), &ticks)
    }

    /// The link's loss intervals (most recent 1024).
    fn loss_intervals(&self) -> Vec<(u64, u64, u64, u64)> {
        self.engine
            .loss_intervals()
            .map(|l| {
                (
                    l.first_lost,
                    l.resumed_at,
                    l.last_tick_before,
                    l.resume_base,
                )
            })
            .collect()
    }

    #[getter]
    fn last_link_error(&self) -> Option<String> {
        self.engine.last_link_error().map(str::to_owned)
    }

    fn __repr__(&self) -> String {
        let (ny, nx) = self.engine.cubes().shape_yx();
        format!(
            "EventCore({:?}, {ny}x{nx}, species={:?}, slices={})",
            self.engine.config().record_type,
            self.engine.species(),
            self.engine.cubes().n_slices()
        )
    }
}

/// Encode one live-link frame (for simulators and tests of the link).
#[pyfunction]
#[pyo3(signature = (sequence, record_type, records, *, tick_fs, fine_fs = 0, overflow_base = 0,
    sent_tick = 0, frame_markers = 0, line_starts = 0, frame_marker = 4, line_start_marker = 1, line_stop_marker = 2, mass_switch_marker = 0))]
#[allow(clippy::too_many_arguments)]
fn encode_link_frame<'py>(
    py: Python<'py>,
    sequence: u64,
    record_type: u32,
    records: PyReadonlyArray1<'py, u32>,
    tick_fs: u64,
    fine_fs: u64,
    overflow_base: u64,
    sent_tick: u64,
    frame_markers: u64,
    line_starts: u32,
    frame_marker: u8,
    line_start_marker: u8,
    line_stop_marker: u8,
    mass_switch_marker: u8,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    use opsims_core::link::frame::{encode, FrameHeader, MAX_RECORDS};
    if records.len() > MAX_RECORDS as usize {
        return Err(PyValueError::new_err(format!(
            "at most {MAX_RECORDS} records per frame"
        )));
    }
    let header = FrameHeader {
        sequence,
        record_type,
        n_records: 0,
        tick_fs,
        fine_fs,
        overflow_base,
        sent_tick,
        frame_markers,
        line_starts,
        frame_mask: frame_marker,
        line_start_mask: line_start_marker,
        line_stop_mask: line_stop_marker,
        mass_switch_mask: mass_switch_marker,
    };
    let bytes = encode(&header, &clock::contiguous(&records));
    Ok(pyo3::types::PyBytes::new(py, &bytes))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EventCore>()?;
    m.add_function(wrap_pyfunction!(encode_link_frame, m)?)?;
    Ok(())
}
