//! The instrument links in native threads (issue 4): one `Acquisition` owns a detector
//! thread and a potentiostat thread (each optional) and everything they share, so
//! acquisition never waits for Python.
//!
//! - The detector thread reads the live link into the [`Engine`] (under a mutex that
//!   readers share) and wakes the owner.
//! - The potentiostat thread reads HELLO, then frames: samples are unwrapped, stamped on
//!   the host timebase and passed through the [`SampleCheck`] (the interlock's seam, which
//!   can write OPEN_CIRCUIT from this thread at once) before they are queued; replies
//!   complete commands; impedance points and instrument events are queued. It also sends
//!   the heartbeat while the owner proves it is alive with [`Acquisition::kick`].
//!
//! Both reconnect with exponential backoff and publish every link-state change as an
//! event; a panic inside a thread is caught, reported the same way, and the link is
//! reconnected. The owner waits on a condition variable ([`Acquisition::wait`]) and
//! drains bounded queues whose overflow is counted. See `docs/acquisition.md`.

mod detector;
mod potentiostat;
mod recording;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::clock::ClockModel;
use crate::engine::{Engine, EngineConfig, EngineDigest};
use crate::error::CoreError;
use crate::journal::JournalWriter;
use crate::link::potentiostat::{self as wire, EisPoint, Hello, Reply};

pub use potentiostat::{LinkWriter, NoCheck, Sample, SampleCheck, TickUnwrapper};

/// A failed call on an [`Acquisition`].
#[derive(Debug, Error)]
pub enum AcquisitionError {
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The link is not connected (or the acquisition stopped): nothing was sent.
    #[error("{0}")]
    LinkDown(String),
    /// The command went out but no reply came in time.
    #[error("{0}")]
    Timeout(String),
    /// Refused before it was sent (by the [`SampleCheck`]'s command gate).
    #[error("{0}")]
    Blocked(String),
    /// A call for a link this acquisition was not configured with.
    #[error("{0}")]
    NotConfigured(String),
}

pub type Result<T> = std::result::Result<T, AcquisitionError>;

/// How long a connection attempt may take (also bounds how long `stop` can wait on it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Instrument events (link states, impedance points, instrument events) kept for the owner.
pub const EVENT_QUEUE: usize = 65_536;

/// Where a link connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddress {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for LinkAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetectorLinkConfig {
    pub address: LinkAddress,
    /// The pipeline; its `clock_time_scale` is replaced by the acquisition's.
    pub engine: EngineConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PotentiostatLinkConfig {
    pub address: LinkAddress,
    /// History the potentiostat's clock model fits over, seconds.
    pub clock_window_s: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcquisitionConfig {
    pub detector: Option<DetectorLinkConfig>,
    pub potentiostat: Option<PotentiostatLinkConfig>,
    /// Simulated seconds per host second (1.0 with hardware): device ticks are fitted to
    /// host time at `tick_s / clock_time_scale`.
    pub clock_time_scale: f64,
    pub reconnect_initial_s: f64,
    pub reconnect_max_s: f64,
    /// HEARTBEAT period while the owner is alive.
    pub heartbeat_s: f64,
    /// The owner counts as alive this long after its last [`Acquisition::kick`].
    pub liveness_s: f64,
    /// Samples kept for the owner; beyond this, new samples are dropped and counted.
    pub sample_queue: usize,
}

impl Default for AcquisitionConfig {
    fn default() -> Self {
        AcquisitionConfig {
            detector: None,
            potentiostat: None,
            clock_time_scale: 1.0,
            reconnect_initial_s: 0.1,
            reconnect_max_s: 5.0,
            heartbeat_s: 0.5,
            liveness_s: 2.0,
            sample_queue: 1_000_000,
        }
    }
}

fn config_err(key: &str, why: impl std::fmt::Display) -> CoreError {
    CoreError::Config(format!("{key}: {why}"))
}

fn positive(key: &str, v: f64) -> std::result::Result<(), CoreError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(config_err(
            key,
            format!("must be a positive number, got {v}"),
        ))
    }
}

fn check_address(key: &str, a: &LinkAddress) -> std::result::Result<(), CoreError> {
    if a.host.is_empty() {
        return Err(config_err(&format!("{key}.host"), "must not be empty"));
    }
    if a.port == 0 {
        return Err(config_err(
            &format!("{key}.port"),
            "must be within 1..65535",
        ));
    }
    Ok(())
}

