//! The potentiostat link (`docs/potentiostat-link.md`): CRC-sealed, sequence-numbered
//! frames in both directions, the payload of every message kind, and a reader that
//! reassembles frames from any chunking and resynchronises after damage.
//!
//! The Python implementation (`opsims/link/potentiostat.py`) is the other end used by the
//! simulator; the two agree byte for byte (the tests check it against the simulator).

use crate::error::{CoreError, Result};

pub const MAGIC: [u8; 4] = *b"OPSP";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
pub const CRC_LEN: usize = 4;
pub const MAX_PAYLOAD: usize = 65_536;
/// The longest frame: a reader never needs to buffer more than this beyond a bad header.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD + CRC_LEN;
pub const SAMPLE_LEN: usize = 32;
pub const MAX_SAMPLES_PER_FRAME: usize = (MAX_PAYLOAD - 8) / SAMPLE_LEN;

/// Sample flag bit 0: the hardware watchdog opened the circuit since the last sample.
pub const FLAG_WATCHDOG_OPENED: u8 = 0x01;
/// Sample flag bit 1: the current is at the compliance limit.
pub const FLAG_COMPLIANCE: u8 = 0x02;

/// Message kinds: commands (host → potentiostat) below 0x80, the rest from the instrument.
pub mod kind {
    pub const SET_CURRENT: u8 = 0x10;
    pub const OPEN_CIRCUIT: u8 = 0x11;
    pub const START_EIS: u8 = 0x12;
    pub const READ_STATUS: u8 = 0x13;
    pub const HEARTBEAT: u8 = 0x14;
    pub const REPLY: u8 = 0x80;
    pub const HELLO: u8 = 0x81;
    pub const SAMPLES: u8 = 0x82;
    pub const EIS_POINT: u8 = 0x83;
    pub const EVENT: u8 = 0x84;

    /// The protocol name of a kind, for messages.
    pub fn name(k: u8) -> &'static str {
        match k {
            SET_CURRENT => "SET_CURRENT",
            OPEN_CIRCUIT => "OPEN_CIRCUIT",
            START_EIS => "START_EIS",
            READ_STATUS => "READ_STATUS",
            HEARTBEAT => "HEARTBEAT",
            REPLY => "REPLY",
            HELLO => "HELLO",
            SAMPLES => "SAMPLES",
            EIS_POINT => "EIS_POINT",
            EVENT => "EVENT",
            _ => "unknown",
        }
    }
}

/// Reply codes.
pub mod reply_code {
    pub const OK: u16 = 0;
    pub const UNKNOWN_COMMAND: u16 = 1;
    pub const BAD_PAYLOAD: u16 = 2;
    pub const OUT_OF_RANGE: u16 = 3;
    pub const BUSY: u16 = 4;
    pub const UNSUPPORTED_VERSION: u16 = 5;

    pub fn name(code: u16) -> &'static str {
        match code {
            OK => "ok",
            UNKNOWN_COMMAND => "unknown_command",
            BAD_PAYLOAD => "bad_payload",
            OUT_OF_RANGE => "out_of_range",
            BUSY => "busy",
            UNSUPPORTED_VERSION => "unsupported_version",
            _ => "unknown",
        }
    }
}

/// Event codes.
pub mod event_code {
    pub const EIS_DONE: u16 = 1;
    pub const WATCHDOG_OPEN_CIRCUIT: u16 = 2;
    pub const EIS_ABORTED: u16 = 3;
    /// A `SET_CURRENT` voltage limit was reached: the instrument opened the circuit.
    pub const LIMIT_REACHED: u16 = 4;

    pub fn name(code: u16) -> &'static str {
        match code {
            EIS_DONE => "eis_done",
            WATCHDOG_OPEN_CIRCUIT => "watchdog_open_circuit",
            EIS_ABORTED => "eis_aborted",
            LIMIT_REACHED => "limit_reached",
            _ => "unknown",
        }
    }
}

/// Control modes as samples and STATUS report them.
pub mod mode {
    pub const OPEN_CIRCUIT: u8 = 0;
    pub const GALVANOSTATIC: u8 = 1;
    pub const EIS: u8 = 2;
}

