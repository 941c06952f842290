//! Acquisition against fake instruments on loopback: real sockets, real threads.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::cube::BudgetPolicy;
use crate::link::frame::{encode as encode_detector, FrameHeader};
use crate::link::potentiostat::{
    self as wire, kind, pack_samples, reply_code, Frame, FrameReader, WireSample,
};
use crate::link::tttr::RecordType;
use crate::raster::{FrameMarkerAt, MarkerMasks, Polarity, RasterConfig, Switching};

const T: Duration = Duration::from_secs(5);

/// The instrument end of one potentiostat connection.
struct Peer {
    stream: TcpStream,
    reader: FrameReader,
    seq: u32,
}

fn accept(l: &TcpListener) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + T;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_nodelay(true).unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("no connection: {e}"),
        }
    }
}

impl Peer {
    fn accept(l: &TcpListener, counter_bits: u8) -> Peer {
        let mut p = Peer {
            stream: accept(l),
            reader: FrameReader::new(),
            seq: 0,
        };
        let hello = wire::Hello {
            protocol: 1,
            counter_bits,
            tick_fs: 1_000_000_000,
            sample_period_ticks: 10_000,
            compliance_a: 1e-5,
            name: "fake".into(),
        };
        p.send(kind::HELLO, &hello.pack());
        p
    }

    fn send(&mut self, k: u8, payload: &[u8]) {
        let f = wire::encode(k, self.seq, payload).unwrap();
        self.seq += 1;
        self.stream.write_all(&f).unwrap();
    }

    fn samples(&mut self, ticks: &[u64], ewe_v: f64) {
        let s: Vec<WireSample> = ticks
            .iter()
            .map(|&tick| WireSample {
                tick,
                ewe_v,
                current_a: -4e-8,
                mode: wire::mode::GALVANOSTATIC,
                flags: 0,
            })
            .collect();
        self.send(kind::SAMPLES, &pack_samples(&s).unwrap());
    }

    fn reply(&mut self, to: u32, code: u16, message: &str) {
        let r = wire::Reply {
            request_sequence: to,
            code,
            message: message.into(),
            body: vec![],
        };
        self.send(kind::REPLY, &r.pack());
    }

    /// The next frame from the host within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.reader.next_frame() {
                return Some(f);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next frame of `k`, answering heartbeats on the way.
    fn next_of(&mut self, k: u8, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.next(deadline.checked_duration_since(Instant::now())?)?;
            if f.kind == k {
                return Some(f);
            }
            if f.kind == kind::HEARTBEAT {
                self.reply(f.sequence, reply_code::OK, "");
            }
        }
    }
}

fn pot_config(port: u16) -> AcquisitionConfig {
    AcquisitionConfig {
        potentiostat: Some(PotentiostatLinkConfig {
            address: LinkAddress {
                host: "127.0.0.1".into(),
                port,
            },
            clock_window_s: 30.0,
        }),
        reconnect_initial_s: 0.02,
        reconnect_max_s: 0.2,
        ..AcquisitionConfig::default()
    }
}

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Events until one matches `want` (all of them, the match last), or panic after `T`.
fn events_until(acq: &Acquisition, want: impl Fn(&AcqEvent) -> bool) -> Vec<AcqEvent> {
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        acq.wait(Duration::from_millis(20));
        for e in acq.take_events() {
            let hit = want(&e);
            seen.push(e);
            if hit {
                return seen;
            }
        }
    }
    panic!("event not seen; got {seen:#?}");
}

fn is_link(e: &AcqEvent, l: LinkId, s: LinkState) -> bool {
    matches!(e, AcqEvent::Link { link, state, .. } if *link == l && *state == s)
}

fn samples_until(acq: &Acquisition, n: usize) -> SampleColumns {
    let deadline = Instant::now() + T;
    let mut all = SampleColumns::default();
    while all.len() < n && Instant::now() < deadline {
        acq.wait(Duration::from_millis(20));
        let more = acq.take_samples();
        all.host_ns.extend(more.host_ns);
        all.tick.extend(more.tick);
        all.ewe_v.extend(more.ewe_v);
        all.current_a.extend(more.current_a);
        all.mode.extend(more.mode);
        all.flags.extend(more.flags);
    }
    all
}

