//! `Acquisition`: the native link threads (`opsims_core::acquisition`) as a Python object.
//! Frozen and holding an `Arc`, so any Python thread may call it at any time; every call
//! that can wait or copy releases the GIL. No logic lives here: arguments in, types out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use numpy::{IntoPyArray, PyArray2, PyArray3, PyArrayMethods};
use opsims_core::acquisition::{
    realtime_ns, AcqEvent, Acquisition as Core, AcquisitionConfig, AcquisitionError,
    DetectorLinkConfig, LinkAddress, LinkId, NoCheck, PotentiostatLinkConfig, SampleCheck,
};
use opsims_core::cube::BudgetPolicy;
use opsims_core::engine::{Engine, EngineConfig};
use opsims_core::interlock::{InterlockCheck, InterlockStatus};
use opsims_core::link::potentiostat::{event_code, reply_code, EisRequest, Reply, MAX_PAYLOAD};
use opsims_core::link::tttr::RecordType;
use opsims_core::raster::{MarkerMasks, RasterConfig};
use opsims_core::CoreError;
use pyo3::conversion::FromPyObjectOwned;
use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::clock;
use crate::cube_reads;
use crate::errors::{to_py, ConfigError, OpsimsError};
use crate::interlock;
use crate::raster_args::{self, PolarityArg};

create_exception!(
    opsims._native,
    CommandRefused,
    OpsimsError,
    "A potentiostat command was refused: ``args == (message, code)``, with the reply code \
     of the instrument, or None when the acquisition's own check refused it unsent."
);

/// Acquisition errors as Python exceptions (core errors through `errors::to_py`).
fn acq_err(e: AcquisitionError) -> PyErr {
    match e {
        AcquisitionError::Core(e) => to_py(e),
        AcquisitionError::LinkDown(m) => PyConnectionError::new_err(m),
        AcquisitionError::Timeout(m) => PyTimeoutError::new_err(m),
        AcquisitionError::Blocked(m) => CommandRefused::new_err((m, Option::<u16>::None)),
        AcquisitionError::NotConfigured(m) => PyRuntimeError::new_err(m),
    }
}

fn config_error(msg: String) -> PyErr {
    ConfigError::new_err(format!("invalid configuration: {msg}"))
}

/// A dict of keyword values read key by key: every error names `path.key`, and keys
/// nobody asked for are rejected.
pub(crate) struct Table<'py> {
    dict: Bound<'py, PyDict>,
    path: &'static str,
    seen: Vec<&'static str>,
}

impl<'py> Table<'py> {
    pub(crate) fn new(value: Bound<'py, PyAny>, path: &'static str) -> PyResult<Self> {
        let dict = value.cast_into::<PyDict>().map_err(|e| {
            config_error(format!(
                "{path}: expected a dict, got {}",
                e.into_inner().get_type()
            ))
        })?;
        Ok(Table {
            dict,
            path,
            seen: Vec::new(),
        })
    }

    pub(crate) fn get<T: FromPyObjectOwned<'py>>(
        &mut self,
        key: &'static str,
    ) -> PyResult<Option<T>> {
        self.seen.push(key);
        match self.dict.get_item(key)? {
            None => Ok(None),
            Some(v) => v.extract::<T>().map(Some).map_err(|e| {
                let e: PyErr = e.into();
                config_error(format!("{}.{key}: {e}", self.path))
            }),
        }
    }

    fn need<T: FromPyObjectOwned<'py>>(&mut self, key: &'static str) -> PyResult<T> {
        self.get(key)?
            .ok_or_else(|| config_error(format!("{}.{key}: missing", self.path)))
    }

    pub(crate) fn or<T: FromPyObjectOwned<'py>>(
        &mut self,
        key: &'static str,
        default: T,
    ) -> PyResult<T> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    pub(crate) fn reject_unknown(&self) -> PyResult<()> {
        for key in self.dict.keys() {
            let name: String = key.str()?.extract()?;
            if !self.seen.contains(&name.as_str()) {
                return Err(config_error(format!("{}.{name}: unknown key", self.path)));
            }
        }
        Ok(())
    }

    fn address(&mut self) -> PyResult<LinkAddress> {
        Ok(LinkAddress {
            host: self.need("host")?,
            port: self.need("port")?,
        })
    }
}

