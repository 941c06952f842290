//! Voxel cubes: one u32 `[z, y, x]` cube per species, grown in chunks of slices so a
//! long run never reallocates (and never copies) its history, inside a memory budget.

use std::sync::{Mutex, PoisonError};

use crate::error::{CoreError, Result};

/// What to do when the next chunk of slices would exceed the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPolicy {
    /// Sum pairs of slices (z → z/2); the caller doubles frames per slice.
    Rebin,
    /// Keep the cubes as they are; events needing a new slice are rejected.
    Refuse,
}

/// The outcome of asking for a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceAccess {
    Ready,
    /// The cubes were rebinned once; the caller must halve its slice index and try again.
    Rebinned,
    Refused,
}

#[derive(Debug)]
pub struct CubeSet {
    n_species: usize,
    ny: usize,
    nx: usize,
    chunk_z: usize,
    budget_bytes: u64,
    policy: BudgetPolicy,
    /// `blocks[c]` holds slices `c*chunk_z .. (c+1)*chunk_z` of every species, one species
    /// after the other: one allocation per chunk, large enough for huge pages.
    blocks: Vec<Vec<u32>>,
    /// Slices in use: one past the highest slice that has been asked for.
    n_slices: usize,
    /// Lowest slice written since the last `take_dirty` (usize::MAX when clean).
    dirty_from: usize,
    /// Counts added per species, kept apart so a rate per species or detector needs no
    /// pass over the cubes (and counts past a voxel's u32 are not lost to it).
    binned: Vec<u64>,
    /// `depth_profile`'s sums, brought up to date lazily: only the slices written since
    /// the last call are summed again. Summing the whole cube each time cost a long run
    /// ~0.1 ms per slice at every cube update (4 Hz), under the engine's lock.
    profile: Mutex<ProfileCache>,
}

#[derive(Debug, Default)]
struct ProfileCache {
    /// `[z][species]` flattened; slices `0..valid` are current.
    sums: Vec<u64>,
    valid: usize,
}

const TARGET_CHUNK_BYTES: usize = 1 << 20;
const MAX_CHUNK_SLICES: usize = 16;

impl CubeSet {
    pub fn new(
        n_species: usize,
        ny: usize,
        nx: usize,
        budget_bytes: u64,
        policy: BudgetPolicy,
    ) -> Result<Self> {
        if n_species == 0 || ny == 0 || nx == 0 {
            return Err(CoreError::Config(
                "cube needs at least one species, one line and one pixel".into(),
            ));
        }
        let slice_bytes = (ny * nx * 4) as u64;
        let chunk_z = (TARGET_CHUNK_BYTES / (ny * nx * 4)).clamp(1, MAX_CHUNK_SLICES);
        // Rebinning needs room for two chunks per species: one is never enough to halve into.
        let minimum = slice_bytes * chunk_z as u64 * n_species as u64 * 2;
        if budget_bytes < minimum {
            return Err(CoreError::Config(format!(
                "cube.memory_budget_bytes = {budget_bytes} is below the minimum {minimum} \
                 ({n_species} species x {chunk_z} slices x {ny}x{nx} u32, twice)"
            )));
        }
        Ok(CubeSet {
            n_species,
            ny,
            nx,
            chunk_z,
            budget_bytes,
            policy,
            blocks: Vec::new(),
            n_slices: 0,
            dirty_from: usize::MAX,
            binned: vec![0; n_species],
            profile: Mutex::default(),
        })
    }

    pub fn n_species(&self) -> usize {
        self.n_species
    }
    pub fn shape_yx(&self) -> (usize, usize) {
        (self.ny, self.nx)
    }
    pub fn n_slices(&self) -> usize {
        self.n_slices
    }
    pub fn allocated_bytes(&self) -> u64 {
        self.blocks.len() as u64 * self.chunk_bytes() * self.n_species as u64
    }
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// CRC-32 of slices `0..n_slices` of one species (little-endian u32, `[z][y][x]`):
    /// cubes built from the same input compare equal without copying them out.
    pub fn crc32(&self, species: usize) -> u32 {
        let mut h = crc32fast::Hasher::new();
        let mut bytes = Vec::with_capacity(self.slice_len() * 4);
        for z in 0..self.n_slices {
            bytes.clear();
            bytes.extend(self.slice(species, z).iter().flat_map(|v| v.to_le_bytes()));
            h.update(&bytes);
        }
        h.finalize()
    }

    fn slice_len(&self) -> usize {
        self.ny * self.nx
    }
    fn chunk_len(&self) -> usize {
        self.slice_len() * self.chunk_z
    }
    fn chunk_bytes(&self) -> u64 {
        (self.chunk_len() * 4) as u64
    }
    /// Where slice `z` of `species` starts in its block.
    fn offset(&self, species: usize, z: usize) -> usize {
        species * self.chunk_len() + (z % self.chunk_z) * self.slice_len()
    }