fn counter(acq: &Acquisition, name: &str) -> u64 {
    acq.counters()
        .named()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn backoff_doubles_to_the_cap_and_resets() {
    let ms = Duration::from_millis;
    let mut b = Backoff::new(ms(100), ms(1000));
    let got: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
    assert_eq!(
        got,
        [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
    );
    b.reset();
    assert_eq!(b.next_delay(), ms(100));
}

#[test]
fn config_errors_name_the_key() {
    let bad = |f: &dyn Fn(&mut AcquisitionConfig), key: &str| {
        let mut cfg = pot_config(7402);
        f(&mut cfg);
        match cfg.validate() {
            Err(CoreError::Config(m)) => assert!(m.starts_with(key), "{m}"),
            other => panic!("{key}: {other:?}"),
        }
    };
    bad(&|c| c.clock_time_scale = 0.0, "clock_time_scale");
    bad(&|c| c.clock_time_scale = f64::NAN, "clock_time_scale");
    bad(&|c| c.reconnect_initial_s = -1.0, "reconnect_initial_s");
    bad(&|c| c.reconnect_max_s = 0.001, "reconnect_max_s");
    bad(&|c| c.heartbeat_s = 0.0, "heartbeat_s");
    bad(&|c| c.liveness_s = f64::INFINITY, "liveness_s");
    bad(&|c| c.sample_queue = 0, "sample_queue");
    bad(
        &|c| c.potentiostat.as_mut().unwrap().address.port = 0,
        "potentiostat.port",
    );
    bad(
        &|c| c.potentiostat.as_mut().unwrap().address.host.clear(),
        "potentiostat.host",
    );
    bad(
        &|c| c.potentiostat.as_mut().unwrap().clock_window_s = 0.0,
        "potentiostat.clock_window_s",
    );
    assert!(pot_config(1).validate().is_ok());
}

#[test]
fn ticks_unwrap_across_wraps() {
    // 16 bits, 10 000 ticks per sample: a wrap every 6.5 samples.
    let mut u = TickUnwrapper::new(16);
    let truth: Vec<u64> = (0..200u64).map(|i| 60_000 + i * 10_000).collect();
    let raw: Vec<u64> = truth.iter().map(|t| t & 0xFFFF).collect();
    let mut got = Vec::new();
    let mut out = Vec::new();
    for chunk in raw.chunks(7) {
        assert_eq!(u.unwrap_batch(chunk, None, &mut out), 0);
        got.extend_from_slice(&out);
    }
    assert_eq!(got, truth); // the first value is below one wrap, so the offset is 0
                            // A step back is unwrapped as one (not as a wrap forward) and counted.
    let last = *truth.last().unwrap();
    let back = (last - 5) & 0xFFFF;
    assert_eq!(u.unwrap_batch(&[back], None, &mut out), 1);
    assert_eq!(out, [last - 5]);

    // 64 bits wrap at u64::MAX; 63 and 1 bits are not special either.
    let mut u = TickUnwrapper::new(64);
    u.unwrap_batch(&[u64::MAX - 1, u64::MAX, 0, 1], None, &mut out);
    assert_eq!(out, [u64::MAX - 1, u64::MAX, 0, 1]); // wrapping u64: still one step each
    let mut u = TickUnwrapper::new(63);
    let m = (1u64 << 63) - 1;
    u.unwrap_batch(&[m - 1, m, 0, 1], None, &mut out);
    assert_eq!(out, [m - 1, m, m + 1, m + 2]);
    let mut u = TickUnwrapper::new(1);
    u.unwrap_batch(&[0, 1, 0, 1], None, &mut out);
    assert_eq!(out, [0, 1, 2, 3]);
}

#[test]
fn first_batch_after_a_reconnect_is_anchored_on_the_expected_tick() {
    let mut u = TickUnwrapper::new(16);
    let mut out = Vec::new();
    u.unwrap_batch(&[100, 10_100], None, &mut out);
    assert_eq!(out, [100, 10_100]);
    // Unseen for 7.3 wraps: the counter alone cannot say how many.
    let truth = [10_100 + 478_000u64, 10_100 + 488_000, 10_100 + 498_000];
    let raw: Vec<u64> = truth.iter().map(|t| t & 0xFFFF).collect();
    u.resume();
    assert!(u.needs_anchor());
    // The expectation may be off by almost half a wrap.
    for err in [-32_000i64, 0, 32_000] {
        let mut v = u.clone();
        let expected = truth[2].wrapping_add_signed(err);
        assert_eq!(v.unwrap_batch(&raw, Some(expected), &mut out), 0);
        assert_eq!(out, truth, "error {err}");
    }
    // Without an anchor the batch is unwrapped from the last tick: off by whole wraps.
    u.unwrap_batch(&raw, None, &mut out);
    assert_ne!(out, truth);
    assert_eq!((out[0] as i64 - truth[0] as i64).rem_euclid(1 << 16), 0);
}

#[test]
fn samples_are_unwrapped_stamped_and_queued() {
    let (l, port) = listener();
    let acq = Acquisition::start(pot_config(port), Box::new(NoCheck)).unwrap();
    let mut peer = Peer::accept(&l, 16);
    events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Up));
    let hello = acq.hello().unwrap().unwrap();
    assert_eq!((hello.counter_bits, hello.name.as_str()), (16, "fake"));
    let truth: Vec<u64> = (0..40u64).map(|i| 65_000 + i * 10_000).collect();
    let before = realtime_ns();
    for chunk in truth.chunks(4) {
        let raw: Vec<u64> = chunk.iter().map(|t| t & 0xFFFF).collect();
        peer.samples(&raw, 0.05);
    }
    let got = samples_until(&acq, truth.len());
    let after = realtime_ns();
    assert_eq!(got.tick, truth);
    // Before the drift is fitted, each sample carries its frame's arrival time.
    assert!(got.host_ns.iter().all(|&h| before <= h && h <= after));
    assert!(got.host_ns.windows(2).all(|w| w[0] <= w[1]));
    assert!(got.ewe_v.iter().all(|&v| v == 0.05));
    assert!(got.mode.iter().all(|&m| m == wire::mode::GALVANOSTATIC));
    assert_eq!(counter(&acq, "samples"), 40);
    let clocks = acq.clocks();
    assert_eq!(clocks.len(), 1);
    assert_eq!(clocks[0].0, LinkId::Potentiostat);
    assert!(clocks[0].1.state().points > 0);
    // A malformed SAMPLES frame and an unexpected kind are counted, not fatal.
    peer.send(kind::SAMPLES, &[3, 0, 0, 0, 0, 0, 0, 0]);
    peer.send(kind::SET_CURRENT, &wire::pack_current(1.0, None));
    peer.stream
        .write_all(&wire::encode_version(2, kind::EVENT, 99, &[]).unwrap())
        .unwrap();
    peer.stream.write_all(b"garbage").unwrap();
    peer.samples(&[(65_000 + 40 * 10_000) & 0xFFFF], 0.05);
    let more = samples_until(&acq, 1);
    assert_eq!(more.tick, [65_000 + 40 * 10_000]);
    assert_eq!(counter(&acq, "potentiostat_frames_malformed"), 1);
    assert_eq!(counter(&acq, "potentiostat_frames_unexpected"), 1);
    assert_eq!(counter(&acq, "potentiostat_frames_unsupported"), 1);
    assert_eq!(counter(&acq, "potentiostat_bytes_skipped"), 7);
    assert_eq!(acq.link_state(LinkId::Potentiostat), Some(LinkState::Up));
    assert_eq!(acq.link_state(LinkId::Detector), None);
}