impl AcquisitionConfig {
    /// Every value checked, with its key path in the message.
    pub fn validate(&self) -> std::result::Result<(), CoreError> {
        positive("clock_time_scale", self.clock_time_scale)?;
        positive("reconnect_initial_s", self.reconnect_initial_s)?;
        positive("reconnect_max_s", self.reconnect_max_s)?;
        if self.reconnect_max_s < self.reconnect_initial_s {
            return Err(config_err(
                "reconnect_max_s",
                format!(
                    "must be >= reconnect_initial_s ({}), got {}",
                    self.reconnect_initial_s, self.reconnect_max_s
                ),
            ));
        }
        positive("heartbeat_s", self.heartbeat_s)?;
        positive("liveness_s", self.liveness_s)?;
        if self.sample_queue == 0 {
            return Err(config_err("sample_queue", "must be at least 1"));
        }
        if let Some(d) = &self.detector {
            check_address("detector", &d.address)?;
        }
        if let Some(p) = &self.potentiostat {
            check_address("potentiostat", &p.address)?;
            let w = p.clock_window_s;
            if !(w.is_finite() && w > 0.0 && w <= 1e6) {
                return Err(config_err(
                    "potentiostat.clock_window_s",
                    format!("must be a number of seconds in (0, 1e6], got {w}"),
                ));
            }
        }
        Ok(())
    }
}

/// CLOCK_REALTIME in ns: the one host timebase everything is published on.
pub fn realtime_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// A mutex that survives a panic of a thread that held it: the data may be mid-update,
/// but acquisition goes on (the panic itself is reported as a link event).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Exponential backoff between connection attempts: initial, doubling, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }
    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    /// A connection succeeded: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkId {
    Detector,
    Potentiostat,
}