fn bad(what: &str, why: impl std::fmt::Display) -> CoreError {
    CoreError::Frame(format!("potentiostat {what}: {why}"))
}

/// Little-endian field reader over one payload; every read is bounds-checked.
struct Fields<'a> {
    b: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Fields { b, at: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| {
            bad(
                self.what,
                format!("payload of {} bytes is too short", self.b.len()),
            )
        })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }
    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }
    /// A length-prefixed text; invalid UTF-8 is replaced, as the Python end does.
    fn text(&mut self, n: usize) -> Result<String> {
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.at..];
        self.at = self.b.len();
        s
    }
    /// Fixed-size payloads must have exactly their size.
    fn done(&self) -> Result<()> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(bad(
                self.what,
                format!("{} bytes, expected {}", self.b.len(), self.at),
            ))
        }
    }
}

/// Messages carry at most this much text (the Python end truncates the same way).
const MAX_TEXT: usize = 1024;

fn clipped(text: &str) -> &[u8] {
    let b = text.as_bytes();
    &b[..b.len().min(MAX_TEXT)]
}

// --- frames ---------------------------------------------------------------------------

/// One frame: the header fields and the payload (CRC already checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub version: u8,
    pub kind: u8,
    pub sequence: u32,
    pub payload: Vec<u8>,
}

/// A whole frame: header, payload and CRC-32 of both. Errors above [`MAX_PAYLOAD`].
pub fn encode(kind: u8, sequence: u32, payload: &[u8]) -> Result<Vec<u8>> {
    encode_version(VERSION, kind, sequence, payload)
}

/// [`encode`] with another protocol version (to test how it is refused).
pub fn encode_version(version: u8, kind: u8, sequence: u32, payload: &[u8]) -> Result<Vec<u8>> {
    if payload.len() > MAX_PAYLOAD {
        return Err(bad(
            "frame",
            format!("payload of {} bytes exceeds {MAX_PAYLOAD}", payload.len()),
        ));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[version, kind, 0, 0]);
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Reassembles frames from a byte stream in any chunking. Damage (no magic, a length
/// above the limit, a CRC mismatch) skips to the next magic and is counted; a bad header
/// only ever costs its 4 magic bytes, so a real frame inside it is still found.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Read position in `buf`; bytes before it are consumed.
    pos: usize,
    pub bytes_skipped: u64,
    pub frames_corrupt: u64,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes waiting for the rest of their frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Forget buffered bytes (a new connection).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// The next whole frame with a good CRC, or None when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let avail = &self.buf[self.pos..];
            let Some(start) = avail.windows(MAGIC.len()).position(|w| w == MAGIC) else {
                // Keep a tail that may be the start of a split magic.
                let keep = avail.len().min(MAGIC.len() - 1);
                self.skip(avail.len() - keep);
                return None;
            };
            self.skip(start);
            let avail = &self.buf[self.pos..];
            if avail.len() < HEADER_LEN {
                return None;
            }
            let n = u32::from_le_bytes([avail[12], avail[13], avail[14], avail[15]]) as usize;
            if n > MAX_PAYLOAD {
                self.skip(MAGIC.len());
                continue;
            }
            let end = HEADER_LEN + n + CRC_LEN;
            if avail.len() < end {
                return None;
            }
            let body = &avail[..HEADER_LEN + n];
            let crc = u32::from_le_bytes([
                avail[end - 4],
                avail[end - 3],
                avail[end - 2],
                avail[end - 1],
            ]);
            if crc != crc32fast::hash(body) {
                self.frames_corrupt += 1;
                self.skip(MAGIC.len());
                continue;
            }
            let frame = Frame {
                version: avail[4],
                kind: avail[5],
                sequence: u32::from_le_bytes([avail[8], avail[9], avail[10], avail[11]]),
                payload: avail[HEADER_LEN..HEADER_LEN + n].to_vec(),
            };
            self.pos += end;
            return Some(frame);
        }
    }

    fn skip(&mut self, n: usize) {
        self.bytes_skipped += n as u64;
        self.pos += n;
    }
}

// --- payloads -------------------------------------------------------------------------