#[test]
fn sample_queue_overflow_is_counted() {
    let (l, port) = listener();
    let mut cfg = pot_config(port);
    cfg.sample_queue = 10;
    let acq = Acquisition::start(cfg, Box::new(NoCheck)).unwrap();
    let mut peer = Peer::accept(&l, 32);
    peer.samples(&(0..25).map(|i| i * 100).collect::<Vec<_>>(), 0.0);
    let deadline = Instant::now() + T;
    while counter(&acq, "samples") < 25 && Instant::now() < deadline {
        acq.wait(Duration::from_millis(10));
    }
    let got = acq.take_samples();
    assert_eq!(got.tick, (0..10).map(|i| i * 100).collect::<Vec<_>>());
    assert_eq!(counter(&acq, "samples_dropped"), 15);
}

#[test]
fn commands_get_their_own_replies_time_out_and_fail_fast_when_down() {
    let (l, port) = listener();
    let acq = Arc::new(Acquisition::start(pot_config(port), Box::new(NoCheck)).unwrap());
    // Down: an immediate error, not a wait.
    let t0 = Instant::now();
    let r = acq.command(kind::READ_STATUS, &[], T);
    assert!(matches!(r, Err(AcquisitionError::LinkDown(_))), "{r:?}");
    assert!(t0.elapsed() < Duration::from_millis(500));

    let mut peer = Peer::accept(&l, 32);
    events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Up));
    // Two callers on two threads, one with a voltage limit (the 16-byte form); the
    // replies come back in the opposite order.
    let callers: Vec<_> = [(1e-8, None), (2e-8, Some(5.0))]
        .into_iter()
        .map(|(amps, limit_v)| {
            let acq = Arc::clone(&acq);
            std::thread::spawn(move || acq.set_current(amps, limit_v, T))
        })
        .collect();
    let a = peer.next_of(kind::SET_CURRENT, T).unwrap();
    let b = peer.next_of(kind::SET_CURRENT, T).unwrap();
    assert_ne!(a.sequence, b.sequence);
    for f in [&b, &a] {
        let (amps, limit_v) = wire::unpack_current(&f.payload).unwrap();
        let n = f.payload.len();
        peer.reply(
            f.sequence,
            reply_code::OK,
            &format!("{amps:e} {limit_v:?} {n}"),
        );
    }
    let mut messages: Vec<String> = callers
        .into_iter()
        .map(|t| t.join().unwrap().unwrap().message)
        .collect();
    messages.sort();
    assert_eq!(messages, ["1e-8 None 8", "2e-8 Some(5.0) 16"]);

    // No reply: a timeout error; the late reply is counted, and the next command works.
    let t0 = Instant::now();
    let r = acq.command(kind::READ_STATUS, &[], Duration::from_millis(100));
    assert!(matches!(r, Err(AcquisitionError::Timeout(_))), "{r:?}");
    assert!(t0.elapsed() < Duration::from_millis(600));
    let late = peer.next_of(kind::READ_STATUS, T).unwrap();
    peer.reply(late.sequence, reply_code::OK, "late");
    let acq2 = Arc::clone(&acq);
    let next = std::thread::spawn(move || acq2.open_circuit(T));
    let f = peer.next_of(kind::OPEN_CIRCUIT, T).unwrap();
    peer.reply(f.sequence, reply_code::BUSY, "busy");
    let reply = next.join().unwrap().unwrap();
    assert_eq!(
        (reply.code, reply.message.as_str()),
        (reply_code::BUSY, "busy")
    );
    assert_eq!(counter(&acq, "replies_unmatched"), 1);
    assert_eq!(counter(&acq, "commands_timed_out"), 1);

    // The link drops while a caller waits: it hears so at once.
    let acq3 = Arc::clone(&acq);
    let waiting = std::thread::spawn(move || acq3.command(kind::READ_STATUS, &[], T));
    peer.next_of(kind::READ_STATUS, T).unwrap();
    let t0 = Instant::now();
    drop(peer);
    let r = waiting.join().unwrap();
    assert!(matches!(r, Err(AcquisitionError::LinkDown(_))), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(1));
}