/// A core configuration error with the table's path in front of its key.
fn under(path: &str, e: CoreError) -> PyErr {
    match e {
        CoreError::Config(m) => config_error(format!("{path}.{m}")),
        other => to_py(other),
    }
}

/// The detector dict: `host`, `port` and what `EventCore` takes, by the same names.
fn detector_config(value: Bound<'_, PyAny>) -> PyResult<DetectorLinkConfig> {
    let mut t = Table::new(value, "detector")?;
    let address = t.address()?;
    let record_type: u32 = t.need("record_type")?;
    let polarities: Vec<PolarityArg> = t.need("polarities")?;
    let frame_marker_at: String = t.or("frame_marker_at", "start".to_owned())?;
    let budget_policy: String = t.or("budget_policy", "rebin".to_owned())?;
    let record_type = RecordType::from_code(record_type)
        .map_err(|e| config_error(format!("detector.record_type: {e}")))?;
    let polarities = raster_args::polarities(polarities).map_err(|e| under("detector", e))?;
    let frame_marker_at =
        raster_args::frame_marker_at(&frame_marker_at).map_err(|e| under("detector", e))?;
    let budget_policy = match budget_policy.as_str() {
        "rebin" => BudgetPolicy::Rebin,
        "refuse" => BudgetPolicy::Refuse,
        other => {
            return Err(config_error(format!(
                "detector.budget_policy: expected 'rebin' or 'refuse', got {other:?}"
            )))
        }
    };
    let engine = EngineConfig {
        record_type,
        tick_s: t.need("tick_s")?,
        raster: RasterConfig {
            nx: t.need("nx")?,
            ny: t.need("ny")?,
            dwell_ticks: t.need("dwell_ticks")?,
            line_settle_ticks: t.or("line_settle_ticks", 0)?,
            flyback_ticks: t.or("flyback_ticks", 0)?,
            line_tolerance_ticks: t.or("line_tolerance_ticks", 0)?,
            frames_per_slice: t.or("frames_per_slice", 1)?,
            markers: MarkerMasks {
                frame: t.or("frame_marker", 4)?,
                line_start: t.or("line_start_marker", 1)?,
                line_stop: t.or("line_stop_marker", 2)?,
                mass_switch: t.or("mass_switch_marker", 0)?,
            },
            frame_marker_at,
            polarities,
        },
        memory_budget_bytes: t.or("memory_budget_bytes", 1u64 << 30)?,
        budget_policy,
        clock_window_s: t.or("clock_window_s", 30.0)?,
        clock_time_scale: 1.0, // the acquisition's own value replaces it
    };
    t.reject_unknown()?;
    Ok(DetectorLinkConfig { address, engine })
}

fn potentiostat_config(value: Bound<'_, PyAny>) -> PyResult<PotentiostatLinkConfig> {
    let mut t = Table::new(value, "potentiostat")?;
    let cfg = PotentiostatLinkConfig {
        address: t.address()?,
        clock_window_s: t.or("clock_window_s", 30.0)?,
    };
    t.reject_unknown()?;
    Ok(cfg)
}

fn duration(name: &str, seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds.max(0.0)).map_err(|_| {
        PyValueError::new_err(format!(
            "{name}: expected a number of seconds, got {seconds}"
        ))
    })
}

/// A reply that is not `ok` raises `CommandRefused(message, code)`.
fn ok_or_refused(what: &str, reply: Reply) -> PyResult<Reply> {
    if reply.ok() {
        return Ok(reply);
    }
    let msg = format!(
        "{what} refused: {} ({})",
        reply_code::name(reply.code),
        reply.message
    );
    Err(CommandRefused::new_err((msg, Some(reply.code))))
}

