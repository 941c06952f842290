//! The potentiostat link: the frame reader and every message decoder, driven the way
//! the acquisition's reader thread drives them.

use super::{pieces, Input};
use crate::acquisition::TickUnwrapper;
use crate::clock::ClockModel;
use crate::link::potentiostat::{
    kind, pack_samples, unpack_current, unpack_samples, EisPoint, EisRequest, Event, Frame,
    FrameReader, Hello, Reply, Status, WireSample, CRC_LEN, HEADER_LEN, MAGIC, MAX_FRAME,
    MAX_PAYLOAD, VERSION,
};

/// Fill in the CRC of every frame header in `stream` whose frame fits, last first (so a
/// frame inside another's payload is sealed before the outer one): lets the fuzzer reach
/// the payload decoders without computing checksums.
fn reseal(stream: &mut [u8]) {
    let starts: Vec<usize> = (0..stream.len().saturating_sub(HEADER_LEN - 1))
        .filter(|&i| stream[i..i + MAGIC.len()] == MAGIC)
        .collect();
    for &at in starts.iter().rev() {
        let len = &stream[at + 12..at + 16];
        let n = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = at + HEADER_LEN + n;
        if n <= MAX_PAYLOAD && end + CRC_LEN <= stream.len() {
            let crc = crc32fast::hash(&stream[at..end]);
            stream[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// What the reader thread keeps between frames (`acquisition::potentiostat`).
#[derive(Default)]
struct Session {
    unwrap: Option<TickUnwrapper>,
    tick_fs: u64,
    clock: Option<ClockModel>,
    wire: Vec<WireSample>,
    raw: Vec<u64>,
    ticks: Vec<u64>,
}

/// Packing what was unpacked, then unpacking and packing again, gives the same bytes.
fn repacks<T>(
    packed: Vec<u8>,
    unpack: impl Fn(&[u8]) -> crate::Result<T>,
    pack: impl Fn(&T) -> Vec<u8>,
) {
    let again = unpack(&packed).expect("a packed message unpacks");
    assert_eq!(pack(&again), packed, "a message does not survive packing");
}

impl Session {
    /// The tick the clock model expects at `arrival` (as the reader thread anchors a
    /// batch after a reconnect).
    fn expected_tick(&self, arrival: i64) -> Option<u64> {
        let last = self.unwrap.as_ref()?.last()?;
        let m = self.clock.as_ref()?;
        let ref_host = m.to_host_ns(last)?;
        let ns_per_tick = m.tick_s() * 1e9 * (1.0 + m.state().drift_ppm * 1e-6);
        let ticks = arrival.saturating_sub(ref_host) as f64 / ns_per_tick;
        Some(last.wrapping_add_signed(ticks.round() as i64))
    }

    fn lone_tick(&self, raw: u64, arrival: i64) -> u64 {
        let Some(u) = &self.unwrap else { return raw };
        let near = if u.needs_anchor() {
            self.expected_tick(arrival).or(u.last())
        } else {
            u.last()
        };
        near.map_or(raw, |n| u.nearest(raw, n))
    }

    fn hello(&mut self, hello: &Hello) {
        if hello.check().is_err() {
            return;
        }
        if self.clock.is_none() || self.tick_fs != hello.tick_fs {
            let tick_s = hello.tick_fs as f64 * 1e-15;
            // A clock the model cannot take ends the session; nothing else happens.
            let Ok(model) = ClockModel::new(tick_s, 30.0) else {
                return;
            };
            self.clock = Some(model);
            self.tick_fs = hello.tick_fs;
            self.unwrap = None;
        }
        match &mut self.unwrap {
            Some(u) if u.bits() == hello.counter_bits => u.resume(),
            _ => self.unwrap = Some(TickUnwrapper::new(hello.counter_bits)),
        }
    }

    fn samples(&mut self, arrival: i64) {
        if self.wire.is_empty() {
            return;
        }
        let expected = match &self.unwrap {
            Some(u) if u.needs_anchor() => self.expected_tick(arrival),
            _ => None,
        };
        self.raw.clear();
        self.raw.extend(self.wire.iter().map(|s| s.tick));
        let u = self.unwrap.get_or_insert_with(|| TickUnwrapper::new(64));
        let backwards = u.unwrap_batch(&self.raw, expected, &mut self.ticks);
        assert_eq!(self.ticks.len(), self.raw.len());
        assert!(backwards <= self.ticks.len() as u64);
        let mask = u64::MAX >> (64 - u32::from(u.bits()));
        for (&t, &r) in self.ticks.iter().zip(&self.raw) {
            assert_eq!(
                t & mask,
                r & mask,
                "an unwrapped tick is not its counter value"
            );
        }
        if let Some(m) = self.clock.as_mut() {
            m.update(self.ticks[self.ticks.len() - 1], arrival);
            for &t in &self.ticks {
                let _ = m.to_host_ns(t);
            }
        }
    }

    fn frame(&mut self, f: &Frame, arrival: i64) {
        if f.version != VERSION {
            return;
        }
        let p = &f.payload[..];
        match f.kind {
            kind::HELLO => {
                if let Ok(h) = Hello::unpack(p) {
                    if h.name.len() <= usize::from(u16::MAX) {
                        repacks(h.pack(), Hello::unpack, Hello::pack);
                    }
                    self.hello(&h);
                }
            }
            kind::SAMPLES => {
                let mut wire = std::mem::take(&mut self.wire);
                if unpack_samples(p, &mut wire).is_ok() {
                    let packed = pack_samples(&wire).expect("as many samples as a frame holds");
                    assert_eq!(packed.len(), p.len());
                    self.wire = wire;
                    self.samples(arrival);
                } else {
                    self.wire = wire;
                }
            }
            kind::EIS_POINT => {
                if let Ok(point) = EisPoint::unpack(p) {
                    repacks(point.pack(), EisPoint::unpack, EisPoint::pack);
                    let _ = self.lone_tick(point.tick, arrival);
                }
            }
            kind::EVENT => {
                if let Ok(e) = Event::unpack(p) {
                    if e.message.len() <= 1024 {
                        repacks(e.pack(), Event::unpack, Event::pack);
                    }
                    let _ = self.lone_tick(e.tick, arrival);
                }
            }
            kind::REPLY => {
                if let Ok(r) = Reply::unpack(p) {
                    if r.message.len() <= 1024 {
                        repacks(r.pack(), Reply::unpack, Reply::pack);
                    }
                    if let Ok(s) = Status::unpack(&r.body) {
                        repacks(s.pack(), Status::unpack, Status::pack);
                    }
                }
            }
            kind::SET_CURRENT => {
                let _ = unpack_current(p);
            }
            kind::START_EIS => {
                if let Ok(e) = EisRequest::unpack(p) {
                    repacks(e.pack(), EisRequest::unpack, EisRequest::pack);
                }
            }
            _ => {}
        }
    }
}

fn frame_len(f: &Frame) -> u64 {
    (HEADER_LEN + f.payload.len() + CRC_LEN) as u64
}

/// Arbitrary bytes (CRCs optionally filled in) as the potentiostat link, cut at the
/// points the fuzzer chooses. Checks: every byte pushed is in a frame, skipped, or still
/// buffered, and less than one frame stays buffered; the same bytes in one piece give the
/// same frames; each message decodes to an error or to a value that packs back to the
/// same bytes; unwrapped sample ticks keep their counter value.
pub fn potentiostat_wire(data: &[u8]) {
    let mut inp = Input::new(data);
    let n = inp.u8() % 8;
    let cuts: Vec<usize> = (0..n).map(|_| usize::from(inp.u16())).collect();
    let host0 = inp.u64() as i64;
    let host_step = i64::from(inp.u32());
    let sealed = inp.bool();
    let mut stream = inp.rest().to_vec();
    if sealed {
        reseal(&mut stream);
    }

    let mut reader = FrameReader::new();
    let (mut frames, mut in_frames) = (Vec::new(), 0u64);
    let mut session = Session::default();
    for (i, (a, b)) in pieces(stream.len(), cuts).into_iter().enumerate() {
        let arrival = host0.wrapping_add(host_step.wrapping_mul(i as i64));
        reader.push(&stream[a..b]);
        while let Some(f) = reader.next_frame() {
            in_frames += frame_len(&f);
            session.frame(&f, arrival);
            frames.push(f);
        }
        assert_eq!(
            b as u64,
            in_frames + reader.bytes_skipped + reader.buffered() as u64,
            "bytes lost by the frame reader"
        );
        assert!(
            reader.buffered() < MAX_FRAME,
            "{} bytes buffered",
            reader.buffered()
        );
    }

    let mut whole = FrameReader::new();
    whole.push(&stream);
    let again: Vec<Frame> = std::iter::from_fn(|| whole.next_frame()).collect();
    assert!(
        again == frames,
        "the same bytes in other pieces gave other frames"
    );
    assert_eq!(
        (whole.bytes_skipped, whole.frames_corrupt, whole.buffered()),
        (
            reader.bytes_skipped,
            reader.frames_corrupt,
            reader.buffered()
        )
    );
}