/// A test check (not an interlock): opens the circuit for any sample above 10 V.
struct Above10V {
    trips: Arc<AtomicUsize>,
    replies: Arc<Mutex<Vec<wire::Reply>>>,
    seen_ticks: Arc<Mutex<Vec<u64>>>,
}

impl SampleCheck for Above10V {
    fn check(&mut self, sample: &Sample, link: &mut LinkWriter<'_>) {
        self.seen_ticks.lock().unwrap().push(sample.tick);
        if sample.ewe_v > 10.0 {
            self.trips.fetch_add(1, Ordering::SeqCst);
            link.open_circuit_now().unwrap();
        }
    }
    fn reply(&mut self, reply: &wire::Reply, _link: &mut LinkWriter<'_>) {
        self.replies.lock().unwrap().push(reply.clone());
    }
    fn allow_command(&mut self, kind: u8, _payload: &[u8]) -> std::result::Result<(), String> {
        if kind == wire::kind::SET_CURRENT && self.trips.load(Ordering::SeqCst) > 0 {
            return Err("tripped".into());
        }
        Ok(())
    }
}

#[test]
fn the_sample_check_writes_open_circuit_from_the_reader_thread() {
    let (l, port) = listener();
    let trips = Arc::new(AtomicUsize::new(0));
    let replies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let check = Above10V {
        trips: Arc::clone(&trips),
        replies: Arc::clone(&replies),
        seen_ticks: Arc::clone(&seen),
    };
    let acq = Acquisition::start(pot_config(port), Box::new(check)).unwrap();
    let mut peer = Peer::accept(&l, 32);
    events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Up));
    peer.samples(&[100, 200], 5.0);
    peer.samples(&[300], 12.0);
    let sent = Instant::now();
    // Nobody calls into the acquisition meanwhile: the reader thread alone answers.
    let oc = peer.next_of(kind::OPEN_CIRCUIT, T).expect("OPEN_CIRCUIT");
    let latency = sent.elapsed();
    assert!(latency < Duration::from_millis(200), "{latency:?}");
    assert_eq!(trips.load(Ordering::SeqCst), 1);
    peer.reply(oc.sequence, reply_code::OK, "opened");
    let deadline = Instant::now() + T;
    while replies.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(replies.lock().unwrap()[0].message, "opened");
    assert_eq!(counter(&acq, "open_circuit_now"), 1);
    assert_eq!(counter(&acq, "replies_unmatched"), 0);
    // Every sample went through the check, and all of them are queued.
    assert_eq!(*seen.lock().unwrap(), [100, 200, 300]);
    assert_eq!(samples_until(&acq, 3).tick, [100, 200, 300]);
    // The gate refuses unsent.
    let r = acq.set_current(1e-8, None, T);
    assert!(
        matches!(r, Err(AcquisitionError::Blocked(ref m)) if m == "tripped"),
        "{r:?}"
    );
}