/// `SET_CURRENT` payload: `amps` (8 bytes), or `amps, limit_v` (16 bytes) with a voltage
/// limit: the instrument opens the circuit itself at the first sample with |Ewe| at or
/// beyond `limit_v` (0 is no limit).
pub fn pack_current(amps: f64, limit_v: Option<f64>) -> Vec<u8> {
    let mut out = amps.to_le_bytes().to_vec();
    if let Some(v) = limit_v {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// `(amps, limit_v)`; `limit_v` is None in the 8-byte form.
pub fn unpack_current(payload: &[u8]) -> Result<(f64, Option<f64>)> {
    let mut f = Fields::new(payload, "SET_CURRENT");
    let amps = f.f64()?;
    let limit_v = if payload.len() > 8 {
        Some(f.f64()?)
    } else {
        None
    };
    f.done()?;
    Ok((amps, limit_v))
}

/// `START_EIS` payload (26 bytes, packed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EisRequest {
    pub f_start_hz: f64,
    pub f_stop_hz: f64,
    pub points_per_decade: u16,
    pub amplitude_v: f64,
}

impl EisRequest {
    pub fn pack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(26);
        out.extend_from_slice(&self.f_start_hz.to_le_bytes());
        out.extend_from_slice(&self.f_stop_hz.to_le_bytes());
        out.extend_from_slice(&self.points_per_decade.to_le_bytes());
        out.extend_from_slice(&self.amplitude_v.to_le_bytes());
        out
    }
    pub fn unpack(payload: &[u8]) -> Result<Self> {
        let mut f = Fields::new(payload, "START_EIS");
        let r = EisRequest {
            f_start_hz: f.f64()?,
            f_stop_hz: f.f64()?,
            points_per_decade: f.u16()?,
            amplitude_v: f.f64()?,
        };
        f.done()?;
        Ok(r)
    }
}

/// `REPLY`: the answer to the command with `request_sequence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub request_sequence: u32,
    pub code: u16,
    pub message: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.code == reply_code::OK
    }
    pub fn pack(&self) -> Vec<u8> {
        let text = clipped(&self.message);
        let mut out = Vec::with_capacity(8 + text.len() + self.body.len());
        out.extend_from_slice(&self.request_sequence.to_le_bytes());
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text);
        out.extend_from_slice(&self.body);
        out
    }
    pub fn unpack(payload: &[u8]) -> Result<Self> {
        let mut f = Fields::new(payload, "REPLY");
        let request_sequence = f.u32()?;
        let code = f.u16()?;
        let n = f.u16()? as usize;
        let message = f.text(n)?;
        Ok(Reply {
            request_sequence,
            code,
            message,
            body: f.rest().to_vec(),
        })
    }
}

/// `HELLO`: the instrument's clock and limits, sent once per connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub protocol: u16,
    pub counter_bits: u8,
    pub tick_fs: u64,
    pub sample_period_ticks: u64,
    pub compliance_a: f64,
    pub name: String,
}

impl Hello {
    pub fn pack(&self) -> Vec<u8> {
        let text = self.name.as_bytes();
        let text = &text[..text.len().min(usize::from(u16::MAX))];
        let mut out = Vec::with_capacity(34 + text.len());
        out.extend_from_slice(&self.protocol.to_le_bytes());
        out.push(self.counter_bits);
        out.extend_from_slice(&[0; 5]);
        out.extend_from_slice(&self.tick_fs.to_le_bytes());
        out.extend_from_slice(&self.sample_period_ticks.to_le_bytes());
        out.extend_from_slice(&self.compliance_a.to_le_bytes());
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text);
        out
    }
    pub fn unpack(payload: &[u8]) -> Result<Self> {
        let mut f = Fields::new(payload, "HELLO");
        let protocol = f.u16()?;
        let counter_bits = f.u8()?;
        f.skip(5)?;
        let tick_fs = f.u64()?;
        let sample_period_ticks = f.u64()?;
        let compliance_a = f.f64()?;
        let n = f.u16()? as usize;
        let name = f.text(n)?;
        Ok(Hello {
            protocol,
            counter_bits,
            tick_fs,
            sample_period_ticks,
            compliance_a,
            name,
        })
    }

    /// Whether the clock it announces is usable: a counter 1..=64 bits wide, a tick.
    pub fn check(&self) -> Result<()> {
        if !(1..=64).contains(&self.counter_bits) {
            return Err(bad(
                "HELLO",
                format!("counter_bits {} outside 1..=64", self.counter_bits),
            ));
        }
        if self.tick_fs == 0 {
            return Err(bad("HELLO", "tick_fs is 0"));
        }
        Ok(())
    }
}

