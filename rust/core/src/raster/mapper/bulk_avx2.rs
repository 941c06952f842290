//! The bulk loop eight records at a time (x86-64 with AVX2, checked at run time): the
//! field decoding, the checks and the division run on vectors, only the increments stay
//! scalar. It takes whole blocks whose records the scalar loop would all bin (a code of
//! at least 0, in order, inside the pixels) and stops in the first block that holds
//! anything else, which the scalar loop then handles record by record.
//!
//! Only for the HydraHarp family of layouts (key = special bit and channel), with a few
//! channels that belong to a polarity: a channel's code is then found by comparing with
//! each of them (a gather from the code table costs more than all the rest here).

use std::arch::x86_64::*;

use crate::link::tttr::{EventLayout, NOT_EVENT, OVERFLOW};

/// Channels with a code other than the dump row's, at most.
const MAX_OWNED: usize = 8;

/// Everything about the open line the vector loop needs, in 32-bit lanes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lanes {
    time_mask: u32,
    span: u32,
    /// `x = off * magic >> div_shift` for `off < span`.
    magic: u32,
    div_shift: u32,
    dump: i32,
    /// (channel, code) of the channels whose code is not the dump row's.
    owned: [(i32, i32); MAX_OWNED],
    n_owned: usize,
}

/// Offsets stay inside `(-2^30, 2^30 + 2^28)`: exact in i32.
const LIMIT: i64 = 1 << 30;

impl Lanes {
    /// None when the line or the record layout does not suit the vector loop, or the CPU
    /// has no AVX2.
    pub(super) fn new(
        layout: &EventLayout,
        code: &[i32; 128],
        dump: i32,
        span: u64,
        dwell: u64,
    ) -> Option<Self> {
        let hydraharp = layout.key_shift == 25
            && layout.channel.iter().enumerate().all(|(k, &ch)| match k {
                0..64 => usize::from(ch) == k,
                _ => ch == NOT_EVENT || ch == OVERFLOW,
            });
        if !hydraharp || !std::arch::is_x86_feature_detected!("avx2") || layout.time_mask >= 1 << 28
        {
            return None;
        }
        let mut owned = [(0, 0); MAX_OWNED];
        let mut n_owned = 0;
        for (ch, &c) in code[..64].iter().enumerate().filter(|(_, &c)| c != dump) {
            *owned.get_mut(n_owned)? = (ch as i32, c);
            n_owned += 1;
        }
        let (magic, div_shift) = divider(span, dwell)?;
        Some(Lanes {
            time_mask: layout.time_mask,
            span: span as u32,
            magic,
            div_shift,
            dump,
            owned,
            n_owned,
        })
    }
}

/// `(magic, shift)` with `off / dwell = off * magic >> shift` for every `off < span`, a
/// 32-bit magic and a product below 2^64: Lemire, Kaser & Kurz 2019, theorem 1 with N-bit
/// offsets and F = N + L bits of fraction (L = ceil(log2 dwell)); the magic then has at
/// most N + 1 bits, the product at most 2N + 1.
pub(super) fn divider(span: u64, dwell: u64) -> Option<(u32, u32)> {
    if !(2..=LIMIT as u64).contains(&span) || dwell < 2 {
        return None;
    }
    let n = 64 - (span - 1).leading_zeros();
    let l = 64 - (dwell - 1).leading_zeros();
    let f = n + l;
    let magic = ((1u64 << f) - 1) / dwell + 1;
    Some((u32::try_from(magic).ok()?, f))
}