#[test]
fn heartbeats_flow_only_while_the_owner_kicks() {
    let (l, port) = listener();
    let mut cfg = pot_config(port);
    cfg.heartbeat_s = 0.02;
    cfg.liveness_s = 0.15;
    let acq = Acquisition::start(cfg, Box::new(NoCheck)).unwrap();
    let mut peer = Peer::accept(&l, 32);
    let count_beats = |peer: &mut Peer, acq: &Acquisition, secs: f64, kick: bool| {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut beats = 0;
        while Instant::now() < deadline {
            if kick {
                acq.kick();
            }
            if let Some(f) = peer.next(Duration::from_millis(10)) {
                assert_eq!(f.kind, kind::HEARTBEAT);
                peer.reply(f.sequence, reply_code::OK, "");
                beats += 1;
            }
        }
        beats
    };
    let kicked = count_beats(&mut peer, &acq, 0.5, true);
    assert!(kicked >= 10, "{kicked}");
    // Unkicked: beats stop once liveness_s has passed since the last kick.
    count_beats(&mut peer, &acq, 0.3, false);
    let quiet = count_beats(&mut peer, &acq, 0.3, false);
    assert_eq!(quiet, 0);
    assert!(counter(&acq, "heartbeats_withheld") > 0);
    // And come back with the next kick.
    assert!(count_beats(&mut peer, &acq, 0.2, true) > 0);
    assert_eq!(counter(&acq, "replies_unmatched"), 0);
}

#[test]
fn link_loss_reconnects_with_backoff_and_reports_each_state() {
    let (l, port) = listener();
    let acq = Acquisition::start(pot_config(port), Box::new(NoCheck)).unwrap();
    let mut peer = Peer::accept(&l, 32);
    events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Up));
    peer.samples(&[1_000, 11_000], 0.0);
    assert_eq!(samples_until(&acq, 2).tick, [1_000, 11_000]);
    drop(peer);
    let seen = events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Down));
    match seen.last() {
        Some(AcqEvent::Link { reason, .. }) => assert!(reason.contains("closed"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut peer = Peer::accept(&l, 32);
    let seen = events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Up));
    assert!(is_link(
        &seen[0],
        LinkId::Potentiostat,
        LinkState::Connecting
    ));
    // The first batch of the new connection is anchored on the tick expected now.
    peer.samples(&[21_000], 0.0);
    assert_eq!(samples_until(&acq, 1).tick, [21_000]);
    assert_eq!(counter(&acq, "potentiostat_connects"), 2);
    assert_eq!(counter(&acq, "potentiostat_disconnects"), 1);
    // Nobody listening: failures back off and are counted.
    drop(peer);
    drop(l);
    let deadline = Instant::now() + T;
    while counter(&acq, "potentiostat_connect_failures") < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(counter(&acq, "potentiostat_connect_failures") >= 3);
    assert!(!acq.stop(true), "nobody to confirm open circuit");
}

/// A check that panics on its first sample.
struct Panics(bool);

impl SampleCheck for Panics {
    fn check(&mut self, _sample: &Sample, _link: &mut LinkWriter<'_>) {
        if !std::mem::replace(&mut self.0, true) {
            panic!("check exploded");
        }
    }
}