impl LinkId {
    pub fn name(self) -> &'static str {
        match self {
            LinkId::Detector => "detector",
            LinkId::Potentiostat => "potentiostat",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Up,
    Down,
}

impl LinkState {
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

/// What the owner drains with [`Acquisition::take_events`].
#[derive(Debug, Clone, PartialEq)]
pub enum AcqEvent {
    Link {
        host_ns: i64,
        link: LinkId,
        state: LinkState,
        reason: String,
    },
    /// `tick` is unwrapped like the samples' (the raw counter is in `point.tick`).
    EisPoint {
        host_ns: i64,
        tick: u64,
        point: EisPoint,
    },
    Instrument {
        host_ns: i64,
        tick: u64,
        code: u16,
        message: String,
    },
    /// The sample check's state changed (the interlock: `armed`, `tripped`, `alarm`).
    Safety {
        host_ns: i64,
        state: &'static str,
        reason: &'static str,
    },
    /// The interlock's armed step stop ended a step: the sample that reached it (its host
    /// time, unwrapped tick and Ewe) and the limit, queued after its OPEN_CIRCUIT went out.
    StepStop {
        host_ns: i64,
        tick: u64,
        ewe_v: f64,
        limit_v: f64,
    },
}

/// Queued samples as columns (moved out whole by [`Acquisition::take_samples`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleColumns {
    pub host_ns: Vec<i64>,
    pub tick: Vec<u64>,
    pub ewe_v: Vec<f64>,
    pub current_a: Vec<f64>,
    pub mode: Vec<u8>,
    pub flags: Vec<u8>,
}

impl SampleColumns {
    pub fn len(&self) -> usize {
        self.tick.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tick.is_empty()
    }
    fn push(&mut self, s: &Sample) {
        self.host_ns.push(s.host_ns);
        self.tick.push(s.tick);
        self.ewe_v.push(s.ewe_v);
        self.current_a.push(s.current_a);
        self.mode.push(s.mode);
        self.flags.push(s.flags);
    }
}

/// Declares the link counters once: atomics the threads bump, and their published names.
macro_rules! link_counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Running totals of both links since the acquisition started.
        #[derive(Debug, Default)]
        pub struct LinkCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl LinkCounters {
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

link_counters! {
    detector_connects,
    detector_connect_failures,
    detector_disconnects,
    detector_bytes,
    potentiostat_connects,
    potentiostat_connect_failures,
    potentiostat_disconnects,
    potentiostat_bytes,
    /// Frames with a good CRC, any kind.
    potentiostat_frames,
    potentiostat_bytes_skipped,
    potentiostat_frames_corrupt,
    /// Frames of another protocol version: skipped whole.
    potentiostat_frames_unsupported,
    /// Frames whose payload does not parse for their kind.
    potentiostat_frames_malformed,
    /// Frames of a kind the host does not expect (a command, a second HELLO).
    potentiostat_frames_unexpected,
    samples,
    samples_dropped,
    /// A sample whose unwrapped tick is not after the previous one.
    samples_tick_backwards,
    events_dropped,
    commands_sent,
    commands_timed_out,
    /// Replies to no pending command (late after a timeout, or never asked).
    replies_unmatched,
    heartbeats_sent,
    /// Heartbeats not sent because the owner had not kicked within `liveness_s`.
    heartbeats_withheld,
    /// OPEN_CIRCUIT written by the sample check from the reader thread.
    open_circuit_now,
    /// Panics caught in a link thread (each also reported as a link event).
    panics,
    /// Detector reads and sample batches handed to the run journal...
    journal_appends,
    /// ...and refused by it (its memory bound was full): not in the journal.
    journal_refused,
}

pub(crate) fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

struct Queues {
    samples: SampleColumns,
    events: VecDeque<AcqEvent>,
    /// Something arrived since the last [`Acquisition::wait`] returned.
    fresh: bool,
    states: [LinkState; 2],
}

/// A stop request the threads sleep on, so backoff waits end at once.
#[derive(Default)]
struct StopFlag {
    set: Mutex<bool>,
    cv: Condvar,
    fast: AtomicBool,
}

impl StopFlag {
    fn is_set(&self) -> bool {
        self.fast.load(Ordering::Acquire)
    }
    fn set(&self) {
        *lock(&self.set) = true;
        self.fast.store(true, Ordering::Release);
        self.cv.notify_all();
    }
    /// Sleep for `d` or until stopped; true if stopped.
    fn sleep(&self, d: Duration) -> bool {
        let g = lock(&self.set);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *g
    }
}

/// Everything the threads and the owner share.
pub(crate) struct Shared {
    cfg: AcquisitionConfig,
    queues: Mutex<Queues>,
    fresh_cv: Condvar,
    stop: StopFlag,
    counters: LinkCounters,
    /// Monotonic ns (since `epoch`) of the owner's last kick.
    kicked_ns: AtomicI64,
    epoch: Instant,
    engine: Option<Mutex<Engine>>,
    pot: Option<potentiostat::PotShared>,
    recorder: recording::Recorder,
}

impl Shared {
    fn mono_ns(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    fn owner_alive(&self) -> bool {
        let idle_ns = self.mono_ns() - self.kicked_ns.load(Ordering::Relaxed);
        (idle_ns as f64) * 1e-9 <= self.cfg.liveness_s
    }

    fn notify(&self, q: &mut Queues) {
        q.fresh = true;
        self.fresh_cv.notify_all();
    }

    /// New detector data was binned.
    fn data_arrived(&self) {
        let mut q = lock(&self.queues);
        self.notify(&mut q);
    }

    fn push_event(&self, e: AcqEvent) {
        let mut q = lock(&self.queues);
        if let AcqEvent::Link { link, state, .. } = &e {
            q.states[link.index()] = *state;
        }
        if q.events.len() < EVENT_QUEUE {
            q.events.push_back(e);
        } else {
            bump(&self.counters.events_dropped, 1);
        }
        self.notify(&mut q);
    }

    fn link_event(&self, link: LinkId, state: LinkState, reason: impl Into<String>) {
        self.push_event(AcqEvent::Link {
            host_ns: realtime_ns(),
            link,
            state,
            reason: reason.into(),
        });
    }

    fn push_samples(&self, samples: &[Sample]) {
        // The journal takes every sample, also those the owner's queue has no room for.
        self.recorder.samples(samples, &self.counters);
        let mut q = lock(&self.queues);
        let room = self.cfg.sample_queue.saturating_sub(q.samples.len());
        let keep = samples.len().min(room);
        for s in &samples[..keep] {
            q.samples.push(s);
        }
        bump(&self.counters.samples, samples.len() as u64);
        bump(
            &self.counters.samples_dropped,
            (samples.len() - keep) as u64,
        );
        self.notify(&mut q);
    }

    fn sleep(&self, d: Duration) -> bool {
        self.stop.sleep(d)
    }
}

/// Connect to the first address of `a` that answers within [`CONNECT_TIMEOUT`].
fn connect(a: &LinkAddress) -> std::result::Result<TcpStream, String> {
    let addrs = (a.host.as_str(), a.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {a}: {e}"))?;
    let mut last = format!("{a} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                // Small frames (commands, sample batches) must not wait for Nagle.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    Err(last)
}

pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

/// One link's connection: `session` connects and runs until the link fails (an error
/// with the reason) or the acquisition stops (Ok); `end` cleans up after either.
trait Session: Send {
    const LINK: LinkId;
    fn session(&mut self, sh: &Shared, backoff: &mut Backoff) -> std::result::Result<(), String>;
    fn end(&mut self, sh: &Shared, reason: &str);
}

/// The body of a link thread: connect, run, report, back off, again, until stopped. A
/// panic anywhere in a session is caught here and treated as a link failure.
fn supervise<S: Session>(sh: Arc<Shared>, mut link: S) {
    let cfg = &sh.cfg;
    let mut backoff = Backoff::new(
        Duration::from_secs_f64(cfg.reconnect_initial_s),
        Duration::from_secs_f64(cfg.reconnect_max_s),
    );
    while !sh.stop.is_set() {
        sh.link_event(S::LINK, LinkState::Connecting, "");
        let outcome = catch_unwind(AssertUnwindSafe(|| link.session(&sh, &mut backoff)));
        let reason = match outcome {
            Ok(Ok(())) => "stopped".to_owned(),
            Ok(Err(reason)) => reason,
            Err(p) => {
                bump(&sh.counters.panics, 1);
                format!("internal error (panic): {}", panic_text(p.as_ref()))
            }
        };
        if catch_unwind(AssertUnwindSafe(|| link.end(&sh, &reason))).is_err() {
            bump(&sh.counters.panics, 1);
        }
        sh.link_event(S::LINK, LinkState::Down, reason);
        sh.sleep(backoff.next_delay());
    }
}

/// The native acquisition: owns the link threads; every method may be called from any
/// thread. Dropping it stops the threads (opening the circuit first).
pub struct Acquisition {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
}

/// How long `stop` waits for the potentiostat to confirm open circuit.
const STOP_OPEN_CIRCUIT_WAIT: Duration = Duration::from_secs(1);

impl Acquisition {
    /// Validate, build the pipeline and start the threads; every sample passes `check`.
    pub fn start(cfg: AcquisitionConfig, check: Box<dyn SampleCheck>) -> Result<Self> {
        cfg.validate()?;
        let engine = match &cfg.detector {
            Some(d) => {
                let mut ec = d.engine.clone();
                ec.clock_time_scale = cfg.clock_time_scale;
                let engine = Engine::new(ec).map_err(|e| match e {
                    CoreError::Config(m) => CoreError::Config(format!("detector: {m}")),
                    other => other,
                })?;
                Some(Mutex::new(engine))
            }
            None => None,
        };
        let pot = cfg
            .potentiostat
            .as_ref()
            .map(|_| potentiostat::PotShared::new(check));
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues {
                samples: SampleColumns::default(),
                events: VecDeque::new(),
                fresh: false,
                states: [LinkState::Down; 2],
            }),
            fresh_cv: Condvar::new(),
            stop: StopFlag::default(),
            counters: LinkCounters::default(),
            kicked_ns: AtomicI64::new(0),
            epoch: Instant::now(),
            engine,
            pot,
            recorder: recording::Recorder::default(),
            cfg,
        });
        let mut threads = Vec::new();
        if let Some(d) = &shared.cfg.detector {
            let link = detector::DetectorSession::new(d.address.clone());
            threads.push(spawn("opsims-detector", &shared, link)?);
        }
        if let Some(p) = &shared.cfg.potentiostat {
            let link = potentiostat::PotSession::new(p.clone(), shared.cfg.clock_time_scale);
            match spawn("opsims-potentiostat", &shared, link) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.stop.set();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Acquisition {
            shared,
            threads: Mutex::new(threads),
            stopped: AtomicBool::new(false),
        })
    }