/// One `SAMPLES` entry as sent: `tick` is the raw (wrapping) counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WireSample {
    pub tick: u64,
    pub ewe_v: f64,
    pub current_a: f64,
    pub mode: u8,
    pub flags: u8,
}

pub fn pack_samples(samples: &[WireSample]) -> Result<Vec<u8>> {
    if samples.len() > MAX_SAMPLES_PER_FRAME {
        return Err(bad(
            "SAMPLES",
            format!(
                "{} samples exceed {MAX_SAMPLES_PER_FRAME} per frame",
                samples.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(8 + samples.len() * SAMPLE_LEN);
    out.extend_from_slice(&(samples.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0; 6]);
    for s in samples {
        out.extend_from_slice(&s.tick.to_le_bytes());
        out.extend_from_slice(&s.ewe_v.to_le_bytes());
        out.extend_from_slice(&s.current_a.to_le_bytes());
        out.extend_from_slice(&[s.mode, s.flags, 0, 0, 0, 0, 0, 0]);
    }
    Ok(out)
}

/// Appends the samples of one `SAMPLES` payload to `out` (cleared first).
pub fn unpack_samples(payload: &[u8], out: &mut Vec<WireSample>) -> Result<()> {
    out.clear();
    let mut f = Fields::new(payload, "SAMPLES");
    let count = f.u16()? as usize;
    f.skip(6)?;
    let body = f.rest();
    if body.len() != count * SAMPLE_LEN {
        return Err(bad(
            "SAMPLES",
            format!(
                "frame says {count} samples but carries {} bytes",
                body.len()
            ),
        ));
    }
    out.reserve(count);
    for chunk in body.chunks_exact(SAMPLE_LEN) {
        let mut f = Fields::new(chunk, "SAMPLES");
        out.push(WireSample {
            tick: f.u64()?,
            ewe_v: f.f64()?,
            current_a: f.f64()?,
            mode: f.u8()?,
            flags: f.u8()?,
        });
    }
    Ok(())
}

/// `EIS_POINT`: one impedance point of a sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EisPoint {
    pub tick: u64,
    pub index: u16,
    pub n_points: u16,
    pub freq_hz: f64,
    pub z_re_ohm: f64,
    pub z_im_ohm: f64,
}

impl EisPoint {
    pub fn pack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(&self.tick.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.n_points.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for v in [self.freq_hz, self.z_re_ohm, self.z_im_ohm] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
    pub fn unpack(payload: &[u8]) -> Result<Self> {
        let mut f = Fields::new(payload, "EIS_POINT");
        let tick = f.u64()?;
        let index = f.u16()?;
        let n_points = f.u16()?;
        f.skip(4)?;
        let p = EisPoint {
            tick,
            index,
            n_points,
            freq_hz: f.f64()?,
            z_re_ohm: f.f64()?,
            z_im_ohm: f.f64()?,
        };
        f.done()?;
        Ok(p)
    }
}

/// `EVENT`: something the instrument did by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub tick: u64,
    pub code: u16,
    pub message: String,
}

impl Event {
    pub fn pack(&self) -> Vec<u8> {
        let text = clipped(&self.message);
        let mut out = Vec::with_capacity(12 + text.len());
        out.extend_from_slice(&self.tick.to_le_bytes());
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text);
        out
    }
    pub fn unpack(payload: &[u8]) -> Result<Self> {
        let mut f = Fields::new(payload, "EVENT");
        let tick = f.u64()?;
        let code = f.u16()?;
        let n = f.u16()? as usize;
        let message = f.text(n)?;
        Ok(Event {
            tick,
            code,
            message,
        })
    }
}

/// The 40-byte `STATUS` body of a `READ_STATUS` reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Status {
    /// The raw (wrapping) counter when the status was taken.
    pub tick: u64,
    pub mode: u8,
    pub watchdog_opened: bool,
    pub eis_done: u16,
    pub eis_total: u16,
    pub setpoint_a: f64,
    pub ewe_v: f64,
    pub current_a: f64,
}

impl Status {
    pub fn pack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(&self.tick.to_le_bytes());
        out.extend_from_slice(&[self.mode, u8::from(self.watchdog_opened), 0, 0]);
        out.extend_from_slice(&self.eis_done.to_le_bytes());
        out.extend_from_slice(&self.eis_total.to_le_bytes());
        for v in [self.setpoint_a, self.ewe_v, self.current_a] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
    pub fn unpack(payload: &[u8]) -> Result<Self> {
        let mut f = Fields::new(payload, "STATUS");
        let tick = f.u64()?;
        let mode = f.u8()?;
        let watchdog_opened = f.u8()? != 0;
        f.skip(2)?;
        let s = Status {
            tick,
            mode,
            watchdog_opened,
            eis_done: f.u16()?,
            eis_total: f.u16()?,
            setpoint_a: f.f64()?,
            ewe_v: f.f64()?,
            current_a: f.f64()?,
        };
        f.done()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut FrameReader) -> Vec<Frame> {
        std::iter::from_fn(|| r.next_frame()).collect()
    }

    #[test]
    fn frame_layout_matches_the_document() {
        let f = encode(kind::SET_CURRENT, 7, &pack_current(-4e-8, None)).unwrap();
        assert_eq!(&f[0..4], b"OPSP");
        assert_eq!(&f[4..8], &[1, 0x10, 0, 0]);
        assert_eq!(&f[8..12], &7u32.to_le_bytes());
        assert_eq!(&f[12..16], &8u32.to_le_bytes());
        assert_eq!(&f[16..24], &(-4e-8f64).to_le_bytes());
        let crc = crc32fast::hash(&f[..24]);
        assert_eq!(&f[24..28], &crc.to_le_bytes());
        // zlib.crc32(b"OPSP") as the Python end computes it: the same CRC-32 (IEEE).
        assert_eq!(crc32fast::hash(b"OPSP"), 0x7472_E6A4);
    }

    #[test]
    fn set_current_takes_an_optional_voltage_limit() {
        let plain = pack_current(-4e-8, None);
        assert_eq!(plain, (-4e-8f64).to_le_bytes());
        let limited = pack_current(4e-8, Some(5.0));
        assert_eq!(limited.len(), 16);
        assert_eq!(&limited[..8], &4e-8f64.to_le_bytes());
        assert_eq!(&limited[8..], &5.0f64.to_le_bytes());
        assert_eq!(event_code::name(event_code::LIMIT_REACHED), "limit_reached");
        assert_eq!(event_code::LIMIT_REACHED, 4);
    }

    #[test]
    fn every_kind_round_trips() {
        let hello = Hello {
            protocol: 1,
            counter_bits: 32,
            tick_fs: 1_000_000_000,
            sample_period_ticks: 10_000,
            compliance_a: 1e-5,
            name: "sim µ".into(),
        };
        assert_eq!(Hello::unpack(&hello.pack()).unwrap(), hello);
        let reply = Reply {
            request_sequence: 9,
            code: reply_code::OUT_OF_RANGE,
            message: "current 1 A outside ±1e-05 A".into(),
            body: vec![1, 2, 3],
        };
        assert_eq!(Reply::unpack(&reply.pack()).unwrap(), reply);
        let samples: Vec<WireSample> = (0..5)
            .map(|i| WireSample {
                tick: u64::MAX - i,
                ewe_v: 0.04 * i as f64,
                current_a: -4e-8,
                mode: mode::GALVANOSTATIC,
                flags: (i % 4) as u8,
            })
            .collect();
        let mut out = Vec::new();
        unpack_samples(&pack_samples(&samples).unwrap(), &mut out).unwrap();
        assert_eq!(out, samples);
        let point = EisPoint {
            tick: 12,
            index: 3,
            n_points: 29,
            freq_hz: 7e6,
            z_re_ohm: 3188.0,
            z_im_ohm: -25135.0,
        };
        assert_eq!(EisPoint::unpack(&point.pack()).unwrap(), point);
        let event = Event {
            tick: 1 << 40,
            code: event_code::WATCHDOG_OPEN_CIRCUIT,
            message: "no command for 2.10 s".into(),
        };
        assert_eq!(Event::unpack(&event.pack()).unwrap(), event);
        let status = Status {
            tick: 77,
            mode: mode::EIS,
            watchdog_opened: true,
            eis_done: 4,
            eis_total: 29,
            setpoint_a: 0.0,
            ewe_v: 0.1,
            current_a: 1e-9,
        };
        assert_eq!(status.pack().len(), 40);
        assert_eq!(Status::unpack(&status.pack()).unwrap(), status);
        let eis = EisRequest {
            f_start_hz: 7e6,
            f_stop_hz: 100.0,
            points_per_decade: 10,
            amplitude_v: 0.3,
        };
        assert_eq!(eis.pack().len(), 26);
        assert_eq!(EisRequest::unpack(&eis.pack()).unwrap(), eis);
        assert_eq!(
            unpack_current(&pack_current(1.5e-7, None)).unwrap(),
            (1.5e-7, None)
        );
        assert_eq!(
            unpack_current(&pack_current(4e-8, Some(5.0))).unwrap(),
            (4e-8, Some(5.0))
        );

        // Through frames, all kinds in one stream.
        let payloads: Vec<(u8, Vec<u8>)> = vec![
            (kind::HELLO, hello.pack()),
            (kind::REPLY, reply.pack()),
            (kind::SAMPLES, pack_samples(&samples).unwrap()),
            (kind::EIS_POINT, point.pack()),
            (kind::EVENT, event.pack()),
            (kind::SET_CURRENT, pack_current(1e-8, None)),
            (kind::SET_CURRENT, pack_current(1e-8, Some(0.0))),
            (kind::OPEN_CIRCUIT, vec![]),
            (kind::START_EIS, eis.pack()),
            (kind::READ_STATUS, vec![]),
            (kind::HEARTBEAT, vec![]),
        ];
        let mut stream = Vec::new();
        for (i, (k, p)) in payloads.iter().enumerate() {
            stream.extend(encode(*k, i as u32, p).unwrap());
        }
        let mut r = FrameReader::new();
        r.push(&stream);
        let frames = read_all(&mut r);
        assert_eq!(frames.len(), payloads.len());
        for (i, (f, (k, p))) in frames.iter().zip(&payloads).enumerate() {
            assert_eq!((f.version, f.kind, f.sequence), (VERSION, *k, i as u32));
            assert_eq!(&f.payload, p);
        }
        assert_eq!((r.bytes_skipped, r.frames_corrupt, r.buffered()), (0, 0, 0));
    }

    #[test]
    fn short_and_wrong_length_payloads_are_errors() {
        assert!(Hello::unpack(&[0; 10]).is_err());
        let mut hello = Hello {
            protocol: 1,
            counter_bits: 16,
            tick_fs: 1,
            sample_period_ticks: 1,
            compliance_a: 1.0,
            name: "abc".into(),
        }
        .pack();
        hello.truncate(hello.len() - 1); // name shorter than its length says
        assert!(Hello::unpack(&hello).is_err());
        assert!(Reply::unpack(&[0; 7]).is_err());
        assert!(Status::unpack(&[0; 41]).is_err());
        assert!(EisPoint::unpack(&[0; 39]).is_err());
        for n in [0, 7, 9, 15, 17, 24] {
            assert!(unpack_current(&vec![0; n]).is_err(), "{n} bytes");
        }
        let mut out = Vec::new();
        let mut p = pack_samples(&[WireSample {
            tick: 1,
            ewe_v: 0.0,
            current_a: 0.0,
            mode: 0,
            flags: 0,
        }])
        .unwrap();
        p[0] = 2; // says two samples, carries one
        assert!(unpack_samples(&p, &mut out).is_err());
        assert!(encode(kind::SAMPLES, 0, &vec![0; MAX_PAYLOAD + 1]).is_err());
    }

    #[test]
    fn split_reads_reassemble() {
        let mut stream = Vec::new();
        for i in 0..20u32 {
            let p = vec![i as u8; (i as usize * 37) % 300];
            stream.extend(encode(kind::EVENT, i, &p).unwrap());
        }
        for chunk in [1, 2, 3, 5, 16, 17, 64, 1000] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                r.push(piece);
                got.extend(read_all(&mut r));
                assert!(r.buffered() < MAX_FRAME + chunk);
            }
            let seqs: Vec<u32> = got.iter().map(|f| f.sequence).collect();
            assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "chunk {chunk}");
            assert_eq!(r.bytes_skipped, 0);
        }
    }

    #[test]
    fn garbage_between_frames_is_skipped_and_counted() {
        let a = encode(kind::HEARTBEAT, 1, &[]).unwrap();
        let b = encode(kind::HEARTBEAT, 2, &[]).unwrap();
        let garbage = b"xxOPSxx\x00OPSP".to_vec(); // a false magic with no valid frame
        let mut stream = garbage.clone();
        stream.extend(&a);
        stream.extend(b"zzz");
        stream.extend(&b);
        let mut r = FrameReader::new();
        r.push(&stream);
        let got: Vec<u32> = read_all(&mut r).iter().map(|f| f.sequence).collect();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(r.bytes_skipped, garbage.len() as u64 + 3);
    }

    #[test]
    fn crc_failure_drops_the_frame_and_finds_the_next() {
        let mut bad_frame = encode(kind::EVENT, 1, b"payload").unwrap();
        bad_frame[18] ^= 0x40;
        let good = encode(kind::EVENT, 2, b"payload").unwrap();
        let mut r = FrameReader::new();
        r.push(&bad_frame);
        r.push(&good);
        let got: Vec<u32> = read_all(&mut r).iter().map(|f| f.sequence).collect();
        assert_eq!(got, vec![2]);
        assert_eq!(r.frames_corrupt, 1);
        assert_eq!(r.bytes_skipped, bad_frame.len() as u64);
    }

    #[test]
    fn a_frame_hidden_in_a_damaged_payload_is_found() {
        // A corrupt frame whose payload contains a whole valid frame: only the outer
        // magic is dropped, so the inner frame survives.
        let inner = encode(kind::HEARTBEAT, 5, &[]).unwrap();
        let mut outer = encode(kind::EVENT, 4, &inner).unwrap();
        let last = outer.len() - 1;
        outer[last] ^= 1;
        let mut r = FrameReader::new();
        r.push(&outer);
        let got = read_all(&mut r);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].sequence, 5);
        assert_eq!(r.frames_corrupt, 1);
    }

    #[test]
    fn oversized_length_does_not_wait_for_more_bytes() {
        let mut head = b"OPSP\x01\x82\x00\x00".to_vec();
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
        let good = encode(kind::HEARTBEAT, 3, &[]).unwrap();
        let mut r = FrameReader::new();
        r.push(&head);
        r.push(&good);
        let got = read_all(&mut r);
        assert_eq!(
            got.len(),
            1,
            "the good frame right after a bad header is read"
        );
        assert_eq!(got[0].sequence, 3);
        assert_eq!(r.bytes_skipped, head.len() as u64);
    }

    #[test]
    fn other_versions_come_through_whole_for_the_caller_to_skip() {
        let v2 = encode_version(2, kind::HELLO, 0, &[1, 2, 3]).unwrap();
        let v1 = encode(kind::HEARTBEAT, 1, &[]).unwrap();
        let mut r = FrameReader::new();
        r.push(&v2);
        r.push(&v1);
        let got = read_all(&mut r);
        assert_eq!(
            got.iter().map(|f| f.version).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(r.bytes_skipped, 0);
    }

    #[test]
    fn hello_check_rejects_unusable_clocks() {
        let mut h = Hello {
            protocol: 1,
            counter_bits: 0,
            tick_fs: 1,
            sample_period_ticks: 1,
            compliance_a: 1.0,
            name: String::new(),
        };
        assert!(h.check().is_err());
        h.counter_bits = 65;
        assert!(h.check().is_err());
        h.counter_bits = 16;
        assert!(h.check().is_ok());
        h.tick_fs = 0;
        assert!(h.check().is_err());
    }
}
