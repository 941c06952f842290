//! Fuzz harnesses: one function per input surface of the core, taking arbitrary bytes.
//!
//! The cargo-fuzz targets in `rust/fuzz` call these, and so does the stable replay of
//! the committed corpus (`rust/core/tests/fuzz_corpus.rs`), so a corpus file means the
//! same thing in both. A harness never fails on bad input: bad input must end as an
//! error, a counted rejection or a skipped byte. It panics (which the fuzzer reports)
//! only when the core panics or breaks an invariant its documentation promises, such
//! as `events == binned + rejected_total + pending`. Layout of each target's input and
//! the invariants checked: `docs/fuzzing.md`.

mod journal;
mod link;
mod potentiostat;
mod ptu;

pub use journal::journal_segment;
pub use link::{link_stream, tttr_records};
pub use potentiostat::potentiostat_wire;
pub use ptu::ptu_header;

/// A harness: one fuzz input in, a panic only for a bug.
pub type Harness = fn(&[u8]);

/// Every harness by target name (the names of `rust/fuzz/fuzz_targets/*.rs` and of the
/// corpus directories).
pub const TARGETS: &[(&str, Harness)] = &[
    ("link_stream", link_stream),
    ("tttr_records", tttr_records),
    ("ptu_header", ptu_header),
    ("potentiostat_wire", potentiostat_wire),
    ("journal_segment", journal_segment),
];

/// Reads fields off the front of a fuzz input; past its end every read gives zeros, so
/// any input, however short, means something.
#[derive(Debug, Clone)]
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Up to `n` bytes (fewer at the end).
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }
    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
    pub(crate) fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub(crate) fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Cut `len` bytes into pieces at the given points (taken modulo `len + 1`, sorted):
/// the chunking a stream arrives in.
pub(crate) fn pieces(len: usize, cuts: impl IntoIterator<Item = usize>) -> Vec<(usize, usize)> {
    let mut at: Vec<usize> = cuts.into_iter().map(|c| c % (len + 1)).collect();
    at.push(0);
    at.push(len);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| (w[0], w[1])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_harness_takes_empty_and_short_inputs() {
        for (name, harness) in TARGETS {
            for data in [&[][..], &[0], &[0xFF; 7], &[1; 300]] {
                let outcome = std::panic::catch_unwind(|| harness(data));
                assert!(outcome.is_ok(), "{name} on {data:?}");
            }
        }
    }

    #[test]
    fn pieces_cover_the_whole_stream_in_order() {
        assert_eq!(pieces(0, []), vec![]);
        assert_eq!(
            pieces(10, [3, 3, 26, 7]),
            vec![(0, 3), (3, 4), (4, 7), (7, 10)]
        );
        let mut inp = Input::new(&[1, 2, 3]);
        assert_eq!((inp.u16(), inp.u32(), inp.is_empty()), (0x0201, 3, true));
    }
}
