//! TTTR encoding, the inverse of `tttr::Decoder`: absolute ticks in, records with the
//! overflow records a time tagger would have written out. Used by the simulator side of
//! the link and by benchmarks; the tests' oracle has its own, independent encoder.

use super::tttr::RecordType;
use crate::error::{CoreError, Result};

#[derive(Debug, Clone)]
pub struct Encoder {
    kind: RecordType,
    /// Ticks covered by the overflow records written so far.
    base: u64,
}

impl Encoder {
    pub fn new(kind: RecordType) -> Self {
        Encoder { kind, base: 0 }
    }

    /// An encoder whose time base already stands at `overflow_base`, as for a time tagger
    /// whose counter ran before the link began: the overflows up to it are not written
    /// (the link header carries the base). Callers pass a whole number of wrap periods.
    pub fn starting_at(kind: RecordType, overflow_base: u64) -> Self {
        Encoder {
            kind,
            base: overflow_base,
        }
    }

    /// Ticks already added by overflow records: what a live-link frame header carries.
    pub fn overflow_base(&self) -> u64 {
        self.base
    }

    /// Write the overflow records that bring the time base within reach of `tick`, and
    /// return the tick's value in the record's time field.
    #[inline(always)]
    fn advance(&mut self, tick: u64, out: &mut Vec<u32>) -> Result<u32> {
        // Nearly every record falls in the current wrap period: no division then.
        match tick.checked_sub(self.base) {
            Some(d) if d < self.kind.overflow_rule().period => Ok(d as u32),
            _ => self.advance_wrapping(tick, out),
        }
    }

    #[cold]
    fn advance_wrapping(&mut self, tick: u64, out: &mut Vec<u32>) -> Result<u32> {
        if tick < self.base {
            return Err(CoreError::Config(format!(
                "tick {tick} precedes the time base {}: ticks must not go backwards",
                self.base
            )));
        }
        let rule = self.kind.overflow_rule();
        let mut wraps = (tick - self.base) / rule.period;
        let max_count = (1u64 << self.kind.time_bits()) - 1;
        while wraps > 0 {
            let count = if rule.counted {
                wraps.min(max_count)
            } else {
                1
            };
            out.push(self.overflow_record(count));
            self.base += count * rule.period;
            wraps -= count;
        }
        Ok((tick - self.base) as u32)
    }

    fn overflow_record(&self, count: u64) -> u32 {
        match self.kind {
            RecordType::PicoHarpT2 | RecordType::PicoHarpT3 => 15 << 28,
            RecordType::HydraHarpV1T2 | RecordType::HydraHarpV1T3 => (1 << 31) | (63 << 25),
            RecordType::GenericT2 | RecordType::GenericT3 => (1 << 31) | (63 << 25) | count as u32,
        }
    }

    /// A detector event on a 0-based channel; `dtime` is ignored by T2 layouts.
    #[inline]
    pub fn event(&mut self, tick: u64, channel: u8, dtime: u16, out: &mut Vec<u32>) -> Result<()> {
        if channel >= self.kind.channels() {
            return Err(CoreError::Config(format!(
                "channel {channel} does not fit {}",
                self.kind.name()
            )));
        }
        let t = self.advance(tick, out)?;
        let (ch, dt) = (u32::from(channel), u32::from(dtime));
        out.push(match self.kind {
            RecordType::PicoHarpT2 => (ch << 28) | t,
            RecordType::PicoHarpT3 => ((ch + 1) << 28) | ((dt & 0xFFF) << 16) | t,
            RecordType::HydraHarpV1T3 | RecordType::GenericT3 => {
                (ch << 25) | ((dt & 0x7FFF) << 10) | t
            }
            RecordType::HydraHarpV1T2 | RecordType::GenericT2 => (ch << 25) | t,
        });
        Ok(())
    }

