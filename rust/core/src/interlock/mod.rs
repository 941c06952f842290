//! The safety interlock (issue 5; DESIGN.md, *Safety*; `docs/safety.md`).
//!
//! A latched state machine judged on every potentiostat sample in the reader thread:
//!
//! ```text
//!   ARMED --(out of limits, non-finite, gap, link lost, time backwards, shutdown)--> TRIPPED
//!   TRIPPED --(no open circuit seen within confirm_timeout_s)--> ALARM (re-sending)
//!   ALARM --(a sample at open circuit)--> TRIPPED (confirmed)
//!   TRIPPED --(operator reset, condition gone, open circuit confirmed)--> ARMED
//! ```
//!
//! A trip writes OPEN_CIRCUIT before it records anything. Open circuit counts as
//! confirmed only when a sample shows it (mode 0, current exactly 0): the reply to
//! OPEN_CIRCUIT proves nothing, a misbehaving instrument acknowledges and keeps the
//! current on (`ignore_open_circuit` in the simulator).
//!
//! Boundaries: a limit value itself is allowed (Ewe of exactly −10.000 or +10.000 V,
//! |I| equal to the compliance); anything beyond trips. A gap trips when it exceeds
//! `max_sample_gap_s`; a tick trips when it is more than `backwards_tolerance_s` behind
//! the newest one seen.
//!
//! Beside the safety checks sits the owner's **step stop** ([`Interlock::arm_stop`]): a
//! galvanostatic step ends at the first sample with |Ewe| at or beyond a voltage (a
//! strip's depletion, a step's `until_v`), judged here so it sees every sample at once
//! however fast they come. It writes OPEN_CIRCUIT and reports the sample; it never
//! latches, never changes the safety state, and the safety checks run first: a sample
//! that also trips the interlock is a trip only.
//!
//! The logic here sees the link only through [`SafetyLink`] and takes time as arguments,
//! so it is tested without sockets; [`InterlockCheck`] plugs it into the acquisition.

mod check;
#[cfg(test)]
mod tests;

pub use check::InterlockCheck;

use std::collections::VecDeque;

use crate::acquisition::Sample;
use crate::error::CoreError;
use crate::link::potentiostat::{kind, mode};

/// The widest Ewe range limits may be set to: the simulated instrument's range (±20 V,
/// `sim.potentiostat.voltage_range_v`), beyond which the instrument itself clips.
pub const EWE_RANGE_V: f64 = 20.0;

/// The interlock's limits and timings (`[safety]` in the daemon's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct InterlockConfig {
    /// Lowest allowed Ewe (the value itself is allowed).
    pub ewe_min_v: f64,
    /// Highest allowed Ewe (the value itself is allowed).
    pub ewe_max_v: f64,
    /// Largest allowed |current|; None: the compliance the instrument's HELLO announces.
    pub compliance_a: Option<f64>,
    /// Longest host-time silence allowed while current flows.
    pub max_sample_gap_s: f64,
    /// How far (device seconds) a tick may fall behind the newest one before it trips.
    pub backwards_tolerance_s: f64,
    /// A trip not confirmed by an open-circuit sample within this long is an ALARM.
    pub confirm_timeout_s: f64,
    /// While unconfirmed, OPEN_CIRCUIT is written again this often.
    pub resend_interval_s: f64,
}

impl Default for InterlockConfig {
    fn default() -> Self {
        InterlockConfig {
            ewe_min_v: -10.0,
            ewe_max_v: 10.0,
            compliance_a: None,
            max_sample_gap_s: 0.5,
            backwards_tolerance_s: 1.0,
            confirm_timeout_s: 1.0,
            resend_interval_s: 0.2,
        }
    }
}

fn config_err(key: &str, why: impl std::fmt::Display) -> CoreError {
    CoreError::Config(format!("interlock.{key}: {why}"))
}

fn seconds(key: &str, v: f64, max: f64) -> Result<(), CoreError> {
    if v.is_finite() && v > 0.0 && v <= max {
        Ok(())
    } else {
        Err(config_err(
            key,
            format!("must be a number of seconds in (0, {max}], got {v}"),
        ))
    }
}