    /// Make slice `z` exist for every species.
    pub fn ensure_slice(&mut self, z: usize) -> SliceAccess {
        let needed_chunks = (z / self.chunk_z).saturating_add(1);
        let have = self.blocks.len();
        if needed_chunks > have {
            // Checked: a slice index from a garbled link header can be near 2^64, and a
            // wrapped product would pass the budget check and allocate without end.
            let total = ((needed_chunks - have) as u64)
                .checked_mul(self.chunk_bytes())
                .and_then(|b| b.checked_mul(self.n_species as u64))
                .and_then(|extra| extra.checked_add(self.allocated_bytes()));
            let fits = total.is_some_and(|t| t <= self.budget_bytes);
            if !fits || !self.grow(needed_chunks) {
                return match self.policy {
                    BudgetPolicy::Refuse => SliceAccess::Refused,
                    BudgetPolicy::Rebin => {
                        self.rebin();
                        SliceAccess::Rebinned
                    }
                };
            }
        }
        self.n_slices = self.n_slices.max(z + 1);
        SliceAccess::Ready
    }

    /// Allocate chunks without aborting the process when memory is short.
    fn grow(&mut self, needed_chunks: usize) -> bool {
        let len = self.chunk_len() * self.n_species;
        while self.blocks.len() < needed_chunks {
            let mut block: Vec<u32> = Vec::new();
            if block.try_reserve_exact(len).is_err() {
                return false;
            }
            advise_huge_pages(&mut block);
            block.resize(len, 0);
            self.blocks.push(block);
        }
        true
    }

    /// Sum slice pairs in place: slice z' = 2z' + (2z'+1); frees the chunks no longer used.
    fn rebin(&mut self) {
        let slice = self.slice_len();
        let cz = self.chunk_z;
        let old = self.n_slices;
        let new = old.div_ceil(2);
        for species in 0..self.n_species {
            for zn in 0..new {
                for (k, zo) in [2 * zn, 2 * zn + 1].into_iter().enumerate() {
                    // zo >= zn always, so reading zo after writing zn never sees a sum.
                    let src: Vec<u32> = if zo < old {
                        let at = self.offset(species, zo);
                        self.blocks[zo / cz][at..at + slice].to_vec()
                    } else {
                        vec![0; slice]
                    };
                    let at = self.offset(species, zn);
                    let dst = &mut self.blocks[zn / cz][at..at + slice];
                    if k == 0 {
                        dst.copy_from_slice(&src);
                    } else {
                        dst.iter_mut()
                            .zip(src)
                            .for_each(|(d, s)| *d = d.wrapping_add(s));
                    }
                }
            }
            // Clear what lies past the new end so later slices start from zero.
            for z in new..self.blocks.len() * cz {
                let at = self.offset(species, z);
                self.blocks[z / cz][at..at + slice].fill(0);
            }
        }
        self.blocks.truncate(new.div_ceil(cz).max(1));
        self.n_slices = new;
        self.dirty_from = 0;
        self.profile_stale_from(0);
    }

    /// Slice `z` (and every later one) changed since `depth_profile` last summed it.
    fn profile_stale_from(&mut self, z: usize) {
        let cache = self
            .profile
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        cache.valid = cache.valid.min(z);
    }

    /// Row `y` of slice `z` of every species, for binning one line. The slice must have
    /// been ensured.
    pub fn line_rows(&mut self, z: usize, y: usize) -> Vec<&mut [u32]> {
        let start = self.offset(0, z) + y * self.nx;
        let (nx, chunk_len) = (self.nx, self.chunk_len());
        self.dirty_from = self.dirty_from.min(z);
        self.profile_stale_from(z);
        self.blocks[z / self.chunk_z]
            .chunks_exact_mut(chunk_len)
            .map(|species| &mut species[start..start + nx])
            .collect()
    }

    /// Counts added per species since the cubes were made (whoever adds to a row says how
    /// many with `count_binned`).
    pub fn binned_by_species(&self) -> &[u64] {
        &self.binned
    }

    pub fn count_binned(&mut self, species: usize, n: u64) {
        self.binned[species] += n;
    }

    /// Row `y` of slice `z` of one species: `line_rows` without building the list, for
    /// the line-by-line commit of fixed-dwell binning. The slice must have been ensured.
    pub fn line_row(&mut self, species: usize, z: usize, y: usize) -> &mut [u32] {
        let start = self.offset(species, z) + y * self.nx;
        self.dirty_from = self.dirty_from.min(z);
        self.profile_stale_from(z);
        &mut self.blocks[z / self.chunk_z][start..start + self.nx]
    }

