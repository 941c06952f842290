//! The potentiostat thread (`docs/potentiostat-link.md`), the command path shared with
//! the owner, and the seam of the safety interlock.
//!
//! Every sample passes through the [`SampleCheck`] in this thread before it is queued;
//! the check can write OPEN_CIRCUIT at once ([`LinkWriter::open_circuit_now`]) without
//! anything in Python on the path (DESIGN.md, *Safety*; the interlock in `interlock/` is
//! that check).
//!
//! Locks, always taken in this order: the check, the write half, the pending commands.
//! The owner's commands pass the check's gate and are written under the check's lock,
//! so a command cannot slip out between a trip and the trip's OPEN_CIRCUIT.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{
    bump, connect, lock, realtime_ns, AcqEvent, Acquisition, AcquisitionError, Backoff, LinkId,
    LinkState, PotentiostatLinkConfig, Result, Session, Shared,
};
use crate::clock::ClockModel;
use crate::link::potentiostat::{
    self as wire, kind, EisPoint, EisRequest, Event, FrameReader, Hello, Reply, Status, WireSample,
};

/// Longest wait for data before the thread checks stop, heartbeat and the idle hook:
/// bounds how late [`SampleCheck::idle`] sees a silent link.
const READ_POLL: Duration = Duration::from_millis(10);
const READ_BUF: usize = 1 << 16;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that does not take a command's few bytes for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Heartbeats and check commands awaiting replies (a peer that never replies cannot
/// grow this beyond the cap; the oldest are forgotten).
const INTERNAL_PENDING: usize = 1024;

/// One potentiostat sample on the host timebase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Host time of the sample (the clock model's, or the arrival time until it is fitted).
    pub host_ns: i64,
    /// When the frame that carried it was read (CLOCK_REALTIME).
    pub arrival_ns: i64,
    /// The device counter, unwrapped.
    pub tick: u64,
    pub ewe_v: f64,
    pub current_a: f64,
    pub mode: u8,
    pub flags: u8,
}

