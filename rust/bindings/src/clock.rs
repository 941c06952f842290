//! `ClockModel`: device ticks → host ns for Python. Batches run with the GIL released.

use std::borrow::Cow;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use opsims_core::clock::{ClockModel as CoreClock, ClockState};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::to_py;

/// The array's memory when contiguous, else a copy (numpy views are not Send).
pub(crate) fn contiguous<'a, T: numpy::Element + Copy>(
    a: &'a PyReadonlyArray1<'_, T>,
) -> Cow<'a, [T]> {
    match a.as_slice() {
        Ok(slice) => Cow::Borrowed(slice),
        Err(_) => Cow::Owned(a.as_array().to_vec()),
    }
}

/// A clock model's state as published: offset, drift, residual, points, fitted, jumps.
pub(crate) fn state_dict<'py>(py: Python<'py>, clock: &CoreClock) -> PyResult<Bound<'py, PyDict>> {
    let s: ClockState = clock.state();
    let d = PyDict::new(py);
    d.set_item("offset_ns", s.offset_ns)?;
    d.set_item("drift_ppm", s.drift_ppm)?;
    d.set_item("residual_ns", s.residual_ns)?;
    d.set_item("points", s.points)?;
    d.set_item("fitted", s.fitted)?;
    d.set_item("jumps", clock.jumps())?;
    Ok(d)
}

/// Host ns of device ticks, GIL released; RuntimeError before the first pair.
pub(crate) fn host_ns<'py>(
    py: Python<'py>,
    clock: &CoreClock,
    device_ticks: &PyReadonlyArray1<'py, u64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    if clock.to_host_ns(0).is_none() {
        return Err(PyRuntimeError::new_err(
            "the clock model has no (device tick, host ns) pair yet",
        ));
    }
    let ticks = contiguous(device_ticks);
    // The model exists (checked above), so every tick maps.
    let out: Vec<i64> = py.detach(|| {
        ticks
            .iter()
            .map(|&tick| clock.to_host_ns(tick).unwrap_or(i64::MIN))
            .collect()
    });
    Ok(out.into_pyarray(py))
}

/// Device ticks → host ns for one source (offset and drift), fitted online to the lower
/// envelope of (device tick, host arrival ns) pairs over a sliding window.
#[pyclass(name = "ClockModel", module = "opsims._native")]
pub struct PyClockModel {
    inner: CoreClock,
}

#[pymethods]
impl PyClockModel {
    #[new]
    #[pyo3(signature = (tick_s, window_s = 30.0))]
    fn new(tick_s: f64, window_s: f64) -> PyResult<Self> {
        let inner = CoreClock::new(tick_s, window_s).map_err(to_py)?;
        Ok(PyClockModel { inner })
    }

    /// Add one (device tick, host arrival ns) pair.
    fn update(&mut self, device_tick: u64, host_ns: i64) {
        self.inner.update(device_tick, host_ns);
    }

    /// Add pairs from two equally long arrays.
    fn update_many(
        &mut self,
        py: Python<'_>,
        device_ticks: PyReadonlyArray1<'_, u64>,
        host_ns: PyReadonlyArray1<'_, i64>,
    ) -> PyResult<()> {
        let (ticks, hosts) = (contiguous(&device_ticks), contiguous(&host_ns));
        if ticks.len() != hosts.len() {
            return Err(PyValueError::new_err(format!(
                "device_ticks and host_ns differ in length ({} vs {})",
                ticks.len(),
                hosts.len()
            )));
        }
        let inner = &mut self.inner;
        py.detach(|| inner.update_many(ticks.iter().copied().zip(hosts.iter().copied())));
        Ok(())
    }

    /// Host ns of device ticks; RuntimeError before the first pair.
    fn to_host_ns<'py>(
        &self,
        py: Python<'py>,
        device_ticks: PyReadonlyArray1<'py, u64>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        host_ns(py, &self.inner, &device_ticks)
    }

    /// Forget all pairs and the fitted drift (``jumps`` is kept).
    fn reset(&mut self) {
        self.inner.reset();
    }

    /// ``offset_ns``, ``drift_ppm``, ``residual_ns``, ``points``, ``fitted``, ``jumps``.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        state_dict(py, &self.inner)
    }

    #[getter]
    fn offset_ns(&self) -> f64 {
        self.inner.state().offset_ns
    }
    #[getter]
    fn drift_ppm(&self) -> f64 {
        self.inner.state().drift_ppm
    }
    #[getter]
    fn residual_ns(&self) -> f64 {
        self.inner.state().residual_ns
    }
    #[getter]
    fn points(&self) -> usize {
        self.inner.state().points
    }
    #[getter]
    fn fitted(&self) -> bool {
        self.inner.state().fitted
    }
    #[getter]
    fn jumps(&self) -> u64 {
        self.inner.jumps()
    }
    #[getter]
    fn tick_s(&self) -> f64 {
        self.inner.tick_s()
    }
    #[getter]
    fn window_s(&self) -> f64 {
        self.inner.window_s()
    }

    fn __repr__(&self) -> String {
        let s = self.inner.state();
        format!(
            "ClockModel(offset_ns={:.0}, drift_ppm={:.3}, residual_ns={:.0}, points={}, \
             fitted={}, jumps={})",
            s.offset_ns,
            s.drift_ppm,
            s.residual_ns,
            s.points,
            if s.fitted { "True" } else { "False" },
            self.inner.jumps()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyClockModel>()
}