fn event_dict<'py>(py: Python<'py>, e: &AcqEvent) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match e {
        AcqEvent::Link {
            host_ns,
            link,
            state,
            reason,
        } => {
            d.set_item("kind", "link")?;
            d.set_item("host_ns", host_ns)?;
            d.set_item("link", link.name())?;
            d.set_item("state", state.name())?;
            d.set_item("reason", reason)?;
        }
        AcqEvent::EisPoint {
            host_ns,
            tick,
            point,
        } => {
            d.set_item("kind", "eis_point")?;
            d.set_item("host_ns", host_ns)?;
            d.set_item("tick", tick)?;
            d.set_item("index", point.index)?;
            d.set_item("n_points", point.n_points)?;
            d.set_item("freq_hz", point.freq_hz)?;
            d.set_item("z_re_ohm", point.z_re_ohm)?;
            d.set_item("z_im_ohm", point.z_im_ohm)?;
        }
        AcqEvent::Instrument {
            host_ns,
            tick,
            code,
            message,
        } => {
            d.set_item("kind", "instrument_event")?;
            d.set_item("host_ns", host_ns)?;
            d.set_item("tick", tick)?;
            d.set_item("code", code)?;
            d.set_item("name", event_code::name(*code))?;
            d.set_item("message", message)?;
        }
        AcqEvent::Safety {
            host_ns,
            state,
            reason,
        } => {
            d.set_item("kind", "safety")?;
            d.set_item("host_ns", host_ns)?;
            d.set_item("state", state)?;
            d.set_item("reason", reason)?;
        }
        AcqEvent::StepStop {
            host_ns,
            tick,
            ewe_v,
            limit_v,
        } => {
            d.set_item("kind", "step_stop")?;
            d.set_item("host_ns", host_ns)?;
            d.set_item("tick", tick)?;
            d.set_item("ewe_v", ewe_v)?;
            d.set_item("limit_v", limit_v)?;
        }
    }
    Ok(d)
}

/// The instrument links in native threads: detector → engine, potentiostat → samples.
#[pyclass(name = "Acquisition", module = "opsims._native", frozen)]
pub struct PyAcquisition {
    inner: Arc<Core>,
    /// Fixed at construction: species names resolve without the engine lock.
    species: Vec<String>,
    /// The safety interlock the potentiostat thread checks samples with, if any.
    interlock: Option<InterlockCheck>,
}

impl PyAcquisition {
    /// Run `f` on the locked engine with the GIL released.
    fn engine<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Engine) -> R + Send,
    ) -> PyResult<R> {
        let inner = &self.inner;
        py.detach(|| inner.engine().map(|mut e| f(&mut e)))
            .map_err(acq_err)
    }

    /// A command with the GIL released; a timeout is a `TimeoutError`.
    fn call<R: Send>(
        &self,
        py: Python<'_>,
        timeout_s: f64,
        f: impl FnOnce(&Core, Duration) -> Result<R, AcquisitionError> + Send,
    ) -> PyResult<R> {
        let timeout = duration("timeout_s", timeout_s)?;
        let inner = &self.inner;
        py.detach(|| f(inner, timeout)).map_err(acq_err)
    }

    fn interlock(&self) -> PyResult<&InterlockCheck> {
        self.interlock
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("no interlock configured"))
    }

    /// The interlock's state after its timers ran (a trip may need escalating while the
    /// link is down and the reader thread has nothing to read). GIL released.
    fn interlock_status(&self, py: Python<'_>, h: &InterlockCheck) -> InterlockStatus {
        let inner = &self.inner;
        py.detach(|| {
            let now = realtime_ns();
            inner
                .with_check(|_, link| {
                    let mut il = h.lock();
                    il.on_idle(now, link);
                    il.status()
                })
                .unwrap_or_else(|_| h.lock().status())
        })
    }

    fn species_index(&self, species: &Bound<'_, PyAny>) -> PyResult<usize> {
        if self.inner.link_state(LinkId::Detector).is_none() {
            return Err(PyRuntimeError::new_err("no detector link configured"));
        }
        raster_args::species_index(&self.species, species)
    }
}