impl InterlockConfig {
    /// Every value checked; the message names `interlock.<key>`.
    pub fn validate(&self) -> Result<(), CoreError> {
        for (key, v) in [("ewe_min_v", self.ewe_min_v), ("ewe_max_v", self.ewe_max_v)] {
            if !(v.is_finite() && v.abs() <= EWE_RANGE_V) {
                return Err(config_err(
                    key,
                    format!("must be within the instrument's ±{EWE_RANGE_V} V, got {v}"),
                ));
            }
        }
        if self.ewe_min_v >= self.ewe_max_v {
            return Err(config_err(
                "ewe_max_v",
                format!(
                    "must be above ewe_min_v ({}), got {}",
                    self.ewe_min_v, self.ewe_max_v
                ),
            ));
        }
        if let Some(c) = self.compliance_a {
            if !(c.is_finite() && c > 0.0 && c <= 1.0) {
                return Err(config_err(
                    "compliance_a",
                    format!("must be a current in (0, 1] A, got {c}"),
                ));
            }
        }
        seconds("max_sample_gap_s", self.max_sample_gap_s, 60.0)?;
        seconds("backwards_tolerance_s", self.backwards_tolerance_s, 3600.0)?;
        seconds("confirm_timeout_s", self.confirm_timeout_s, 60.0)?;
        seconds("resend_interval_s", self.resend_interval_s, 60.0)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SafetyState {
    Armed,
    Tripped,
    /// Tripped, and the potentiostat has not shown open circuit in time: critical.
    Alarm,
}

impl SafetyState {
    pub fn name(self) -> &'static str {
        match self {
            SafetyState::Armed => "armed",
            SafetyState::Tripped => "tripped",
            SafetyState::Alarm => "alarm",
        }
    }
}

/// Why the interlock tripped (the `safety` topic's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripReason {
    EweHigh,
    EweLow,
    CurrentCompliance,
    NonFinite,
    SampleGap,
    TimeBackwards,
    LinkLost,
    Shutdown,
}

impl TripReason {
    pub const ALL: [TripReason; 8] = [
        TripReason::EweHigh,
        TripReason::EweLow,
        TripReason::CurrentCompliance,
        TripReason::NonFinite,
        TripReason::SampleGap,
        TripReason::TimeBackwards,
        TripReason::LinkLost,
        TripReason::Shutdown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TripReason::EweHigh => "ewe_high",
            TripReason::EweLow => "ewe_low",
            TripReason::CurrentCompliance => "current_compliance",
            TripReason::NonFinite => "non_finite",
            TripReason::SampleGap => "sample_gap",
            TripReason::TimeBackwards => "time_backwards",
            TripReason::LinkLost => "link_lost",
            TripReason::Shutdown => "shutdown",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// A latched trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub reason: TripReason,
    /// For people: the value and the limit.
    pub detail: String,
    /// The offending sample (None for a gap, a lost link, a shutdown, a restored trip
    /// that had none).
    pub sample: Option<Sample>,
    /// Host time (CLOCK_REALTIME ns) the interlock tripped.
    pub trip_host_ns: i64,
    /// Whether the trip's own OPEN_CIRCUIT could be written (false: the link was down;
    /// it goes out when the link is back).
    pub open_circuit_written: bool,
    /// Restored from a trip latched before a restart.
    pub restored: bool,
}

/// An operator reset.
#[derive(Debug, Clone, PartialEq)]
pub struct Reset {
    pub operator: String,
    pub reason: String,
    pub host_ns: i64,
    /// The trip it cleared.
    pub cleared: Trip,
}

/// The state as the owner reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct InterlockStatus {
    pub state: SafetyState,
    pub trip: Option<Trip>,
    /// A sample at open circuit has been seen since the trip (and none with current since).
    pub open_circuit_confirmed: bool,
    /// The instrument acknowledged an OPEN_CIRCUIT of the interlock (not a confirmation).
    pub open_circuit_acknowledged: bool,
    pub alarm_host_ns: Option<i64>,
    pub last_reset: Option<Reset>,
    pub current_flowing: bool,
    pub link_up: bool,
    /// The compliance in force (configured, or the instrument's), None before a HELLO.
    pub compliance_a: Option<f64>,
    pub trips: u64,
    pub resets: u64,
    pub open_circuit_writes: u64,
    /// State changes so far: a reader compares it to notice one.
    pub changes: u64,
    /// The armed step stop's |Ewe| limit, None when none is armed.
    pub step_stop_v: Option<f64>,
    /// Step stops that fired so far.
    pub step_stops: u64,
}