/// The check every sample passes in the reader thread before it is queued: the seam of
/// the safety interlock (`crate::interlock`). Calls are serialised under one lock shared with the
/// owner's command path, and run on the reader thread except `allow_command` (the
/// owner's thread) and `shutdown` (the thread that stops the acquisition).
pub trait SampleCheck: Send {
    /// Each sample in order, before any sample of its frame is queued.
    fn check(&mut self, sample: &Sample, link: &mut LinkWriter<'_>);
    /// The link came up (HELLO read); a latched trip can open the circuit first thing.
    fn link_up(&mut self, _hello: &Hello, _link: &mut LinkWriter<'_>) {}
    /// The link went down (nothing can be written until it is up again; the writer can
    /// still queue events).
    fn link_down(&mut self, _host_ns: i64, _reason: &str, _link: &mut LinkWriter<'_>) {}
    /// After every read or read timeout, at least every 10 ms while the link is up: for
    /// checks of silence (samples that stop arriving).
    fn idle(&mut self, _host_ns: i64, _link: &mut LinkWriter<'_>) {}
    /// The reply to a command this check wrote.
    fn reply(&mut self, _reply: &Reply, _link: &mut LinkWriter<'_>) {}
    /// Whether the owner may send `kind` now; `Err(reason)` refuses it unsent.
    fn allow_command(&mut self, _kind: u8, _payload: &[u8]) -> std::result::Result<(), String> {
        Ok(())
    }
    /// The acquisition is stopping (before the owner's own OPEN_CIRCUIT goes out).
    fn shutdown(&mut self, _link: &mut LinkWriter<'_>) {}
}

/// Passes every sample and every command: no interlock.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCheck;

impl SampleCheck for NoCheck {
    fn check(&mut self, _sample: &Sample, _link: &mut LinkWriter<'_>) {}
}

/// What a [`SampleCheck`] may do on the link from inside a callback.
pub struct LinkWriter<'a> {
    pot: &'a PotShared,
    sh: &'a Shared,
}

impl LinkWriter<'_> {
    pub fn is_up(&self) -> bool {
        lock(&self.pot.writer).is_some()
    }

    /// Write OPEN_CIRCUIT now, from this thread; returns its sequence number. The reply
    /// comes to [`SampleCheck::reply`]. An error if the link is down or the write fails.
    pub fn open_circuit_now(&mut self) -> Result<u32> {
        let (_, seq) = self
            .pot
            .send(kind::OPEN_CIRCUIT, &[], Waiter::Internal(Internal::Check))?;
        bump(&self.sh.counters.open_circuit_now, 1);
        Ok(seq)
    }

    /// Queue an event for the owner and wake its `wait` (the interlock's state changes).
    pub fn push_event(&mut self, event: AcqEvent) {
        self.sh.push_event(event);
    }
}

/// Unwraps a `bits`-wide counter into u64: each value is taken the shortest way round
/// from the previous one. After a reconnect the counter ran unseen (perhaps through many
/// wraps), so the next batch is anchored on the tick the clock model expects at its
/// arrival; that is right while the batch's delay plus the model's error stays under
/// half a wrap period.
#[derive(Debug, Clone)]
pub struct TickUnwrapper {
    bits: u8,
    last: Option<u64>,
    anchor: bool,
}

impl TickUnwrapper {
    /// `bits` in 1..=64.
    pub fn new(bits: u8) -> Self {
        TickUnwrapper {
            bits: bits.clamp(1, 64),
            last: None,
            anchor: false,
        }
    }
    pub fn bits(&self) -> u8 {
        self.bits
    }
    /// The last unwrapped tick.
    pub fn last(&self) -> Option<u64> {
        self.last
    }
    /// The counter ran unseen: anchor the next batch on an expected tick.
    pub fn resume(&mut self) {
        self.anchor = true;
    }
    pub fn needs_anchor(&self) -> bool {
        self.anchor && self.last.is_some()
    }

    fn mask(&self) -> u64 {
        if self.bits >= 64 {
            u64::MAX
        } else {
            (1u64 << self.bits) - 1
        }
    }

    /// The signed shortest step from unwrapped `from` to counter value `raw`.
    fn step(&self, from: u64, raw: u64) -> i64 {
        let d = i128::from(raw.wrapping_sub(from) & self.mask());
        let span = 1i128 << self.bits;
        // Exactly half a wrap counts forward (time goes forward); for 64 bits that step,
        // 2^63, wraps to i64::MIN, which is the same step modulo 2^64.
        let s = if 2 * d > span { d - span } else { d };
        s as i64
    }

    /// The unwrapped value of `raw` nearest to `near`.
    pub fn nearest(&self, raw: u64, near: u64) -> u64 {
        near.wrapping_add_signed(self.step(near, raw))
    }

    /// Unwrap one batch (oldest first) into `out`; returns how many steps did not go
    /// forward. `expected_newest` anchors the batch's newest tick after [`Self::resume`].
    pub fn unwrap_batch(
        &mut self,
        raw: &[u64],
        expected_newest: Option<u64>,
        out: &mut Vec<u64>,
    ) -> u64 {
        out.clear();
        let Some(&newest) = raw.last() else {
            return 0;
        };
        let before = self.last;
        match (self.last, expected_newest.filter(|_| self.anchor)) {
            (Some(_), Some(expected)) => {
                out.resize(raw.len(), 0);
                let n = raw.len();
                out[n - 1] = self.nearest(newest, expected);
                for i in (0..n - 1).rev() {
                    out[i] = self.nearest(raw[i], out[i + 1]);
                }
            }
            _ => {
                let mut prev = self.last;
                for &r in raw {
                    let v = match prev {
                        Some(p) => self.nearest(r, p),
                        None => r & self.mask(),
                    };
                    out.push(v);
                    prev = Some(v);
                }
            }
        }
        self.anchor = false;
        self.last = out.last().copied();
        let mut backwards = 0;
        let mut prev = before;
        for &v in out.iter() {
            if prev.is_some_and(|p| v <= p) {
                backwards += 1;
            }
            prev = Some(v);
        }
        backwards
    }
}

/// The writing half of the current connection.
struct WriteHalf {
    stream: TcpStream,
    next_seq: u32,
    conn: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Internal {
    Heartbeat,
    Check,
}

/// Who waits for a command's reply.
enum Waiter {
    /// A caller of `command`, blocked on `replied`.
    Caller,
    Internal(Internal),
}

type Slot = Option<std::result::Result<Reply, String>>;

#[derive(Default)]
struct Pending {
    /// Keyed by (connection, sequence): sequences restart at 0 on every connection.
    callers: HashMap<(u64, u32), Slot>,
    internal: VecDeque<(u64, u32, Internal)>,
}

/// The potentiostat state the owner shares with the reader thread.
pub(crate) struct PotShared {
    writer: Mutex<Option<WriteHalf>>,
    pending: Mutex<Pending>,
    replied: Condvar,
    check: Mutex<Box<dyn SampleCheck>>,
    pub(crate) hello: Mutex<Option<Hello>>,
    pub(crate) clock: Mutex<Option<ClockModel>>,
    connections: AtomicU64,
}

impl PotShared {
    pub(crate) fn new(check: Box<dyn SampleCheck>) -> Self {
        PotShared {
            writer: Mutex::new(None),
            pending: Mutex::new(Pending::default()),
            replied: Condvar::new(),
            check: Mutex::new(check),
            hello: Mutex::new(None),
            clock: Mutex::new(None),
            connections: AtomicU64::new(0),
        }
    }

    pub(crate) fn with_check<R>(
        &self,
        sh: &Shared,
        f: impl FnOnce(&mut dyn SampleCheck, &mut LinkWriter<'_>) -> R,
    ) -> R {
        let mut check = lock(&self.check);
        let mut link = LinkWriter { pot: self, sh };
        f(&mut **check, &mut link)
    }

    fn send(&self, kind: u8, payload: &[u8], who: Waiter) -> Result<(u64, u32)> {
        let mut w = lock(&self.writer);
        self.send_locked(&mut w, kind, payload, who)
    }

    /// Register the reply's waiter, then write the frame (so a fast reply is never
    /// missed). A failed write closes the connection: a partial frame cannot be undone.
    fn send_locked(
        &self,
        w: &mut Option<WriteHalf>,
        kind: u8,
        payload: &[u8],
        who: Waiter,
    ) -> Result<(u64, u32)> {
        let Some(half) = w.as_mut() else {
            return Err(AcquisitionError::LinkDown(
                "the potentiostat link is down".into(),
            ));
        };
        let (conn, seq) = (half.conn, half.next_seq);
        let frame = wire::encode(kind, seq, payload)?;
        {
            let mut p = lock(&self.pending);
            match who {
                Waiter::Caller => {
                    p.callers.insert((conn, seq), None);
                }
                Waiter::Internal(i) => {
                    if p.internal.len() == INTERNAL_PENDING {
                        p.internal.pop_front();
                    }
                    p.internal.push_back((conn, seq, i));
                }
            }
        }
        match half.stream.write_all(&frame) {
            Ok(()) => {
                half.next_seq = seq.wrapping_add(1);
                Ok((conn, seq))
            }
            Err(e) => {
                lock(&self.pending).callers.remove(&(conn, seq));
                let _ = half.stream.shutdown(Shutdown::Both);
                *w = None;
                Err(AcquisitionError::LinkDown(format!(
                    "writing {} to the potentiostat failed: {e}",
                    kind::name(kind)
                )))
            }
        }
    }

    pub(crate) fn command(
        &self,
        sh: &Shared,
        kind: u8,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Reply> {
        let key = {
            let mut check = lock(&self.check);
            check
                .allow_command(kind, payload)
                .map_err(AcquisitionError::Blocked)?;
            let mut w = lock(&self.writer);
            self.send_locked(&mut w, kind, payload, Waiter::Caller)?
        };
        bump(&sh.counters.commands_sent, 1);
        let deadline = Instant::now() + timeout;
        let mut p = lock(&self.pending);
        loop {
            if let Some(Some(_)) = p.callers.get(&key) {
                return match p.callers.remove(&key).flatten() {
                    Some(Ok(reply)) => Ok(reply),
                    Some(Err(why)) => Err(AcquisitionError::LinkDown(why)),
                    None => Err(AcquisitionError::LinkDown("reply lost".into())),
                };
            }
            let now = Instant::now();
            if now >= deadline {
                p.callers.remove(&key);
                bump(&sh.counters.commands_timed_out, 1);
                return Err(AcquisitionError::Timeout(format!(
                    "no reply to {} (sequence {}) within {:.3} s",
                    kind::name(kind),
                    key.1,
                    timeout.as_secs_f64()
                )));
            }
            p = self
                .replied
                .wait_timeout(p, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// A reply from the reader thread: to its caller, to the check, or counted unmatched.
    fn route_reply(&self, sh: &Shared, conn: u64, reply: Reply) {
        let key = (conn, reply.request_sequence);
        let mut p = lock(&self.pending);
        if let Some(slot @ None) = p.callers.get_mut(&key) {
            *slot = Some(Ok(reply));
            drop(p);
            self.replied.notify_all();
            return;
        }
        let internal = p.internal.iter().position(|&(c, s, _)| (c, s) == key);
        let Some(who) = internal.and_then(|i| p.internal.remove(i)) else {
            bump(&sh.counters.replies_unmatched, 1);
            return;
        };
        drop(p);
        if who.2 == Internal::Check {
            self.with_check(sh, |check, link| check.reply(&reply, link));
        }
    }

    /// The connection ended: no more writes; every waiting caller gets the reason.
    fn disconnect(&self, reason: &str) {
        if let Some(half) = lock(&self.writer).take() {
            let _ = half.stream.shutdown(Shutdown::Both);
        }
        let mut p = lock(&self.pending);
        for slot in p.callers.values_mut() {
            if slot.is_none() {
                *slot = Some(Err(format!("the potentiostat link went down: {reason}")));
            }
        }
        p.internal.clear();
        drop(p);
        self.replied.notify_all();
    }
}

/// The reader thread's own state; survives reconnects (the clock, the unwrapped ticks).
pub(crate) struct PotSession {
    cfg: PotentiostatLinkConfig,
    clock_time_scale: f64,
    reader: FrameReader,
    /// The reader's skip/corrupt counts already added to the shared counters.
    reported: (u64, u64),
    unwrap: Option<TickUnwrapper>,
    tick_fs: u64,
    conn: u64,
    connected: bool,
    up: bool,
    buf: Vec<u8>,
    wire: Vec<WireSample>,
    raw: Vec<u64>,
    ticks: Vec<u64>,
    batch: Vec<Sample>,
    /// The last host time given to a sample: a clock refit never moves samples back.
    last_host_ns: i64,
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

impl PotSession {
    pub(crate) fn new(cfg: PotentiostatLinkConfig, clock_time_scale: f64) -> Self {
        PotSession {
            cfg,
            clock_time_scale,
            reader: FrameReader::new(),
            reported: (0, 0),
            unwrap: None,
            tick_fs: 0,
            conn: 0,
            connected: false,
            up: false,
            buf: vec![0; READ_BUF],
            wire: Vec::new(),
            raw: Vec::new(),
            ticks: Vec::new(),
            batch: Vec::new(),
            last_host_ns: i64::MIN,
        }
    }

    fn report_reader(&mut self, sh: &Shared) {
        let c = &sh.counters;
        let now = (self.reader.bytes_skipped, self.reader.frames_corrupt);
        bump(&c.potentiostat_bytes_skipped, now.0 - self.reported.0);
        bump(&c.potentiostat_frames_corrupt, now.1 - self.reported.1);
        self.reported = now;
    }

    /// Read until the HELLO; Ok(None) if stopped meanwhile.
    fn read_hello(
        &mut self,
        sh: &Shared,
        stream: &mut TcpStream,
    ) -> std::result::Result<Option<Hello>, String> {
        let c = &sh.counters;
        let deadline = Instant::now() + HELLO_TIMEOUT;
        loop {
            while let Some(f) = self.reader.next_frame() {
                bump(&c.potentiostat_frames, 1);
                if f.version != wire::VERSION {
                    bump(&c.potentiostat_frames_unsupported, 1);
                } else if f.kind == kind::HELLO {
                    self.report_reader(sh);
                    let hello = Hello::unpack(&f.payload).map_err(|e| e.to_string())?;
                    hello.check().map_err(|e| e.to_string())?;
                    return Ok(Some(hello));
                } else {
                    // Without the HELLO's counter width nothing else can be read.
                    bump(&c.potentiostat_frames_unexpected, 1);
                }
            }
            self.report_reader(sh);
            if sh.stop.is_set() {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(format!("no HELLO within {} s", HELLO_TIMEOUT.as_secs()));
            }
            match stream.read(&mut self.buf) {
                Ok(0) => return Err("the potentiostat closed the connection before HELLO".into()),
                Ok(n) => {
                    bump(&c.potentiostat_bytes, n as u64);
                    self.reader.push(&self.buf[..n]);
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// Take the HELLO's clock: a new tick means a new instrument (fresh model and
    /// counter); the same one means the counter ran on while we were away.
    fn adopt(&mut self, pot: &PotShared, hello: &Hello) -> std::result::Result<(), String> {
        let mut clock = lock(&pot.clock);
        if clock.is_none() || self.tick_fs != hello.tick_fs {
            let tick_s = hello.tick_fs as f64 * 1e-15 / self.clock_time_scale;
            let model = ClockModel::new(tick_s, self.cfg.clock_window_s)
                .map_err(|e| format!("HELLO: {e}"))?;
            *clock = Some(model);
            self.tick_fs = hello.tick_fs;
            self.unwrap = None;
        }
        match &mut self.unwrap {
            Some(u) if u.bits() == hello.counter_bits => u.resume(),
            _ => self.unwrap = Some(TickUnwrapper::new(hello.counter_bits)),
        }
        Ok(())
    }

    /// The tick the clock model expects at host time `arrival`, from the last one seen.
    fn expected_tick(&self, pot: &PotShared, arrival: i64) -> Option<u64> {
        let last = self.unwrap.as_ref()?.last()?;
        let clock = lock(&pot.clock);
        let m = clock.as_ref()?;
        let ref_host = m.to_host_ns(last)?;
        let ns_per_tick = m.tick_s() * 1e9 * (1.0 + m.state().drift_ppm * 1e-6);
        let ticks = (arrival.saturating_sub(ref_host)) as f64 / ns_per_tick;
        Some(last.wrapping_add_signed(ticks.round() as i64))
    }

    /// A lone tick (impedance point, event): unwrapped near the samples' without moving them.
    fn lone_tick(&self, pot: &PotShared, raw: u64, arrival: i64) -> u64 {
        let Some(u) = &self.unwrap else { return raw };
        let near = if u.needs_anchor() {
            self.expected_tick(pot, arrival).or(u.last())
        } else {
            u.last()
        };
        match near {
            Some(n) => u.nearest(raw, n),
            None => raw,
        }
    }

    fn host_ns(pot: &PotShared, tick: u64, arrival: i64) -> i64 {
        let clock = lock(&pot.clock);
        match clock.as_ref() {
            Some(m) if m.state().fitted => m.to_host_ns(tick).unwrap_or(arrival),
            _ => arrival,
        }
    }

    fn on_samples(
        &mut self,
        sh: &Shared,
        pot: &PotShared,
        payload: &[u8],
        arrival: i64,
    ) -> crate::Result<()> {
        wire::unpack_samples(payload, &mut self.wire)?;
        if self.wire.is_empty() {
            return Ok(());
        }
        let expected = match &self.unwrap {
            Some(u) if u.needs_anchor() => self.expected_tick(pot, arrival),
            _ => None,
        };
        self.raw.clear();
        self.raw.extend(self.wire.iter().map(|s| s.tick));
        let u = self.unwrap.get_or_insert_with(|| TickUnwrapper::new(64));
        let backwards = u.unwrap_batch(&self.raw, expected, &mut self.ticks);
        bump(&sh.counters.samples_tick_backwards, backwards);
        self.batch.clear();
        {
            let mut clock = lock(&pot.clock);
            let newest = self.ticks[self.ticks.len() - 1];
            let model = clock.as_mut();
            let fitted = match model {
                Some(m) => {
                    m.update(newest, arrival);
                    m.state().fitted.then_some(&*m)
                }
                None => None,
            };
            for (w, &tick) in self.wire.iter().zip(&self.ticks) {
                let modelled = fitted.and_then(|m| m.to_host_ns(tick)).unwrap_or(arrival);
                // Cycle graphs are plotted against host time: keep it non-decreasing when
                // the first fit or a refit would put a sample before its predecessor.
                let host_ns = modelled.max(self.last_host_ns);
                self.last_host_ns = host_ns;
                self.batch.push(Sample {
                    host_ns,
                    arrival_ns: arrival,
                    tick,
                    ewe_v: w.ewe_v,
                    current_a: w.current_a,
                    mode: w.mode,
                    flags: w.flags,
                });
            }
        }
        let batch = &self.batch;
        pot.with_check(sh, |check, link| {
            for s in batch {
                check.check(s, link);
            }
        });
        sh.push_samples(&self.batch);
        Ok(())
    }

    /// Every whole frame buffered; the reader's damage counts are published with each,
    /// so they are never behind what is queued.
    fn drain(&mut self, sh: &Shared, pot: &PotShared, arrival: i64) {
        while let Some(f) = self.reader.next_frame() {
            self.report_reader(sh);
            self.on_frame(sh, pot, f, arrival);
        }
        self.report_reader(sh);
    }

    fn on_frame(&mut self, sh: &Shared, pot: &PotShared, f: wire::Frame, arrival: i64) {
        let c = &sh.counters;
        bump(&c.potentiostat_frames, 1);
        if f.version != wire::VERSION {
            bump(&c.potentiostat_frames_unsupported, 1);
            return;
        }
        let parsed: crate::Result<()> = match f.kind {
            kind::REPLY => Reply::unpack(&f.payload).map(|r| pot.route_reply(sh, self.conn, r)),
            kind::SAMPLES => self.on_samples(sh, pot, &f.payload, arrival),
            kind::EIS_POINT => EisPoint::unpack(&f.payload).map(|point| {
                let tick = self.lone_tick(pot, point.tick, arrival);
                sh.push_event(AcqEvent::EisPoint {
                    host_ns: Self::host_ns(pot, tick, arrival),
                    tick,
                    point,
                });
            }),
            kind::EVENT => Event::unpack(&f.payload).map(|e| {
                let tick = self.lone_tick(pot, e.tick, arrival);
                sh.push_event(AcqEvent::Instrument {
                    host_ns: Self::host_ns(pot, tick, arrival),
                    tick,
                    code: e.code,
                    message: e.message,
                });
            }),
            _ => {
                bump(&c.potentiostat_frames_unexpected, 1);
                Ok(())
            }
        };
        if parsed.is_err() {
            bump(&c.potentiostat_frames_malformed, 1);
        }
    }
}

impl Session for PotSession {
    const LINK: LinkId = LinkId::Potentiostat;

    fn session(&mut self, sh: &Shared, backoff: &mut Backoff) -> std::result::Result<(), String> {
        let pot = sh.pot.as_ref().ok_or("no potentiostat state")?;
        let c = &sh.counters;
        self.up = false;
        let mut stream = connect(&self.cfg.address)
            .inspect_err(|_| bump(&c.potentiostat_connect_failures, 1))?;
        self.connected = true;
        bump(&c.potentiostat_connects, 1);
        stream
            .set_read_timeout(Some(READ_POLL))
            .map_err(|e| format!("cannot set a read timeout: {e}"))?;
        let writer = stream
            .try_clone()
            .and_then(|w| w.set_write_timeout(Some(WRITE_TIMEOUT)).map(|()| w))
            .map_err(|e| format!("cannot share the socket for writing: {e}"))?;
        self.reader.clear();
        self.reported = (self.reader.bytes_skipped, self.reader.frames_corrupt);
        let Some(hello) = self.read_hello(sh, &mut stream)? else {
            return Ok(());
        };
        self.adopt(pot, &hello)?;
        self.conn = pot.connections.fetch_add(1, Ordering::Relaxed) + 1;
        *lock(&pot.writer) = Some(WriteHalf {
            stream: writer,
            next_seq: 0,
            conn: self.conn,
        });
        *lock(&pot.hello) = Some(hello.clone());
        self.up = true;
        backoff.reset();
        sh.link_event(
            LinkId::Potentiostat,
            LinkState::Up,
            format!("connected to {} ({})", self.cfg.address, hello.name),
        );
        pot.with_check(sh, |check, link| check.link_up(&hello, link));
        // Frames that came in the same read as the HELLO.
        self.drain(sh, pot, realtime_ns());
        let heartbeat = Duration::from_secs_f64(sh.cfg.heartbeat_s);
        let mut last_beat = Instant::now();
        loop {
            if sh.stop.is_set() {
                return Ok(());
            }
            match stream.read(&mut self.buf) {
                Ok(0) => return Err("the potentiostat closed the connection".into()),
                Ok(n) => {
                    let arrival = realtime_ns();
                    bump(&c.potentiostat_bytes, n as u64);
                    self.reader.push(&self.buf[..n]);
                    self.drain(sh, pot, arrival);
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
            if last_beat.elapsed() >= heartbeat {
                last_beat = Instant::now();
                // The owner's liveness gates the heartbeat: a hung daemon lets the
                // instrument's watchdog open the circuit (the second safety line).
                if sh.owner_alive() {
                    pot.send(kind::HEARTBEAT, &[], Waiter::Internal(Internal::Heartbeat))
                        .map_err(|e| e.to_string())?;
                    bump(&c.heartbeats_sent, 1);
                } else {
                    bump(&c.heartbeats_withheld, 1);
                }
            }
            pot.with_check(sh, |check, link| check.idle(realtime_ns(), link));
        }
    }

    fn end(&mut self, sh: &Shared, reason: &str) {
        let Some(pot) = sh.pot.as_ref() else { return };
        pot.disconnect(reason);
        if std::mem::take(&mut self.connected) {
            bump(&sh.counters.potentiostat_disconnects, 1);
        }
        if std::mem::take(&mut self.up) {
            pot.with_check(sh, |check, link| {
                check.link_down(realtime_ns(), reason, link)
            });
        }
    }
}

/// Typed commands; a reply that is not `ok` is returned, not raised, so the caller sees
/// the instrument's code and message.
impl Acquisition {
    /// Galvanostatic at `amps`; with `limit_v` the 16-byte form, so the instrument itself
    /// ends the step at the first sample with |Ewe| ≥ `limit_v` (`EVENT limit_reached`).
    /// The instrument judges the limit (`out_of_range` unless finite and ≥ 0; 0 is none).
    pub fn set_current(&self, amps: f64, limit_v: Option<f64>, timeout: Duration) -> Result<Reply> {
        self.command(
            kind::SET_CURRENT,
            &wire::pack_current(amps, limit_v),
            timeout,
        )
    }

    pub fn open_circuit(&self, timeout: Duration) -> Result<Reply> {
        self.command(kind::OPEN_CIRCUIT, &[], timeout)
    }

    pub fn start_eis(&self, request: &EisRequest, timeout: Duration) -> Result<Reply> {
        self.command(kind::START_EIS, &request.pack(), timeout)
    }

    /// The reply, and its STATUS body when the reply is ok.
    pub fn read_status(&self, timeout: Duration) -> Result<(Reply, Option<Status>)> {
        let reply = self.command(kind::READ_STATUS, &[], timeout)?;
        if !reply.ok() {
            return Ok((reply, None));
        }
        let status = Status::unpack(&reply.body)?;
        Ok((reply, Some(status)))
    }
}