    /// Block until new samples, events or detector data arrived (true) or `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        let q = lock(&self.shared.queues);
        let (mut q, _) = self
            .shared
            .fresh_cv
            .wait_timeout_while(q, timeout, |q| !q.fresh)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut q.fresh)
    }

    /// The owner is alive: heartbeats go on for `liveness_s` from now.
    pub fn kick(&self) {
        let now = self.shared.mono_ns();
        self.shared.kicked_ns.store(now, Ordering::Relaxed);
    }

    /// Every queued sample, oldest first; the queue is left empty.
    pub fn take_samples(&self) -> SampleColumns {
        std::mem::take(&mut lock(&self.shared.queues).samples)
    }

    pub fn take_events(&self) -> Vec<AcqEvent> {
        lock(&self.shared.queues).events.drain(..).collect()
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.shared.counters
    }

    /// The current state of a configured link.
    pub fn link_state(&self, link: LinkId) -> Option<LinkState> {
        let configured = match link {
            LinkId::Detector => self.shared.engine.is_some(),
            LinkId::Potentiostat => self.shared.pot.is_some(),
        };
        configured.then(|| lock(&self.shared.queues).states[link.index()])
    }

    /// From now on every detector read (as fed to the engine, with its arrival time) and
    /// every batch of samples also goes to `journal`. With `fresh_cubes` the detector
    /// pipeline starts over empty at the same moment (under its lock), so feeding the
    /// journal's reads into a new engine of the same configuration rebuilds exactly the
    /// cubes and counters this one builds. Returns the journal recorded to before, if any.
    pub fn start_recording(
        &self,
        journal: Arc<JournalWriter>,
        fresh_cubes: bool,
    ) -> Result<Option<Arc<JournalWriter>>> {
        let Some(engine) = &self.shared.engine else {
            return Ok(self.shared.recorder.set(Some(journal)));
        };
        let mut engine = lock(engine);
        if fresh_cubes {
            *engine = Engine::new(engine.config().clone())?;
        }
        Ok(self.shared.recorder.set(Some(journal)))
    }