/// What the interlock does to the outside: the acquisition's link writer, or a test fake.
pub trait SafetyLink {
    /// Write OPEN_CIRCUIT now; its sequence number on this connection, or Err if the link
    /// is down or the write failed.
    fn open_circuit(&mut self) -> Result<u32, String>;
    /// A state change, for the owner (queued as an event, waking its wait).
    fn state_changed(&mut self, host_ns: i64, state: SafetyState, reason: &'static str);
    /// The armed step stop ended the step at `sample` (its OPEN_CIRCUIT already written),
    /// for the owner (queued as an event, waking its wait).
    fn step_stopped(&mut self, sample: &Sample, limit_v: f64);
}

/// Step-stop OPEN_CIRCUITs whose replies may still come (more is forgotten, oldest first).
const STOP_REPLIES: usize = 16;

fn ns(seconds: f64) -> i64 {
    (seconds * 1e9) as i64
}

/// The state machine. Every method takes the current host time.
#[derive(Debug, Clone)]
pub struct Interlock {
    cfg: InterlockConfig,
    compliance_a: Option<f64>,
    ticks_per_s: Option<f64>,
    state: SafetyState,
    trip: Option<Trip>,
    confirmed: bool,
    acknowledged: bool,
    link_up: bool,
    /// The last commanded or observed current was not zero (or the mode not open).
    flowing: bool,
    /// Host time the gap is measured from: the last sample's arrival, or when current
    /// was commanded while none flowed.
    gap_from_ns: i64,
    newest_tick: Option<u64>,
    last_sample: Option<Sample>,
    last_write_ns: i64,
    unconfirmed_since_ns: i64,
    alarm_ns: Option<i64>,
    last_reset: Option<Reset>,
    trips: u64,
    resets: u64,
    writes: u64,
    changes: u64,
    /// The armed step stop's |Ewe| limit.
    stop_v: Option<f64>,
    stops: u64,
    /// Sequences of the step stops' OPEN_CIRCUITs awaiting replies: those replies do not
    /// acknowledge a trip's open circuit.
    stop_seqs: VecDeque<u32>,
}

impl Interlock {
    pub fn new(cfg: InterlockConfig) -> Result<Self, CoreError> {
        cfg.validate()?;
        Ok(Interlock {
            compliance_a: cfg.compliance_a,
            cfg,
            ticks_per_s: None,
            state: SafetyState::Armed,
            trip: None,
            confirmed: false,
            acknowledged: false,
            link_up: false,
            flowing: false,
            gap_from_ns: 0,
            newest_tick: None,
            last_sample: None,
            last_write_ns: 0,
            unconfirmed_since_ns: 0,
            alarm_ns: None,
            last_reset: None,
            trips: 0,
            resets: 0,
            writes: 0,
            changes: 0,
            stop_v: None,
            stops: 0,
            stop_seqs: VecDeque::new(),
        })
    }

    pub fn config(&self) -> &InterlockConfig {
        &self.cfg
    }

    pub fn state(&self) -> SafetyState {
        self.state
    }

    pub fn status(&self) -> InterlockStatus {
        InterlockStatus {
            state: self.state,
            trip: self.trip.clone(),
            open_circuit_confirmed: self.confirmed,
            open_circuit_acknowledged: self.acknowledged,
            alarm_host_ns: self.alarm_ns,
            last_reset: self.last_reset.clone(),
            current_flowing: self.flowing,
            link_up: self.link_up,
            compliance_a: self.compliance_a,
            trips: self.trips,
            resets: self.resets,
            open_circuit_writes: self.writes,
            changes: self.changes,
            step_stop_v: self.stop_v,
            step_stops: self.stops,
        }
    }

    /// Arm the step stop: the first finite sample in galvanostatic mode with |Ewe| ≥
    /// `limit_v` opens the circuit and is reported ([`SafetyLink::step_stopped`]); the
    /// stop is then disarmed. Replaces a stop already armed. A trip, a lost link and a
    /// shutdown disarm it; it is judged only while the interlock is armed, after the
    /// safety checks. `limit_v` must be finite and above 0 V.
    pub fn arm_stop(&mut self, limit_v: f64) -> Result<(), CoreError> {
        if !(limit_v.is_finite() && limit_v > 0.0) {
            return Err(config_err(
                "step_stop.limit_v",
                format!("must be a finite |Ewe| above 0 V, got {limit_v}"),
            ));
        }
        self.stop_v = Some(limit_v);
        Ok(())
    }