#[test]
fn a_panic_in_the_thread_is_reported_and_the_link_comes_back() {
    let (l, port) = listener();
    let acq = Acquisition::start(pot_config(port), Box::new(Panics(false))).unwrap();
    let mut peer = Peer::accept(&l, 32);
    peer.samples(&[5], 0.0);
    let seen = events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Down));
    match seen.last() {
        Some(AcqEvent::Link { reason, .. }) => {
            assert!(
                reason.contains("panic") && reason.contains("check exploded"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(counter(&acq, "panics"), 1);
    let mut peer = Peer::accept(&l, 32);
    events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Up));
    peer.samples(&[10], 0.0);
    assert_eq!(samples_until(&acq, 1).tick, [10]);
}

#[test]
fn stop_opens_the_circuit_first() {
    let (l, port) = listener();
    let acq = Acquisition::start(pot_config(port), Box::new(NoCheck)).unwrap();
    let mut peer = Peer::accept(&l, 32);
    events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Up));
    let answer = std::thread::spawn(move || {
        let f = peer.next_of(kind::OPEN_CIRCUIT, T).unwrap();
        peer.reply(f.sequence, reply_code::OK, "");
        peer
    });
    assert!(acq.stop(true));
    let _peer = answer.join().unwrap();
    assert!(acq.is_stopped());
    let r = acq.command(kind::HEARTBEAT, &[], T);
    assert!(matches!(r, Err(AcquisitionError::LinkDown(_))), "{r:?}");
    let last = acq.take_events().pop();
    assert!(
        matches!(&last, Some(AcqEvent::Link { state: LinkState::Down, reason, .. }) if reason == "stopped"),
        "{last:?}"
    );
}

#[test]
fn the_interlocks_step_stop_opens_the_circuit_from_the_reader_thread() {
    use crate::interlock::{InterlockCheck, InterlockConfig, SafetyState};
    let (l, port) = listener();
    let interlock = InterlockCheck::new(InterlockConfig::default()).unwrap();
    let acq = Acquisition::start(pot_config(port), Box::new(interlock.clone())).unwrap();
    let mut peer = Peer::accept(&l, 32);
    events_until(&acq, |e| is_link(e, LinkId::Potentiostat, LinkState::Up));
    interlock.lock().arm_stop(5.0).unwrap();
    peer.samples(&[100, 200], 4.9);
    peer.samples(&[300, 400], -6.0);
    let sent = Instant::now();
    // Nobody calls into the acquisition meanwhile: the reader thread alone stops the step.
    let oc = peer.next_of(kind::OPEN_CIRCUIT, T).expect("OPEN_CIRCUIT");
    assert!(
        sent.elapsed() < Duration::from_millis(200),
        "{:?}",
        sent.elapsed()
    );
    peer.reply(oc.sequence, reply_code::OK, "opened");
    let seen = events_until(&acq, |e| matches!(e, AcqEvent::StepStop { .. }));
    let stop = seen.last().unwrap();
    assert!(
        matches!(stop, AcqEvent::StepStop { tick: 300, ewe_v, limit_v, .. }
                 if *ewe_v == -6.0 && *limit_v == 5.0),
        "{stop:?}"
    );
    let queued = samples_until(&acq, 4);
    assert_eq!(queued.tick, [100, 200, 300, 400]);
    let AcqEvent::StepStop { host_ns, .. } = stop else {
        unreachable!()
    };
    assert_eq!(
        *host_ns, queued.host_ns[2],
        "the stopping sample's host time"
    );
    // Once: the sample after it, beyond the limit too, wrote nothing more.
    assert!(peer
        .next_of(kind::OPEN_CIRCUIT, Duration::from_millis(200))
        .is_none());
    assert_eq!(counter(&acq, "open_circuit_now"), 1);
    let st = interlock.lock().status();
    assert_eq!(st.state, SafetyState::Armed);
    assert!(st.trip.is_none() && !st.open_circuit_acknowledged);
    assert_eq!((st.step_stop_v, st.step_stops), (None, 1));
    // Armed again, a sample beyond the safety limit too is a trip, not a stop.
    interlock.lock().arm_stop(5.0).unwrap();
    peer.samples(&[500], 12.0);
    peer.next_of(kind::OPEN_CIRCUIT, T)
        .expect("the trip's OPEN_CIRCUIT");
    let seen = events_until(&acq, |e| matches!(e, AcqEvent::Safety { .. }));
    assert!(
        matches!(
            seen.last(),
            Some(AcqEvent::Safety {
                state: "tripped",
                reason: "ewe_high",
                ..
            })
        ),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|e| matches!(e, AcqEvent::StepStop { .. })));
    let st = interlock.lock().status();
    assert_eq!((st.step_stop_v, st.step_stops), (None, 1));
    acq.stop(false);
}