    /// A marker record with mask bits 1..=15 (PicoHarp T2 replaces the tick's low 4 bits
    /// with the mask, as the hardware does).
    pub fn marker(&mut self, tick: u64, mask: u8, out: &mut Vec<u32>) -> Result<()> {
        if mask == 0 || mask > 15 {
            return Err(CoreError::Config(format!(
                "marker mask {mask} outside 1..=15"
            )));
        }
        let t = self.advance(tick, out)?;
        let m = u32::from(mask);
        out.push(match self.kind {
            RecordType::PicoHarpT2 => (15 << 28) | (t & !0xF) | m,
            RecordType::PicoHarpT3 => (15 << 28) | (m << 16) | t,
            _ => (1 << 31) | (m << 25) | t,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::tttr::{decode_columns, RecordKind};

    #[test]
    fn decoder_inverts_encoder_for_every_layout() {
        for kind in RecordType::ALL {
            let mut enc = Encoder::new(kind);
            let mut out = Vec::new();
            let mut expected = Vec::new();
            let mut tick = 5u64;
            for i in 0..2000u64 {
                // Steps from 0 up to several wrap periods, so counted overflows appear.
                tick += (i * 7919) % (3 * kind.overflow_rule().period + 1) / (1 + i % 5);
                if i % 10 == 0 {
                    let mask = 1 + (i % 15) as u8;
                    enc.marker(tick, mask, &mut out).unwrap();
                    let t = if kind == RecordType::PicoHarpT2 {
                        (tick & !0xF) | u64::from(mask)
                    } else {
                        tick
                    };
                    expected.push((RecordKind::Marker, t, mask));
                } else {
                    let ch = (i % 4) as u8;
                    enc.event(tick, ch, (i % 4096) as u16, &mut out).unwrap();
                    expected.push((RecordKind::Event, tick, ch));
                }
            }
            let cols = decode_columns(kind, &out);
            let got: Vec<_> = (0..out.len())
                .filter(|&i| cols.kind[i] != RecordKind::Overflow as u8)
                .map(|i| {
                    let k = cols.kind[i];
                    if k == RecordKind::Marker as u8 {
                        (RecordKind::Marker, cols.tick[i], cols.marker[i])
                    } else {
                        assert_eq!(k, RecordKind::Event as u8, "{kind:?}");
                        (RecordKind::Event, cols.tick[i], cols.channel[i])
                    }
                })
                .collect();
            assert_eq!(got, expected, "{kind:?}");
        }
    }

    #[test]
    fn starting_at_a_base_writes_what_an_encoder_that_reached_it_writes() {
        for kind in RecordType::ALL {
            let period = kind.overflow_rule().period;
            let base = 37 * period;
            // The old way to get there: a throwaway record just past the base.
            let mut reached = Encoder::new(kind);
            reached.marker(base + 3, 1, &mut Vec::new()).unwrap();
            assert_eq!(reached.overflow_base(), base, "{kind:?}");
            let mut started = Encoder::starting_at(kind, base);
            assert_eq!(started.overflow_base(), base);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for i in 0..50u64 {
                let tick = base + 5 + i * (period / 3 + 1);
                reached.event(tick, 1, 7, &mut a).unwrap();
                started.event(tick, 1, 7, &mut b).unwrap();
            }
            assert_eq!(a, b, "{kind:?}");
            assert!(started.event(base - 1, 0, 0, &mut b).is_err());
        }
    }

    #[test]
    fn backwards_ticks_and_bad_arguments_are_errors() {
        let mut enc = Encoder::new(RecordType::GenericT3);
        let mut out = Vec::new();
        enc.event(5000, 0, 0, &mut out).unwrap();
        assert!(enc.event(10, 0, 0, &mut out).is_err());
        assert!(enc.marker(6000, 0, &mut out).is_err());
        assert!(Encoder::new(RecordType::PicoHarpT3)
            .event(1, 4, 0, &mut out)
            .is_err());
    }
}