    /// Disarm the step stop; the limit it had, None if none was armed (or it fired).
    pub fn disarm_stop(&mut self) -> Option<f64> {
        self.stop_v.take()
    }

    /// The armed step stop's limit, None when none is armed.
    pub fn stop_armed(&self) -> Option<f64> {
        self.stop_v
    }

    /// Whether `s` reaches the armed stop: galvanostatic, finite, |Ewe| ≥ the limit.
    fn reaches_stop(&self, s: &Sample) -> Option<f64> {
        let limit = self.stop_v?;
        let reached = s.mode == mode::GALVANOSTATIC
            && s.ewe_v.is_finite()
            && s.current_a.is_finite()
            && s.ewe_v.abs() >= limit;
        reached.then_some(limit)
    }

    /// The step stop: OPEN_CIRCUIT first, disarm, then the report. The safety state, the
    /// trip record and the interlock's own write count are untouched.
    fn stop_step(&mut self, s: &Sample, limit_v: f64, link: &mut dyn SafetyLink) {
        if let Ok(seq) = link.open_circuit() {
            if self.stop_seqs.len() == STOP_REPLIES {
                self.stop_seqs.pop_front();
            }
            self.stop_seqs.push_back(seq);
        }
        self.stop_v = None;
        self.stops += 1;
        link.step_stopped(s, limit_v);
    }

    /// The limit a sample breaks, if any. Non-finite first: NaN compares false with
    /// every limit and would otherwise pass.
    pub fn judge(&self, s: &Sample) -> Option<(TripReason, String)> {
        let c = &self.cfg;
        if !s.ewe_v.is_finite() || !s.current_a.is_finite() {
            return Some((
                TripReason::NonFinite,
                format!("non-finite sample: Ewe {} V, I {} A", s.ewe_v, s.current_a),
            ));
        }
        if s.ewe_v > c.ewe_max_v {
            return Some((
                TripReason::EweHigh,
                format!("Ewe {} V above the limit {} V", s.ewe_v, c.ewe_max_v),
            ));
        }
        if s.ewe_v < c.ewe_min_v {
            return Some((
                TripReason::EweLow,
                format!("Ewe {} V below the limit {} V", s.ewe_v, c.ewe_min_v),
            ));
        }
        if let Some(limit) = self.compliance_a {
            if s.current_a.abs() > limit {
                return Some((
                    TripReason::CurrentCompliance,
                    format!(
                        "|I| {} A beyond the compliance {} A",
                        s.current_a.abs(),
                        limit
                    ),
                ));
            }
        }
        None
    }

    fn behind(&self, s: &Sample) -> Option<(TripReason, String)> {
        let (newest, per_s) = (self.newest_tick?, self.ticks_per_s?);
        let back = newest.checked_sub(s.tick)? as f64 / per_s;
        (back > self.cfg.backwards_tolerance_s).then(|| {
            (
                TripReason::TimeBackwards,
                format!(
                    "sample time {back:.6} s behind the newest (tolerance {} s)",
                    self.cfg.backwards_tolerance_s
                ),
            )
        })
    }

    fn write_open_circuit(&mut self, now: i64, link: &mut dyn SafetyLink) -> bool {
        self.last_write_ns = now;
        let ok = link.open_circuit().is_ok();
        self.writes += u64::from(ok);
        ok
    }

    fn change(
        &mut self,
        now: i64,
        state: SafetyState,
        reason: &'static str,
        link: &mut dyn SafetyLink,
    ) {
        self.state = state;
        self.changes += 1;
        link.state_changed(now, state, reason);
    }

    /// Trip (if armed): OPEN_CIRCUIT first, then the record. A second condition while
    /// tripped changes nothing: the first trip is the one latched.
    pub fn trip(
        &mut self,
        reason: TripReason,
        detail: String,
        sample: Option<Sample>,
        now: i64,
        link: &mut dyn SafetyLink,
    ) {
        if self.state != SafetyState::Armed {
            return;
        }
        self.stop_v = None;
        let written = self.write_open_circuit(now, link);
        self.trip = Some(Trip {
            reason,
            detail,
            sample,
            trip_host_ns: now,
            open_circuit_written: written,
            restored: false,
        });
        self.confirmed = false;
        self.acknowledged = false;
        self.unconfirmed_since_ns = now;
        self.alarm_ns = None;
        self.trips += 1;
        self.change(now, SafetyState::Tripped, reason.name(), link);
    }