fn engine_config() -> EngineConfig {
    let species = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
    EngineConfig {
        record_type: RecordType::GenericT3,
        tick_s: 80e-9,
        raster: RasterConfig {
            nx: 4,
            ny: 2,
            dwell_ticks: 10,
            line_settle_ticks: 0,
            flyback_ticks: 10,
            line_tolerance_ticks: 0,
            frames_per_slice: 1,
            markers: MarkerMasks {
                frame: 4,
                line_start: 1,
                line_stop: 2,
                mass_switch: 0,
            },
            frame_marker_at: FrameMarkerAt::Start,
            polarities: vec![Polarity {
                name: "positive".into(),
                channels: vec![0],
                species: species(&["Na+"]),
                switching: Switching::PerFrame,
                settle_ticks: 0,
            }],
        },
        memory_budget_bytes: 1 << 20,
        budget_policy: BudgetPolicy::Refuse,
        clock_window_s: 30.0,
        clock_time_scale: 1.0,
    }
}

/// A detector link only, to `localhost:port`, with `engine_config()`.
fn detector_config(port: u16) -> AcquisitionConfig {
    AcquisitionConfig {
        detector: Some(DetectorLinkConfig {
            address: LinkAddress {
                host: "localhost".into(),
                port,
            },
            engine: engine_config(),
        }),
        ..AcquisitionConfig::default()
    }
}

fn detector_frame(sequence: u64) -> Vec<u8> {
    let h = FrameHeader {
        sequence,
        record_type: RecordType::GenericT3.code(),
        tick_fs: 80_000_000,
        sent_tick: sequence * 1000,
        frame_mask: 4,
        line_start_mask: 1,
        line_stop_mask: 2,
        ..FrameHeader::default()
    };
    encode_detector(&h, &[])
}

#[test]
fn the_detector_link_feeds_the_engine_across_reconnects() {
    let (l, port) = listener();
    let cfg = AcquisitionConfig {
        reconnect_initial_s: 0.02,
        reconnect_max_s: 0.2,
        clock_time_scale: 4.0,
        ..detector_config(port)
    };
    let acq = Acquisition::start(cfg, Box::new(NoCheck)).unwrap();
    assert!(matches!(
        acq.hello(),
        Err(AcquisitionError::NotConfigured(_))
    ));
    let mut s = accept(&l);
    // Split across writes: the engine reassembles.
    let stream: Vec<u8> = (0..5).flat_map(detector_frame).collect();
    for piece in stream.chunks(33) {
        s.write_all(piece).unwrap();
    }
    let deadline = Instant::now() + T;
    while acq.engine().unwrap().counters().link_frames < 5 && Instant::now() < deadline {
        acq.wait(Duration::from_millis(10));
    }
    assert_eq!(acq.engine().unwrap().counters().link_frames, 5);
    // The acquisition's time scale reached the engine's clock.
    assert!((acq.engine().unwrap().clock().tick_s() - 20e-9).abs() < 1e-18);
    drop(s);
    events_until(&acq, |e| is_link(e, LinkId::Detector, LinkState::Down));
    let mut s = accept(&l);
    events_until(&acq, |e| is_link(e, LinkId::Detector, LinkState::Up));
    // Frames 5..8 were made while nobody listened: a loss interval of 3 frames.
    let stream: Vec<u8> = (8..10).flat_map(detector_frame).collect();
    s.write_all(&stream).unwrap();
    let deadline = Instant::now() + T;
    while acq.engine().unwrap().counters().link_frames < 7 && Instant::now() < deadline {
        acq.wait(Duration::from_millis(10));
    }
    let c = acq.engine().unwrap().counters();
    assert_eq!(
        (c.link_frames, c.link_loss_intervals, c.link_frames_lost),
        (7, 1, 3)
    );
    assert_eq!(counter(&acq, "detector_connects"), 2);
    assert_eq!(counter(&acq, "detector_disconnects"), 1);
    assert_eq!(
        counter(&acq, "detector_bytes"),
        7 * crate::link::frame::HEADER_LEN as u64
    );
    assert!(acq.stop(true), "no potentiostat: nothing to confirm");
    // The engine outlives the threads.
    assert_eq!(acq.engine().unwrap().counters().link_frames, 7);
}