    fn slice(&self, species: usize, z: usize) -> &[u32] {
        let at = self.offset(species, z);
        &self.blocks[z / self.chunk_z][at..at + self.slice_len()]
    }

    fn check_range(&self, species: usize, z0: usize, z1: usize) -> Result<()> {
        if species >= self.n_species {
            return Err(CoreError::Config(format!(
                "species index {species} out of range (0..{})",
                self.n_species
            )));
        }
        if z0 > z1 || z1 > self.n_slices {
            return Err(CoreError::Config(format!(
                "slice range {z0}..{z1} outside 0..{}",
                self.n_slices
            )));
        }
        Ok(())
    }

    /// Copy slices `z0..z1` of one species into `out` (length (z1-z0)*ny*nx).
    pub fn copy_range(&self, species: usize, z0: usize, z1: usize, out: &mut [u32]) -> Result<()> {
        self.check_range(species, z0, z1)?;
        let slice = self.slice_len();
        if out.len() != (z1 - z0) * slice {
            return Err(CoreError::Config("output buffer has the wrong size".into()));
        }
        for (i, z) in (z0..z1).enumerate() {
            out[i * slice..(i + 1) * slice].copy_from_slice(self.slice(species, z));
        }
        Ok(())
    }

    /// Counts per slice and species, `[z][species]` flattened, over all slices.
    pub fn depth_profile(&self) -> Vec<u64> {
        self.depth_profile_from(0)
    }

    /// The rows of [`Self::depth_profile`] from slice `z_start` on (none past the last
    /// slice): what a live update needs after [`Self::take_dirty`], without a copy of
    /// the whole profile.
    pub fn depth_profile_from(&self, z_start: usize) -> Vec<u64> {
        let mut cache = self.profile.lock().unwrap_or_else(PoisonError::into_inner);
        let ns = self.n_species;
        let from = cache.valid.min(self.n_slices);
        cache.sums.resize(self.n_slices * ns, 0);
        for z in from..self.n_slices {
            for s in 0..ns {
                cache.sums[z * ns + s] = self.slice(s, z).iter().map(|&c| c as u64).sum();
            }
        }
        cache.valid = self.n_slices;
        cache.sums[z_start.min(self.n_slices) * ns..].to_vec()
    }

    /// Sum over slices `z0..z1` of one species: an ion map `[y, x]`.
    pub fn ion_map(&self, species: usize, z0: usize, z1: usize) -> Result<Vec<u64>> {
        self.check_range(species, z0, z1)?;
        let mut out = vec![0u64; self.slice_len()];
        for z in z0..z1 {
            out.iter_mut()
                .zip(self.slice(species, z))
                .for_each(|(o, &c)| *o += c as u64);
        }
        Ok(out)
    }

    /// The lowest slice written since the last call (None when nothing was).
    pub fn take_dirty(&mut self) -> Option<usize> {
        let d = self.dirty_from;
        self.dirty_from = usize::MAX;
        (d != usize::MAX).then_some(d)
    }
}