/// Takes whole blocks of 8 records from `i` on; returns the new `i` and the offset of the
/// last record taken (`not_before` unchanged if none). `to_pixel` and `not_before` are
/// those of the scalar loop.
///
/// # Safety
///
/// The CPU has AVX2 (as `Lanes::new` checked), and `bins` holds every cell that a code of
/// `lanes` plus a pixel below `span / dwell` addresses.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn run(
    lanes: Lanes,
    records: &[u32],
    mut i: usize,
    bins: &mut [u32],
    to_pixel: u64,
    mut not_before: u64,
) -> (usize, u64) {
    let k = to_pixel as i64;
    if !(-LIMIT..=LIMIT).contains(&k) || not_before >= u64::from(lanes.span) {
        return (i, not_before);
    }
    let to_pixel = _mm256_set1_epi32(k as i32);
    let time_mask = _mm256_set1_epi32(lanes.time_mask as i32);
    let last_channel = _mm256_set1_epi32(63);
    let last_pixel = _mm256_set1_epi32(lanes.span as i32 - 1);
    let magic = _mm256_set1_epi32(lanes.magic as i32);
    let div_shift = _mm_cvtsi32_si128(lanes.div_shift as i32);
    let previous = _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6);
    let dump = _mm256_set1_epi32(lanes.dump);
    let owned = &lanes.owned[..lanes.n_owned];
    let last = _mm256_set1_epi32(7);
    // Broadcast of the offset of the last record taken; the loop carries nothing else from
    // block to block, so blocks overlap (a block that is not all good ends the loop).
    let mut latest = _mm256_set1_epi32(not_before as i32);
    let mut idx = [0u32; 8];
    while let Some(block) = records.get(i..i + 8) {
        // SAFETY: `block` holds 8 u32, and the loads and stores are unaligned ones.
        let rec = unsafe { _mm256_loadu_si256(block.as_ptr().cast()) };
        // Key = special bit and channel: specials are above the last channel.
        let key = _mm256_srli_epi32::<25>(rec);
        let mut code = dump;
        for &(ch, c) in owned {
            let this = _mm256_cmpeq_epi32(key, _mm256_set1_epi32(ch));
            code = _mm256_blendv_epi8(code, _mm256_set1_epi32(c), this);
        }
        let off = _mm256_add_epi32(_mm256_and_si256(rec, time_mask), to_pixel);
        // Each offset against the one before it (the first against the last taken).
        let before = _mm256_blend_epi32::<1>(_mm256_permutevar8x32_epi32(off, previous), latest);
        // Sign bits: a special, a negative code, an earlier offset, one past the last pixel.
        let bad = _mm256_or_si256(
            _mm256_or_si256(code, _mm256_cmpgt_epi32(key, last_channel)),
            _mm256_or_si256(
                _mm256_cmpgt_epi32(before, off),
                _mm256_cmpgt_epi32(off, last_pixel),
            ),
        );
        let even = _mm256_srl_epi64(_mm256_mul_epu32(off, magic), div_shift);
        let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(off), magic);
        let odd = _mm256_slli_epi64::<32>(_mm256_srl_epi64(odd, div_shift));
        let x = _mm256_blend_epi32::<0b1010_1010>(even, odd);
        let at = _mm256_add_epi32(code, x);
        // SAFETY: as above.
        unsafe { _mm256_storeu_si256(idx.as_mut_ptr().cast(), at) };
        let bad = _mm256_movemask_ps(_mm256_castsi256_ps(bad)) as u32;
        if bad != 0 {
            let good = bad.trailing_zeros() as usize;
            // SAFETY: the lanes taken hold a code >= 0 plus a pixel below the span's
            // (the caller's promise covers them).
            unsafe { count(bins, &idx[..good]) };
            if good > 0 {
                latest = _mm256_permutevar8x32_epi32(off, _mm256_set1_epi32(good as i32 - 1));
            }
            i += good;
            break;
        }
        // SAFETY: as above.
        unsafe { count(bins, &idx) };
        latest = _mm256_permutevar8x32_epi32(off, last);
        i += 8;
    }
    // Unchanged when nothing was taken: `latest` still holds `not_before`.
    not_before = _mm256_cvtsi256_si32(latest) as u32 as u64;
    (i, not_before)
}

/// # Safety
///
/// Every cell index is below `bins.len()`.
#[inline(always)]
unsafe fn count(bins: &mut [u32], cells: &[u32]) {
    for &at in cells {
        debug_assert!((at as usize) < bins.len());
        // SAFETY: the caller's promise.
        let cell = unsafe { bins.get_unchecked_mut(at as usize) };
        *cell = cell.wrapping_add(1);
    }
}
