//! The safety interlock's configuration, state and reset as Python values
//! (`opsims_core::interlock`; `docs/safety.md`). Conversions only.

use opsims_core::acquisition::Sample;
use opsims_core::interlock::{
    InterlockConfig, InterlockStatus, Reset, SafetyLink, SafetyState, Trip, TripReason,
};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::acquisition::Table;
use crate::errors::OpsimsError;

create_exception!(
    opsims._native,
    InterlockError,
    OpsimsError,
    "The safety interlock refused an operation (a reset while the condition persists)."
);

/// The `interlock` dict of an `Acquisition`; every key optional (defaults in safety.md).
pub fn config(value: Bound<'_, PyAny>) -> PyResult<InterlockConfig> {
    let d = InterlockConfig::default();
    let mut t = Table::new(value, "interlock")?;
    let cfg = InterlockConfig {
        ewe_min_v: t.or("ewe_min_v", d.ewe_min_v)?,
        ewe_max_v: t.or("ewe_max_v", d.ewe_max_v)?,
        compliance_a: t.get::<Option<f64>>("compliance_a")?.flatten(),
        max_sample_gap_s: t.or("max_sample_gap_s", d.max_sample_gap_s)?,
        backwards_tolerance_s: t.or("backwards_tolerance_s", d.backwards_tolerance_s)?,
        confirm_timeout_s: t.or("confirm_timeout_s", d.confirm_timeout_s)?,
        resend_interval_s: t.or("resend_interval_s", d.resend_interval_s)?,
    };
    t.reject_unknown()?;
    Ok(cfg)
}

pub fn reason(name: &str) -> PyResult<TripReason> {
    TripReason::from_name(name).ok_or_else(|| {
        let known: Vec<_> = TripReason::ALL.iter().map(|r| r.name()).collect();
        PyValueError::new_err(format!(
            "unknown trip reason {name:?}; known: {}",
            known.join(", ")
        ))
    })
}

/// A sample dict (`host_ns`, `tick`, `ewe_v`, `current_a`, `mode`, `flags`, optional
/// `arrival_ns`), as `interlock_state()["sample"]` gives it.
pub fn sample_from(value: Bound<'_, PyAny>) -> PyResult<Sample> {
    let mut t = Table::new(value, "sample")?;
    let host_ns: i64 = t.get("host_ns")?.unwrap_or(0);
    let s = Sample {
        host_ns,
        arrival_ns: t.or("arrival_ns", host_ns)?,
        tick: t.or("tick", 0)?,
        ewe_v: t.or("ewe_v", f64::NAN)?,
        current_a: t.or("current_a", f64::NAN)?,
        mode: t.or("mode", 0)?,
        flags: t.or("flags", 0)?,
    };
    t.reject_unknown()?;
    Ok(s)
}

fn sample_dict<'py>(py: Python<'py>, s: &Sample) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("host_ns", s.host_ns)?;
    d.set_item("arrival_ns", s.arrival_ns)?;
    d.set_item("tick", s.tick)?;
    d.set_item("ewe_v", s.ewe_v)?;
    d.set_item("current_a", s.current_a)?;
    d.set_item("mode", s.mode)?;
    d.set_item("flags", s.flags)?;
    Ok(d)
}

fn trip_into(d: &Bound<'_, PyDict>, t: Option<&Trip>) -> PyResult<()> {
    let py = d.py();
    let sample = t.and_then(|t| t.sample.as_ref());
    d.set_item("detail", t.map_or("", |t| t.detail.as_str()))?;
    d.set_item("sample", sample.map(|s| sample_dict(py, s)).transpose()?)?;
    d.set_item("device_tick", sample.map(|s| s.tick))?;
    d.set_item("sample_host_ns", sample.map(|s| s.host_ns))?;
    d.set_item("trip_host_ns", t.map(|t| t.trip_host_ns))?;
    d.set_item(
        "open_circuit_written",
        t.is_some_and(|t| t.open_circuit_written),
    )?;
    d.set_item("restored", t.is_some_and(|t| t.restored))?;
    Ok(())
}

pub fn status_dict<'py>(
    py: Python<'py>,
    st: &InterlockStatus,
    cfg: &InterlockConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("state", st.state.name())?;
    let reason = match (&st.trip, st.state) {
        (Some(t), SafetyState::Tripped | SafetyState::Alarm) => t.reason.name(),
        _ if st.last_reset.is_some() => "reset",
        _ => "",
    };
    d.set_item("reason", reason)?;
    trip_into(&d, st.trip.as_ref())?;
    d.set_item("open_circuit_confirmed", st.open_circuit_confirmed)?;
    d.set_item("open_circuit_acknowledged", st.open_circuit_acknowledged)?;
    d.set_item("alarm_host_ns", st.alarm_host_ns)?;
    d.set_item("current_flowing", st.current_flowing)?;
    d.set_item("link_up", st.link_up)?;
    d.set_item("trips", st.trips)?;
    d.set_item("resets", st.resets)?;
    d.set_item("open_circuit_writes", st.open_circuit_writes)?;
    d.set_item("changes", st.changes)?;
    d.set_item("step_stop_v", st.step_stop_v)?;
    d.set_item("step_stops", st.step_stops)?;
    let last = match &st.last_reset {
        Some(r) => {
            let l = PyDict::new(py);
            l.set_item("operator", &r.operator)?;
            l.set_item("reason", &r.reason)?;
            l.set_item("host_ns", r.host_ns)?;
            Some(l)
        }
        None => None,
    };
    d.set_item("last_reset", last)?;
    let limits = PyDict::new(py);
    limits.set_item("ewe_min_v", cfg.ewe_min_v)?;
    limits.set_item("ewe_max_v", cfg.ewe_max_v)?;
    limits.set_item("compliance_a", st.compliance_a)?;
    limits.set_item("max_sample_gap_s", cfg.max_sample_gap_s)?;
    limits.set_item("backwards_tolerance_s", cfg.backwards_tolerance_s)?;
    limits.set_item("confirm_timeout_s", cfg.confirm_timeout_s)?;
    limits.set_item("resend_interval_s", cfg.resend_interval_s)?;
    d.set_item("limits", limits)?;
    Ok(d)
}

pub fn reset_dict<'py>(py: Python<'py>, r: &Reset) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("state", SafetyState::Armed.name())?;
    d.set_item("operator", &r.operator)?;
    d.set_item("reason", &r.reason)?;
    d.set_item("host_ns", r.host_ns)?;
    let cleared = PyDict::new(py);
    cleared.set_item("reason", r.cleared.reason.name())?;
    trip_into(&cleared, Some(&r.cleared))?;
    d.set_item("cleared", cleared)?;
    Ok(d)
}

/// Where to latch a restored trip when there is no potentiostat link at all.
pub struct NoLink;

impl SafetyLink for NoLink {
    fn open_circuit(&mut self) -> Result<u32, String> {
        Err("no potentiostat link".into())
    }
    fn state_changed(&mut self, _: i64, _: SafetyState, _: &'static str) {}
    fn step_stopped(&mut self, _: &Sample, _: f64) {}
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("InterlockError", m.py().get_type::<InterlockError>())?;
    Ok(())
}