#[pymethods]
impl PyAcquisition {
    #[new]
    #[pyo3(signature = (
        *, detector = None, potentiostat = None, clock_time_scale = 1.0,
        reconnect_initial_s = 0.1, reconnect_max_s = 5.0, heartbeat_s = 0.5,
        liveness_s = 2.0, sample_queue = 1_000_000, interlock = None, latched = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        detector: Option<Bound<'_, PyAny>>,
        potentiostat: Option<Bound<'_, PyAny>>,
        clock_time_scale: f64,
        reconnect_initial_s: f64,
        reconnect_max_s: f64,
        heartbeat_s: f64,
        liveness_s: f64,
        sample_queue: usize,
        interlock: Option<Bound<'_, PyAny>>,
        latched: Option<(String, String, i64, Option<Bound<'_, PyAny>>)>,
    ) -> PyResult<Self> {
        let interlock = interlock.map(interlock::config).transpose()?;
        let detector = detector.map(detector_config).transpose()?;
        let potentiostat = potentiostat.map(potentiostat_config).transpose()?;
        let species = detector
            .as_ref()
            .map(|d| d.engine.raster.species_names())
            .unwrap_or_default();
        let cfg = AcquisitionConfig {
            detector,
            potentiostat,
            clock_time_scale,
            reconnect_initial_s,
            reconnect_max_s,
            heartbeat_s,
            liveness_s,
            sample_queue,
        };
        let interlock = interlock
            .map(InterlockCheck::new)
            .transpose()
            .map_err(to_py)?;
        if let Some((reason, detail, trip_host_ns, sample)) = latched {
            // Before the links start: no sample can trip it first and take its place.
            let h = interlock
                .as_ref()
                .ok_or_else(|| PyValueError::new_err("latched: needs an interlock"))?;
            let reason = interlock::reason(&reason)?;
            let sample = sample.map(interlock::sample_from).transpose()?;
            h.lock().restore(
                reason,
                detail,
                trip_host_ns,
                sample,
                realtime_ns(),
                &mut interlock::NoLink,
            );
        }
        let check: Box<dyn SampleCheck> = match &interlock {
            Some(h) => Box::new(h.clone()),
            None => Box::new(NoCheck),
        };
        let inner = Core::start(cfg, check).map_err(acq_err)?;
        Ok(PyAcquisition {
            inner: Arc::new(inner),
            species,
            interlock,
        })
    }

    /// Block (GIL released) until new samples, events or detector data, or the timeout.
    fn wait(&self, py: Python<'_>, timeout_s: f64) -> PyResult<bool> {
        if timeout_s.is_nan() {
            return Err(PyValueError::new_err(
                "timeout_s: expected a number, got nan",
            ));
        }
        // Wake regularly so Ctrl-C and signal handlers run during a long wait.
        const SLICE: Duration = Duration::from_millis(50);
        let deadline = Instant::now() + duration("timeout_s", timeout_s.min(1e9))?;
        let inner = &self.inner;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if py.detach(|| inner.wait(left.min(SLICE))) {
                return Ok(true);
            }
            py.check_signals()?;
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// The owner is alive: the potentiostat heartbeat goes on for ``liveness_s``.
    fn kick(&self) {
        self.inner.kick();
    }

    /// Queued samples as numpy columns, oldest first (the queue is emptied).
    fn take_samples<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &self.inner;
        let s = py.detach(|| inner.take_samples());
        let d = PyDict::new(py);
        d.set_item("host_ns", s.host_ns.into_pyarray(py))?;
        d.set_item("tick", s.tick.into_pyarray(py))?;
        d.set_item("ewe_v", s.ewe_v.into_pyarray(py))?;
        d.set_item("current_a", s.current_a.into_pyarray(py))?;
        d.set_item("mode", s.mode.into_pyarray(py))?;
        d.set_item("flags", s.flags.into_pyarray(py))?;
        Ok(d)
    }