    /// Stop recording; the journal is handed back to be closed, with the digest of what
    /// the engine built from it (taken under the same lock, so no read is half recorded
    /// and none is binned after the digest). None if nothing was being recorded.
    pub fn stop_recording(&self) -> Option<(Arc<JournalWriter>, Option<EngineDigest>)> {
        let engine = self.shared.engine.as_ref().map(lock);
        let journal = self.shared.recorder.set(None)?;
        Some((journal, engine.map(|e| e.digest())))
    }

    /// The detector pipeline, locked (the detector thread waits while it is held).
    pub fn engine(&self) -> Result<MutexGuard<'_, Engine>> {
        match &self.shared.engine {
            Some(e) => Ok(lock(e)),
            None => Err(AcquisitionError::NotConfigured(
                "no detector link configured".into(),
            )),
        }
    }

    /// Copies of the clock models: the detector's, and the potentiostat's once a HELLO
    /// has told its tick.
    pub fn clocks(&self) -> Vec<(LinkId, ClockModel)> {
        let mut out = Vec::new();
        if let Some(e) = &self.shared.engine {
            out.push((LinkId::Detector, lock(e).clock().clone()));
        }
        if let Some(p) = &self.shared.pot {
            if let Some(c) = lock(&p.clock).clone() {
                out.push((LinkId::Potentiostat, c));
            }
        }
        out
    }

    fn pot(&self) -> Result<&potentiostat::PotShared> {
        self.shared.pot.as_ref().ok_or_else(|| {
            AcquisitionError::NotConfigured("no potentiostat link configured".into())
        })
    }

    /// The last HELLO of the potentiostat (None before the first connection).
    pub fn hello(&self) -> Result<Option<Hello>> {
        Ok(lock(&self.pot()?.hello).clone())
    }

    /// Send a command and wait up to `timeout` for its reply. A link that is down, a
    /// write that fails, or a command the sample check refuses is an immediate error.
    pub fn command(&self, kind: u8, payload: &[u8], timeout: Duration) -> Result<Reply> {
        if self.shared.stop.is_set() {
            return Err(AcquisitionError::LinkDown(
                "the acquisition is stopped".into(),
            ));
        }
        self.pot()?.command(&self.shared, kind, payload, timeout)
    }

    /// Run `f` on the sample check with the link writer (e.g. an operator reset), under
    /// the same lock the reader thread checks samples with.
    pub fn with_check<R>(
        &self,
        f: impl FnOnce(&mut dyn SampleCheck, &mut LinkWriter<'_>) -> R,
    ) -> Result<R> {
        let pot = self.pot()?;
        Ok(pot.with_check(&self.shared, f))
    }

    /// Open the circuit first (best effort, bounded wait), then stop and join the
    /// threads. True if open circuit was confirmed, or not asked for, or there is no
    /// potentiostat. Later calls do nothing and return true.
    pub fn stop(&self, open_circuit: bool) -> bool {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return true;
        }
        let mut confirmed = true;
        if let (true, Some(pot)) = (open_circuit, &self.shared.pot) {
            pot.with_check(&self.shared, |check, link| check.shutdown(link));
            confirmed = matches!(
                pot.command(&self.shared, wire::kind::OPEN_CIRCUIT, &[], STOP_OPEN_CIRCUIT_WAIT),
                Ok(r) if r.ok()
            );
        }
        self.shared.stop.set();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
        confirmed
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

impl Drop for Acquisition {
    fn drop(&mut self) {
        self.stop(true);
    }
}

fn spawn<S: Session + 'static>(
    name: &str,
    shared: &Arc<Shared>,
    link: S,
) -> Result<JoinHandle<()>> {
    let sh = Arc::clone(shared);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || supervise(sh, link))
        .map_err(|e| AcquisitionError::Core(CoreError::Io(e)))
}