    /// Latch a trip from before a restart, as TRIPPED, before any current can be
    /// commanded; the circuit is opened now if the link is up, else when it comes up.
    pub fn restore(
        &mut self,
        reason: TripReason,
        detail: String,
        trip_host_ns: i64,
        sample: Option<Sample>,
        now: i64,
        link: &mut dyn SafetyLink,
    ) {
        if self.state != SafetyState::Armed {
            return;
        }
        let written = self.link_up && self.write_open_circuit(now, link);
        self.trip = Some(Trip {
            reason,
            detail,
            sample,
            trip_host_ns,
            open_circuit_written: written,
            restored: true,
        });
        self.confirmed = false;
        self.unconfirmed_since_ns = now;
        self.change(now, SafetyState::Tripped, reason.name(), link);
    }

    /// One sample, in order; `now` is when it is judged.
    pub fn on_sample(&mut self, s: &Sample, now: i64, link: &mut dyn SafetyLink) {
        let violation = self.judge(s).or_else(|| self.behind(s));
        self.newest_tick = Some(self.newest_tick.map_or(s.tick, |t| t.max(s.tick)));
        self.last_sample = Some(*s);
        let open = s.mode == 0 && s.current_a == 0.0;
        self.flowing = !open;
        self.gap_from_ns = s.arrival_ns;
        if let Some((reason, detail)) = violation {
            self.trip(reason, detail, Some(*s), now, link);
        }
        if self.state == SafetyState::Armed {
            // Only a sample the safety checks passed reaches the step stop.
            if let Some(limit_v) = self.reaches_stop(s) {
                self.stop_step(s, limit_v, link);
            }
            return;
        }
        if open && !self.confirmed {
            self.confirmed = true;
            if self.state == SafetyState::Alarm {
                self.change(now, SafetyState::Tripped, "open_circuit_confirmed", link);
            }
        } else if !open && self.confirmed {
            // Current again after confirmation: not open after all; start over.
            self.confirmed = false;
            self.unconfirmed_since_ns = now;
            self.write_open_circuit(now, link);
        }
    }

    /// Silence checks and the unconfirmed trip's re-sends and escalation. Called at least
    /// every 10 ms while the link is up, and whenever the owner reads the state.
    pub fn on_idle(&mut self, now: i64, link: &mut dyn SafetyLink) {
        match self.state {
            SafetyState::Armed => {
                let gap = now - self.gap_from_ns;
                if self.flowing && self.link_up && gap > ns(self.cfg.max_sample_gap_s) {
                    let detail = format!(
                        "no sample for {:.3} s while current flows (limit {} s)",
                        gap as f64 * 1e-9,
                        self.cfg.max_sample_gap_s
                    );
                    self.trip(TripReason::SampleGap, detail, None, now, link);
                }
            }
            SafetyState::Tripped | SafetyState::Alarm if !self.confirmed => {
                if self.link_up && now - self.last_write_ns >= ns(self.cfg.resend_interval_s) {
                    self.write_open_circuit(now, link);
                }
                let waited = now - self.unconfirmed_since_ns;
                if self.state == SafetyState::Tripped && waited > ns(self.cfg.confirm_timeout_s) {
                    self.alarm_ns = Some(now);
                    let reason = self.trip.as_ref().map_or("", |t| t.reason.name());
                    self.change(now, SafetyState::Alarm, reason, link);
                }
            }
            _ => {}
        }
    }

    /// A new connection: take the instrument's compliance and tick; a latched trip opens
    /// the circuit first thing.
    pub fn on_link_up(
        &mut self,
        compliance_a: f64,
        tick_fs: u64,
        now: i64,
        link: &mut dyn SafetyLink,
    ) {
        self.link_up = true;
        if self.cfg.compliance_a.is_none() && compliance_a.is_finite() && compliance_a > 0.0 {
            self.compliance_a = Some(compliance_a);
        }
        self.ticks_per_s = (tick_fs > 0).then(|| 1e15 / tick_fs as f64);
        // Sequences restart with the connection.
        self.stop_seqs.clear();
        // Ticks of a new connection may restart; the gap counts from now.
        self.newest_tick = None;
        self.gap_from_ns = now;
        if self.state != SafetyState::Armed {
            self.confirmed = false;
            self.unconfirmed_since_ns = now;
            let ok = self.write_open_circuit(now, link);
            if let Some(t) = &mut self.trip {
                t.open_circuit_written |= ok;
            }
        }
    }