    /// Queued events, oldest first (the queue is emptied).
    fn take_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let inner = &self.inner;
        let events = py.detach(|| inner.take_events());
        let list = PyList::empty(py);
        for e in &events {
            list.append(event_dict(py, e)?)?;
        }
        Ok(list)
    }

    /// Detector engine counters (as `EventCore.counters`) and link counters.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        if self.inner.link_state(LinkId::Detector).is_some() {
            let c = self.engine(py, |e| e.counters())?;
            for (name, value) in c.named() {
                d.set_item(name, value)?;
            }
        }
        for (name, value) in self.inner.counters().named() {
            d.set_item(name, value)?;
        }
        Ok(d)
    }

    /// ``{"detector": ..., "potentiostat": ...}``: each as `ClockModel.state()`.
    fn clock_states<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &self.inner;
        let clocks = py.detach(|| inner.clocks());
        let d = PyDict::new(py);
        for (link, model) in &clocks {
            d.set_item(link.name(), clock::state_dict(py, model)?)?;
        }
        Ok(d)
    }

    /// ``{"detector": "up", ...}`` for the configured links.
    fn link_states<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for link in [LinkId::Detector, LinkId::Potentiostat] {
            if let Some(state) = self.inner.link_state(link) {
                d.set_item(link.name(), state.name())?;
            }
        }
        Ok(d)
    }

    /// The potentiostat's last HELLO, or None before the first connection.
    fn hello<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(h) = self.inner.hello().map_err(acq_err)? else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("protocol", h.protocol)?;
        d.set_item("counter_bits", h.counter_bits)?;
        d.set_item("tick_fs", h.tick_fs)?;
        d.set_item("sample_period_ticks", h.sample_period_ticks)?;
        d.set_item("compliance_a", h.compliance_a)?;
        d.set_item("name", h.name)?;
        Ok(Some(d))
    }

    #[pyo3(signature = (amps, timeout_s = 2.0, limit_v = None))]
    fn set_current(
        &self,
        py: Python<'_>,
        amps: f64,
        timeout_s: f64,
        limit_v: Option<f64>,
    ) -> PyResult<()> {
        let reply = self.call(py, timeout_s, |a, t| a.set_current(amps, limit_v, t))?;
        ok_or_refused("SET_CURRENT", reply).map(|_| ())
    }

    #[pyo3(signature = (timeout_s = 2.0))]
    fn open_circuit(&self, py: Python<'_>, timeout_s: f64) -> PyResult<()> {
        let reply = self.call(py, timeout_s, |a, t| a.open_circuit(t))?;
        ok_or_refused("OPEN_CIRCUIT", reply).map(|_| ())
    }

    #[pyo3(signature = (f_start_hz, f_stop_hz, points_per_decade, amplitude_v, timeout_s = 2.0))]
    fn start_eis(
        &self,
        py: Python<'_>,
        f_start_hz: f64,
        f_stop_hz: f64,
        points_per_decade: u16,
        amplitude_v: f64,
        timeout_s: f64,
    ) -> PyResult<()> {
        let request = EisRequest {
            f_start_hz,
            f_stop_hz,
            points_per_decade,
            amplitude_v,
        };
        let reply = self.call(py, timeout_s, |a, t| a.start_eis(&request, t))?;
        ok_or_refused("START_EIS", reply).map(|_| ())
    }

    #[pyo3(signature = (timeout_s = 2.0))]
    fn read_status<'py>(&self, py: Python<'py>, timeout_s: f64) -> PyResult<Bound<'py, PyDict>> {
        let (reply, status) = self.call(py, timeout_s, |a, t| a.read_status(t))?;
        ok_or_refused("READ_STATUS", reply)?;
        let Some(s) = status else {
            return Err(PyRuntimeError::new_err(
                "READ_STATUS: an ok reply without STATUS",
            ));
        };
        let d = PyDict::new(py);
        d.set_item("tick", s.tick)?;
        d.set_item("mode", s.mode)?;
        d.set_item("watchdog_opened", s.watchdog_opened)?;
        d.set_item("eis_done", s.eis_done)?;
        d.set_item("eis_total", s.eis_total)?;
        d.set_item("setpoint_a", s.setpoint_a)?;
        d.set_item("ewe_v", s.ewe_v)?;
        d.set_item("current_a", s.current_a)?;
        Ok(d)
    }

    /// Any command; returns the reply's ``(code, message, body)`` whatever the code.
    #[pyo3(
        signature = (kind, payload = b"".as_slice(), timeout_s = 2.0),
        text_signature = "(self, /, kind, payload=b'', timeout_s=2.0)"
    )]
    fn command<'py>(
        &self,
        py: Python<'py>,
        kind: u8,
        payload: &[u8],
        timeout_s: f64,
    ) -> PyResult<(u16, String, Bound<'py, PyBytes>)> {
        if payload.len() > MAX_PAYLOAD {
            return Err(PyValueError::new_err(format!(
                "payload of {} bytes exceeds {MAX_PAYLOAD}",
                payload.len()
            )));
        }
        let payload = payload.to_vec();
        let reply = self.call(py, timeout_s, |a, t| a.command(kind, &payload, t))?;
        Ok((reply.code, reply.message, PyBytes::new(py, &reply.body)))
    }

    /// Open the circuit (unless told not to), then stop and join the threads. True if
    /// the potentiostat confirmed open circuit (or none was asked for or configured).
    #[pyo3(signature = (open_circuit = true))]
    fn stop(&self, py: Python<'_>, open_circuit: bool) -> bool {
        let inner = &self.inner;
        py.detach(|| inner.stop(open_circuit))
    }

    /// From now on every detector read and sample batch also goes to `journal`, from the
    /// link threads; with `fresh_cubes` the cubes and counters start over at that moment,
    /// so replaying the journal rebuilds them exactly. Returns whether a journal was
    /// already being recorded to (it is replaced, not closed).
    #[pyo3(signature = (journal, fresh_cubes = true))]
    fn start_recording(
        &self,
        py: Python<'_>,
        journal: &crate::journal::PyJournalWriter,
        fresh_cubes: bool,
    ) -> PyResult<bool> {
        let writer = journal.shared()?;
        let inner = &self.inner;
        let before = py
            .detach(|| inner.start_recording(writer, fresh_cubes))
            .map_err(acq_err)?;
        Ok(before.is_some())
    }

    /// Stop recording (the journal is not closed: its owner closes it). Returns the
    /// digest of what the engine built while recording (``EventCore.digest``; ``{}``
    /// without a detector link), or None if nothing was being recorded.
    fn stop_recording<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let inner = &self.inner;
        let Some((_journal, digest)) = py.detach(|| inner.stop_recording()) else {
            return Ok(None);
        };
        match digest {
            Some(g) => crate::events::digest_dict(py, &g).map(Some),
            None => Ok(Some(PyDict::new(py))),
        }
    }

    /// The interlock's state as a dict (`docs/safety.md`), or None without an interlock.
    fn interlock_state<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(h) = &self.interlock else {
            return Ok(None);
        };
        let st = self.interlock_status(py, h);
        interlock::status_dict(py, &st, h.lock().config()).map(Some)
    }

    /// Operator reset: `InterlockError` while the condition persists.
    fn reset_interlock<'py>(
        &self,
        py: Python<'py>,
        operator: String,
        reason: String,
    ) -> PyResult<Bound<'py, PyDict>> {
        let h = self.interlock()?;
        let inner = &self.inner;
        let done = py.detach(|| {
            let now = realtime_ns();
            let run = |link: &mut opsims_core::acquisition::LinkWriter<'_>| {
                h.lock().reset(&operator, &reason, now, link)
            };
            match inner.with_check(|_, link| run(link)) {
                Ok(r) => r,
                Err(e) => Err(e.to_string()),
            }
        });
        let reset =
            done.map_err(|m| interlock::InterlockError::new_err(format!("reset refused: {m}")))?;
        interlock::reset_dict(py, &reset)
    }

    /// Arm the interlock's step stop: the first galvanostatic sample with |Ewe| at or
    /// beyond `limit_v` opens the circuit from the potentiostat thread and is queued as a
    /// `step_stop` event; then it is disarmed. `ConfigError` for a limit that is not a
    /// finite voltage above 0.
    fn arm_step_stop(&self, py: Python<'_>, limit_v: f64) -> PyResult<()> {
        let h = self.interlock()?;
        py.detach(|| h.lock().arm_stop(limit_v)).map_err(to_py)
    }

    /// Disarm the step stop; whether one was armed (False once it fired).
    fn disarm_step_stop(&self, py: Python<'_>) -> PyResult<bool> {
        let h = self.interlock()?;
        Ok(py.detach(|| h.lock().disarm_stop()).is_some())
    }

    /// Latch a trip from before a restart (TRIPPED, circuit opened as soon as the link is
    /// up). Call it before commanding any current.
    #[pyo3(signature = (reason, detail, trip_host_ns, sample = None))]
    fn latch_interlock(
        &self,
        py: Python<'_>,
        reason: &str,
        detail: String,
        trip_host_ns: i64,
        sample: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let h = self.interlock()?;
        let reason = interlock::reason(reason)?;
        let sample = sample.map(interlock::sample_from).transpose()?;
        let inner = &self.inner;
        py.detach(|| {
            let now = realtime_ns();
            let mut detail = Some(detail);
            let mut restore = |link: &mut dyn opsims_core::interlock::SafetyLink| {
                let d = detail.take().unwrap_or_default();
                h.lock().restore(reason, d, trip_host_ns, sample, now, link);
            };
            if inner.with_check(|_, link| restore(link)).is_err() {
                restore(&mut interlock::NoLink);
            }
        });
        Ok(())
    }

    #[getter]
    fn stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    // --- the detector pipeline, read under its lock -----------------------------------

    #[getter]
    fn species(&self) -> Vec<String> {
        self.species.clone()
    }

    #[getter]
    fn n_slices(&self, py: Python<'_>) -> PyResult<usize> {
        self.engine(py, |e| e.cubes().n_slices())
    }

    #[getter]
    fn frames_per_slice(&self, py: Python<'_>) -> PyResult<u64> {
        self.engine(py, |e| e.frames_per_slice())
    }

    #[getter]
    fn shape(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        self.engine(py, |e| e.cubes().shape_yx())
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
        let (out, shape) = self
            .engine(py, move |e| cube_reads::cube(e.cubes(), s, z_start, z_stop))?
            .map_err(to_py)?;
        out.into_pyarray(py).reshape(shape)
    }

    /// Single slices `(species_index, z)` read under one lock, with the binning they are
    /// of: `([uint32 [y, x] or None], frames_per_slice, n_slices, rebins)`. A slice a
    /// rebin has merged away since it was asked for (`z >= n_slices`) is None.
    #[allow(clippy::type_complexity)]
    fn cube_slices<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<(usize, usize)>,
    ) -> PyResult<(Vec<Option<Bound<'py, PyArray2<u32>>>>, u64, usize, u64)> {
        let (reads, (fps, n, rebins)) = self.engine(py, move |e| {
            let c = e.cubes();
            let reads = keys
                .iter()
                .map(|&(s, z)| cube_reads::slice(c, s, z))
                .collect::<Result<Vec<_>, _>>();
            (reads, cube_reads::binning(e))
        })?;
        let slices = reads
            .map_err(to_py)?
            .into_iter()
            .map(|read| {
                read.map(|(flat, shape)| flat.into_pyarray(py).reshape(shape))
                    .transpose()
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok((slices, fps, n, rebins))
    }

    /// Every species' whole cube read under one lock, so all have the same slices and
    /// binning, with the counters they go with: `({species: uint32 [z, y, x]},
    /// frames_per_slice, n_slices, rebins, counters)`.
    #[allow(clippy::type_complexity)]
    fn cubes<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyDict>, u64, usize, u64, Bound<'py, PyDict>)> {
        let (reads, fps, n, counters) = self.engine(py, |e| {
            let c = e.cubes();
            let reads = (0..c.n_species())
                .map(|s| cube_reads::cube(c, s, 0, None))
                .collect::<Result<Vec<_>, _>>();
            (reads, e.frames_per_slice(), c.n_slices(), e.counters())
        })?;
        let d = PyDict::new(py);
        for (name, (out, shape)) in self.species.iter().zip(reads.map_err(to_py)?) {
            d.set_item(name, out.into_pyarray(py).reshape(shape)?)?;
        }
        let counters_d = crate::events::counters_dict(py, &counters)?;
        Ok((d, fps, n, counters.rebins, counters_d))
    }

    /// Counts per slice and species from slice `z_start` on, `uint64 [z, species]`.
    #[pyo3(signature = (z_start = 0))]
    fn depth_profile<'py>(
        &self,
        py: Python<'py>,
        z_start: usize,
    ) -> PyResult<Bound<'py, PyArray2<u64>>> {
        let (flat, shape) = self.engine(py, |e| cube_reads::depth_profile(e.cubes(), z_start))?;
        flat.into_pyarray(py).reshape(shape)
    }

    /// The depth profile from slice `z_start` on with the binning it is of, read under
    /// one lock: `(uint64 [z, species], frames_per_slice, n_slices, rebins)`.
    #[pyo3(signature = (z_start = 0))]
    fn profile_rows<'py>(
        &self,
        py: Python<'py>,
        z_start: usize,
    ) -> PyResult<(Bound<'py, PyArray2<u64>>, u64, usize, u64)> {
        let ((flat, shape), (fps, n, rebins)) = self.engine(py, |e| {
            (
                cube_reads::depth_profile(e.cubes(), z_start),
                cube_reads::binning(e),
            )
        })?;
        Ok((flat.into_pyarray(py).reshape(shape)?, fps, n, rebins))
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
        let (map, shape) = self
            .engine(py, move |e| {
                cube_reads::ion_map(e.cubes(), s, z_start, z_stop)
            })?
            .map_err(to_py)?;
        map.into_pyarray(py).reshape(shape)
    }

    /// ``{species: counts binned}`` since the cubes were made (no pass over them).
    fn binned_by_species<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let totals = self.engine(py, |e| e.cubes().binned_by_species().to_vec())?;
        cube_reads::species_dict(py, &self.species, &totals)
    }

    /// The lowest slice changed since the last call, or None.
    fn take_dirty(&self, py: Python<'_>) -> PyResult<Option<usize>> {
        self.engine(py, |e| e.cubes_mut().take_dirty())
    }

    fn __repr__(&self) -> String {
        let states: Vec<String> = [LinkId::Detector, LinkId::Potentiostat]
            .into_iter()
            .filter_map(|l| {
                self.inner
                    .link_state(l)
                    .map(|s| format!("{}={}", l.name(), s.name()))
            })
            .collect();
        let stopped = if self.inner.is_stopped() {
            ", stopped"
        } else {
            ""
        };
        format!("Acquisition({}{stopped})", states.join(", "))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAcquisition>()?;
    m.add("CommandRefused", m.py().get_type::<CommandRefused>())?;
    interlock::register(m)?;
    Ok(())
}