/// An emitter whose stream the engine of `engine_config()` maps (dwell 10 ticks, 4 x 2).
fn emitter() -> crate::sim::Emitter {
    let raster = engine_config().raster;
    let cfg = crate::sim::EmitterConfig {
        record_type: RecordType::GenericT3.code(),
        tick_s: 80e-9,
        raster,
        frame_gap_ticks: 30,
        dead_time_ticks: 1,
        dark_rate_hz: 1e5,
        settle_rate_fraction: 0.0,
        start_tick: 0,
        seed: 3,
        record_truth: false,
        record_events: false,
        max_records_per_frame: 50,
        fine_fs: None,
    };
    let mut em = crate::sim::Emitter::new(cfg).unwrap();
    em.set_rates(&[4e6; 8]).unwrap();
    em
}

#[test]
fn a_recording_replayed_into_a_new_engine_rebuilds_its_cubes_and_counters() {
    let (l, port) = listener();
    let cfg = detector_config(port);
    let acq = Acquisition::start(cfg, Box::new(NoCheck)).unwrap();
    let mut s = accept(&l);
    let mut em = emitter();
    let mut until = 0;
    // Bytes sent so far; steps that are not a multiple of the line, and writes split
    // mid-frame, so reads split lines and frames.
    let mut sent = 0u64;
    let mut send = |s: &mut TcpStream, steps: usize| {
        for _ in 0..steps {
            until += 97;
            for f in em.emit_until(until).unwrap() {
                let (a, b) = f.split_at(f.len() / 3);
                s.write_all(a).unwrap();
                s.write_all(b).unwrap();
                sent += f.len() as u64;
            }
        }
        sent
    };
    let read_all = |acq: &Acquisition, n: u64| {
        let deadline = Instant::now() + T;
        while counter(acq, "detector_bytes") < n && Instant::now() < deadline {
            acq.wait(Duration::from_millis(5));
        }
        assert_eq!(counter(acq, "detector_bytes"), n);
    };
    let first = send(&mut s, 40);
    read_all(&acq, first);
    let dir = std::env::temp_dir().join(format!("opsims-recording-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let journal = JournalWriter::open(crate::journal::JournalConfig::new(&dir)).unwrap();
    let journal = Arc::new(journal);
    let before = acq.start_recording(Arc::clone(&journal), true).unwrap();
    assert!(before.is_none());
    assert_eq!(acq.engine().unwrap().counters().events, 0, "a fresh engine");
    let all = send(&mut s, 400);
    read_all(&acq, all);
    let (stopped, digest) = acq.stop_recording().unwrap();
    assert!(Arc::ptr_eq(&stopped, &journal));
    stopped.close().unwrap();
    let live = acq.engine().unwrap();
    assert_eq!(digest, Some(live.digest()), "nothing binned after the stop");
    assert!(live.counters().binned > 1000, "{:?}", live.counters());

    let mut replay = Engine::new(live.config().clone()).unwrap();
    let reader = crate::journal::JournalReader::open(&dir).unwrap();
    let mut bytes = 0;
    for block in reader.blocks().unwrap() {
        let block = block.unwrap();
        if block.kind == crate::journal::BlockKind::DetectorFrames {
            for (host_ns, data) in block.frames().unwrap() {
                bytes += data.len() as u64;
                replay.feed_link(data, host_ns);
            }
        }
    }
    assert_eq!(bytes, all - first, "every byte read while recording, once");
    assert_eq!(replay.counters(), live.counters());
    let n = live.cubes().n_slices();
    assert!(n > 2);
    assert_eq!(replay.cubes().n_slices(), n);
    let (mut a, mut b) = (vec![0; n * 8], vec![0; n * 8]);
    live.cubes().copy_range(0, 0, n, &mut a).unwrap();
    replay.cubes().copy_range(0, 0, n, &mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        replay.cubes().binned_by_species(),
        live.cubes().binned_by_species()
    );
    assert_eq!(
        format!("{:?}", replay.clock_state()),
        format!("{:?}", live.clock_state())
    );
    assert_eq!(replay.digest(), live.digest());
    let empty = Engine::new(live.config().clone()).unwrap().digest();
    assert_ne!(replay.digest().species, empty.species);
    assert_eq!(counter(&acq, "journal_refused"), 0);
    assert!(counter(&acq, "journal_appends") > 0);
    drop(live);
    let _ = std::fs::remove_dir_all(&dir);
}