    /// The link is gone: with current flowing that is a trip (the OPEN_CIRCUIT cannot be
    /// written now; it goes out when the link is back). A trip is unconfirmed again.
    pub fn on_link_down(&mut self, now: i64, reason: &str, link: &mut dyn SafetyLink) {
        self.link_up = false;
        self.stop_v = None;
        self.stop_seqs.clear();
        if self.state == SafetyState::Armed && self.flowing {
            let detail = format!("potentiostat link lost while current flowed: {reason}");
            self.trip(TripReason::LinkLost, detail, None, now, link);
        } else if self.state != SafetyState::Armed && self.confirmed {
            self.confirmed = false;
            self.unconfirmed_since_ns = now;
        }
    }

    /// The owner's command gate: no current while tripped. OPEN_CIRCUIT always passes.
    pub fn allow_command(&mut self, command: u8, payload: &[u8], now: i64) -> Result<(), String> {
        let starts_current = match command {
            // Both forms (with and without a voltage limit) start with the amps; only
            // exactly 0 A starts no current, a short payload counts as current.
            kind::SET_CURRENT => payload
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .is_none_or(|b: [u8; 8]| f64::from_le_bytes(b) != 0.0),
            kind::START_EIS => true,
            _ => return Ok(()),
        };
        if self.state != SafetyState::Armed {
            let why = self.trip.as_ref().map_or("", |t| t.reason.name());
            return Err(format!(
                "the safety interlock is {} ({why}): {} refused until an operator reset",
                self.state.name(),
                kind::name(command)
            ));
        }
        if starts_current && !self.flowing {
            self.flowing = true;
            self.gap_from_ns = now;
        }
        Ok(())
    }

    /// The reply to an OPEN_CIRCUIT the interlock wrote (an acknowledgement only); the
    /// reply to a step stop's acknowledges no trip.
    pub fn on_reply(&mut self, sequence: u32, ok: bool) {
        if let Some(i) = self.stop_seqs.iter().position(|&q| q == sequence) {
            self.stop_seqs.remove(i);
            return;
        }
        self.acknowledged |= ok;
    }

    /// The acquisition is stopping: trip (reason `shutdown`) unless already tripped. The
    /// step stop is disarmed either way.
    pub fn on_shutdown(&mut self, now: i64, link: &mut dyn SafetyLink) {
        self.stop_v = None;
        let detail = "the acquisition is stopping".to_owned();
        self.trip(TripReason::Shutdown, detail, None, now, link);
    }

    /// An operator reset. Refused while tripped for a reason that persists: the last
    /// sample out of limits, the link down, or open circuit not confirmed by a sample.
    pub fn reset(
        &mut self,
        operator: &str,
        reason: &str,
        now: i64,
        link: &mut dyn SafetyLink,
    ) -> Result<Reset, String> {
        if operator.trim().is_empty() {
            return Err("an operator name is required".into());
        }
        if reason.trim().is_empty() {
            return Err("a reason is required".into());
        }
        let Some(trip) = self
            .trip
            .clone()
            .filter(|_| self.state != SafetyState::Armed)
        else {
            return Err("the interlock is armed: nothing to reset".into());
        };
        if !self.link_up {
            return Err("the potentiostat link is down: open circuit cannot be confirmed".into());
        }
        if !self.confirmed {
            return Err("the potentiostat has not shown open circuit since the trip".into());
        }
        if let Some((_, detail)) = self.last_sample.as_ref().and_then(|s| self.judge(s)) {
            return Err(format!("the condition persists: {detail}"));
        }
        let reset = Reset {
            operator: operator.to_owned(),
            reason: reason.to_owned(),
            host_ns: now,
            cleared: trip,
        };
        self.trip = None;
        self.alarm_ns = None;
        self.confirmed = false;
        self.acknowledged = false;
        self.gap_from_ns = now;
        self.resets += 1;
        self.last_reset = Some(reset.clone());
        self.change(now, SafetyState::Armed, "reset", link);
        Ok(reset)
    }
}