/// Ask the kernel to back the 2 MiB-aligned part of a new block with huge pages (the
/// usual setting lets a process opt in): first-touch faults of 4 KiB pages cost more than
/// filling a fresh cube does (~20 ms per 28 MB in a VM), and the cube is then walked
/// with fewer TLB misses.
#[cfg(target_os = "linux")]
fn advise_huge_pages(block: &mut Vec<u32>) {
    const HUGE: usize = 2 << 20;
    let start = block.as_mut_ptr() as usize;
    let end = start + block.capacity() * std::mem::size_of::<u32>();
    let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if last > first {
        // SAFETY: the range lies inside the block's own allocation, and MADV_HUGEPAGE only
        // changes how the kernel backs those pages, never their contents. A refusal
        // (THP off) is fine: the pages are then ordinary ones.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_block: &mut Vec<u32>) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(policy: BudgetPolicy, budget: u64) -> CubeSet {
        CubeSet::new(2, 4, 8, budget, policy).unwrap()
    }

    #[test]
    fn budget_below_two_chunks_is_a_config_error() {
        assert!(matches!(
            CubeSet::new(2, 4, 8, 100, BudgetPolicy::Refuse),
            Err(CoreError::Config(_))
        ));
    }

    #[test]
    fn refuse_stops_growth_at_the_budget() {
        let one_chunk = 4 * 8 * 4 * MAX_CHUNK_SLICES as u64;
        let mut c = filled(BudgetPolicy::Refuse, one_chunk * 2 * 2);
        assert_eq!(c.ensure_slice(2 * MAX_CHUNK_SLICES - 1), SliceAccess::Ready);
        assert_eq!(c.ensure_slice(2 * MAX_CHUNK_SLICES), SliceAccess::Refused);
        assert!(c.allocated_bytes() <= c.budget_bytes());
    }

    /// Found by fuzzing (link_stream, a frame header with a huge raster position): the
    /// size of the chunks up to a slice near 2^64 overflowed, which panicked in debug
    /// builds and in release could wrap below the budget and allocate without end.
    #[test]
    fn a_slice_beyond_any_budget_is_refused_or_rebinned_without_allocating() {
        for z in [usize::MAX, (1 << 58) * MAX_CHUNK_SLICES, usize::MAX / 3] {
            let mut c = CubeSet::new(1, 1, 1, 1 << 20, BudgetPolicy::Refuse).unwrap();
            assert_eq!(c.ensure_slice(z), SliceAccess::Refused, "slice {z}");
            assert_eq!(c.allocated_bytes(), 0);
            let mut c = CubeSet::new(1, 1, 1, 1 << 20, BudgetPolicy::Rebin).unwrap();
            assert_eq!(c.ensure_slice(z), SliceAccess::Rebinned, "slice {z}");
            assert_eq!(c.allocated_bytes(), 0);
        }
    }

    #[test]
    fn rebin_sums_pairs_and_keeps_every_count() {
        let one_chunk = 4 * 8 * 4 * MAX_CHUNK_SLICES as u64;
        let mut c = filled(BudgetPolicy::Rebin, one_chunk * 2 * 2);
        let n = 2 * MAX_CHUNK_SLICES;
        for z in 0..n {
            assert_eq!(c.ensure_slice(z), SliceAccess::Ready);
            c.line_rows(z, 3)[1][5] = z as u32 + 1;
        }
        let total: u64 = c.depth_profile().iter().sum();
        assert_eq!(c.ensure_slice(n), SliceAccess::Rebinned);
        assert_eq!(c.n_slices(), n / 2);
        assert_eq!(c.depth_profile().iter().sum::<u64>(), total);
        let mut out = vec![0u32; 4 * 8];
        c.copy_range(1, 3, 4, &mut out).unwrap();
        assert_eq!(out[3 * 8 + 5], 7 + 8);
        assert_eq!(c.ensure_slice(n / 2), SliceAccess::Ready);
        c.copy_range(1, n / 2, n / 2 + 1, &mut out).unwrap();
        assert!(
            out.iter().all(|&v| v == 0),
            "slices past the rebinned end start empty"
        );
    }

    /// Every slice summed afresh: what `depth_profile` must always equal.
    fn summed(c: &CubeSet) -> Vec<u64> {
        let mut out = Vec::new();
        for z in 0..c.n_slices() {
            for s in 0..c.n_species() {
                out.push(c.slice(s, z).iter().map(|&v| u64::from(v)).sum());
            }
        }
        out
    }

    #[test]
    fn the_cached_depth_profile_follows_every_write_and_rebin() {
        let one_chunk = 4 * 8 * 4 * MAX_CHUNK_SLICES as u64;
        let mut c = filled(BudgetPolicy::Rebin, one_chunk * 2 * 2);
        let mut z = 0;
        for step in 0..(8 * MAX_CHUNK_SLICES) {
            if c.ensure_slice(z) == SliceAccess::Rebinned {
                z /= 2;
                assert_eq!(c.depth_profile(), summed(&c), "after a rebin, step {step}");
                continue;
            }
            c.line_rows(z, step % 4)[step % 2][step % 8] += 3;
            c.line_row(1, z, 2)[1] += 1;
            if step % 5 == 0 && z > 2 {
                // A late line: a slice before the newest one.
                c.line_row(0, z - 2, 0)[0] += 7;
            }
            if step % 3 == 0 {
                assert_eq!(c.depth_profile(), summed(&c), "step {step}");
            }
            z += 1;
        }
        assert!(c.n_slices() > 0);
        assert_eq!(c.depth_profile(), summed(&c));
    }

    #[test]
    fn a_profile_from_a_slice_on_is_the_tail_of_the_whole() {
        let mut c = filled(BudgetPolicy::Refuse, 1 << 24);
        for z in 0..5 {
            c.ensure_slice(z);
            c.line_row(z % 2, z, 1)[3] += z as u32 + 1;
        }
        let whole = summed(&c);
        let ns = c.n_species();
        for z in 0..=5 {
            assert_eq!(c.depth_profile_from(z), whole[z * ns..], "from {z}");
        }
        assert!(
            c.depth_profile_from(9).is_empty(),
            "past the last slice: no rows"
        );
    }

    #[test]
    fn ranges_are_checked() {
        let mut c = filled(BudgetPolicy::Refuse, 1 << 24);
        c.ensure_slice(1);
        let mut out = vec![0u32; 32];
        assert!(c.copy_range(0, 1, 3, &mut out).is_err());
        assert!(c.copy_range(2, 0, 1, &mut out).is_err());
        assert!(c.ion_map(0, 0, 2).is_ok());
    }
}
