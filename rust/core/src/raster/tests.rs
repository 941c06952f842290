//! Hand-computed cases of docs/raster.md, check by check.

use super::mapper::FastDiv;
use super::*;
use crate::counters::{Counters, Reject};
use crate::cube::BudgetPolicy;
use crate::cube::CubeSet;

const FRAME: u8 = 4;
const START: u8 = 1;
const STOP: u8 = 2;

fn config(switching: Switching, settle: u64, stops: bool) -> RasterConfig {
    RasterConfig {
        nx: 4,
        ny: 2,
        dwell_ticks: 12,
        line_settle_ticks: 5,
        flyback_ticks: 7,
        line_tolerance_ticks: 0,
        frames_per_slice: 1,
        markers: MarkerMasks {
            frame: FRAME,
            line_start: START,
            line_stop: if stops { STOP } else { 0 },
            mass_switch: 0,
        },
        frame_marker_at: FrameMarkerAt::Start,
        polarities: vec![
            Polarity {
                name: "positive".into(),
                channels: vec![0],
                species: vec!["A".into(), "B".into(), "C".into()],
                switching,
                settle_ticks: settle,
            },
            Polarity {
                name: "negative".into(),
                channels: vec![1],
                species: vec!["N".into()],
                switching: Switching::PerFrame,
                settle_ticks: 0,
            },
        ],
    }
}

struct Run {
    raster: Raster,
    cubes: CubeSet,
    c: Counters,
}

impl Run {
    fn new(cfg: RasterConfig, budget: u64, policy: BudgetPolicy) -> Run {
        let raster = Raster::new(cfg).unwrap();
        let cubes = CubeSet::new(raster.n_species(), 2, 4, budget, policy).unwrap();
        Run {
            raster,
            cubes,
            c: Counters::default(),
        }
    }
    fn m(&mut self, t: u64, mask: u8) {
        self.raster.marker(t, mask, &mut self.cubes, &mut self.c);
    }
    fn e(&mut self, t: u64, ch: u8) {
        self.raster.event(t, ch, &mut self.c);
    }
    fn voxel(&self, s: usize, z: usize, y: usize, x: usize) -> u32 {
        let mut out = vec![0u32; 8];
        self.cubes.copy_range(s, z, z + 1, &mut out).unwrap();
        out[y * 4 + x]
    }
    fn rejected(&self, r: Reject) -> u64 {
        self.c.rejected[r as usize]
    }
    /// Every voxel of each species, summed.
    fn cube_totals(&self) -> Vec<u64> {
        let n = self.cubes.n_slices() * 8;
        (0..self.raster.n_species())
            .map(|s| {
                let mut out = vec![0u32; n];
                self.cubes
                    .copy_range(s, 0, self.cubes.n_slices(), &mut out)
                    .unwrap();
                out.iter().map(|&v| u64::from(v)).sum()
            })
            .collect()
    }
    fn balanced(&self) -> bool {
        self.c.events == self.c.binned + self.c.rejected_total() + self.raster.pending()
    }
}

#[test]
fn maps_a_hand_computed_frame() {
    let mut r = Run::new(
        config(Switching::PerFrame, 0, true),
        1 << 20,
        BudgetPolicy::Refuse,
    );
    r.e(50, 0); // before any frame
    r.m(100, FRAME);
    r.e(105, 0); // frame started, no line yet
    r.m(110, START);
    r.e(112, 0); // settle (dt 2 < 5)
    r.e(115, 0); // x 0
    r.e(126, 1); // x 0, negative
    r.e(127, 0); // x 1
    r.e(162, 0); // x 3 (off 47)
    r.e(200, 9); // unknown channel
    r.m(163, STOP); // 5 + 4*12 = 53 ticks: good line
    r.e(164, 0); // after the stop: flyback
    r.m(170, START);
    r.e(175, 1); // y 1, x 0
    r.m(223, STOP);
    r.m(300, FRAME | START); // frame 1, line 0 at once
    r.e(305, 0); // frame 1 → species B, x 0
    r.m(353, STOP);
    assert_eq!(r.voxel(0, 0, 0, 0), 1);
    assert_eq!(r.voxel(0, 0, 0, 1), 1);
    assert_eq!(r.voxel(0, 0, 0, 3), 1);
    assert_eq!(r.voxel(3, 0, 0, 0), 1);
    assert_eq!(r.voxel(3, 0, 1, 0), 1);
    assert_eq!(r.voxel(1, 1, 0, 0), 1);
    assert_eq!(r.rejected(Reject::BeforeFirstFrame), 1);
    assert_eq!(r.rejected(Reject::BeforeFirstLine), 1);
    assert_eq!(r.rejected(Reject::LineSettle), 1);
    assert_eq!(r.rejected(Reject::Flyback), 1);
    assert_eq!(r.rejected(Reject::UnknownChannel), 1);
    assert_eq!(r.c.binned, 6);
    assert_eq!(r.c.lines_good, 3);
    assert_eq!(r.c.frames_bad_line_count, 0);
    assert!(r.balanced());
    assert_eq!(r.cubes.binned_by_species(), r.cube_totals());
    assert_eq!(r.cubes.binned_by_species()[..4], [3, 1, 0, 2]);
}

#[test]
fn measured_dwell_counts_binned_per_species_too() {
    let mut cfg = config(Switching::PerFrame, 0, true);
    cfg.dwell_ticks = 0;
    let mut r = Run::new(cfg, 1 << 20, BudgetPolicy::Refuse);
    r.m(100, FRAME | START);
    for t in [105, 110, 120, 130, 140] {
        r.e(t, 0);
    }
    r.e(125, 1);
    r.m(150, STOP);
    r.m(160, START);
    r.e(170, 1);
    r.m(210, STOP); // as long as the first: a good line
    let by_species = r.cubes.binned_by_species();
    assert_eq!(by_species, r.cube_totals());
    assert_eq!(by_species.iter().sum::<u64>(), r.c.binned);
    assert!(by_species[0] == 5 && by_species[3] >= 1, "{by_species:?}");
    assert!(r.balanced());
}

#[test]
fn a_line_of_the_wrong_length_bins_nothing() {
    let mut r = Run::new(
        config(Switching::PerFrame, 0, true),
        1 << 20,
        BudgetPolicy::Refuse,
    );
    r.m(0, FRAME);
    r.m(10, START);
    r.e(20, 0);
    r.e(30, 1);
    assert_eq!(r.raster.pending(), 2);
    r.m(10 + 53 + 12, STOP); // one pixel too long: a lost marker or overflow
    assert_eq!(r.rejected(Reject::BadLine), 2);
    assert_eq!(r.c.binned, 0);
    assert_eq!(r.c.lines_bad, 1);
    r.m(100, START); // a line closed by the next start while stops are expected
    r.e(110, 0);
    r.m(200, START);
    assert_eq!(r.rejected(Reject::BadLine), 3);
    assert!(r.balanced());
}

#[test]
fn without_stop_markers_the_line_period_is_checked() {
    let mut r = Run::new(
        config(Switching::PerFrame, 0, false),
        1 << 20,
        BudgetPolicy::Refuse,
    );
    r.m(0, FRAME);
    r.m(10, START);
    r.e(20, 0);
    r.m(10 + 53 + 7, START); // settle + pixels + flyback: good
    r.e(75, 0);
    r.m(70 + 53 + 8, FRAME); // frame closes line 1: long enough
    assert_eq!(r.c.binned, 2);
    assert_eq!(r.c.frames_bad_line_count, 0);
    r.m(140, START);
    r.e(150, 0);
    r.m(150, START); // far too short
    assert_eq!(r.rejected(Reject::BadLine), 1);
    assert!(r.balanced());
}

#[test]
fn per_pixel_switching_splits_the_dwell() {
    // dwell 12 split three ways: steps start at 0, 4, 8; settle 1.
    let mut r = Run::new(
        config(Switching::PerPixel, 1, true),
        1 << 20,
        BudgetPolicy::Refuse,
    );
    r.m(0, FRAME);
    r.m(100, START);
    for off in [0u64, 1, 3, 4, 5, 8, 9, 11, 12, 13] {
        r.e(100 + 5 + off, 0);
    }
    r.m(153, STOP);
    assert_eq!(r.rejected(Reject::MassSettle), 4); // offsets 0, 4, 8, 12
    assert_eq!(r.voxel(0, 0, 0, 0), 2); // 1, 3
    assert_eq!(r.voxel(1, 0, 0, 0), 1); // 5
    assert_eq!(r.voxel(2, 0, 0, 0), 2); // 9, 11
    assert_eq!(r.voxel(0, 0, 0, 1), 1); // 13
    assert!(r.balanced());
}

#[test]
fn per_frame_mass_settle_counts_from_the_frame_marker() {
    let mut r = Run::new(
        config(Switching::PerFrame, 30, true),
        1 << 20,
        BudgetPolicy::Refuse,
    );
    r.m(0, FRAME);
    r.m(10, START);
    r.e(20, 0); // 20 < 30: settling
    r.e(20, 1); // the negative polarity has no settle
    r.e(40, 0);
    r.m(63, STOP);
    assert_eq!(r.rejected(Reject::MassSettle), 1);
    assert_eq!(r.c.binned, 2);
}

#[test]
fn extra_lines_and_short_frames_are_counted() {
    let mut r = Run::new(
        config(Switching::PerFrame, 0, true),
        1 << 20,
        BudgetPolicy::Refuse,
    );
    r.m(0, FRAME);
    for y in 0..3u64 {
        r.m(100 * y, START);
        r.e(100 * y + 10, 0);
        r.m(100 * y + 53, STOP);
    }
    assert_eq!(r.rejected(Reject::LineOverrun), 1);
    r.m(1000, FRAME);
    assert_eq!(r.c.frames_bad_line_count, 1);
    r.m(1100, START);
    r.m(1153, STOP);
    r.m(2000, FRAME);
    assert_eq!(r.c.frames_bad_line_count, 2);
    assert!(r.balanced());
}

#[test]
fn out_of_order_records_are_rejected_not_binned() {
    let mut r = Run::new(
        config(Switching::PerFrame, 0, true),
        1 << 20,
        BudgetPolicy::Refuse,
    );
    r.m(100, FRAME);
    r.m(110, START);
    r.e(130, 0);
    r.e(120, 0);
    r.m(105, STOP);
    assert_eq!(r.rejected(Reject::OutOfOrder), 1);
    assert_eq!(r.c.markers_out_of_order, 1);
    r.m(163, STOP);
    assert_eq!(r.c.binned, 1);
}

#[test]
fn link_gap_drops_the_open_line_as_link_gap() {
    let mut r = Run::new(
        config(Switching::PerFrame, 0, true),
        1 << 20,
        BudgetPolicy::Refuse,
    );
    r.m(0, FRAME);
    r.m(10, START);
    r.e(20, 0);
    r.raster.link_gap((1, 1), &mut r.cubes, &mut r.c);
    r.e(25, 0); // the rest of a line whose start may be lost
    assert_eq!(r.rejected(Reject::LinkGap), 2);
    r.m(30, START);
    r.e(40, 0);
    r.m(83, STOP);
    assert_eq!(r.c.binned, 1);
    // Once a line has started again, the time between lines is ordinary flyback.
    r.e(85, 0);
    assert_eq!(r.rejected(Reject::LinkGap), 2);
    assert_eq!(r.rejected(Reject::Flyback), 1);
    assert!(r.balanced());
}

#[test]
fn refused_budget_rejects_with_reason_budget() {
    let slice = 2 * 4 * 4;
    let chunk = slice * 16;
    let mut r = Run::new(
        config(Switching::PerFrame, 0, true),
        chunk * 4 * 2,
        BudgetPolicy::Refuse,
    );
    for f in 0..40u64 {
        r.m(1000 * f, FRAME);
        r.m(1000 * f + 10, START);
        r.e(1000 * f + 20, 0);
        r.m(1000 * f + 63, STOP);
    }
    assert_eq!(r.c.binned, 32);
    assert_eq!(r.rejected(Reject::Budget), 8);
    assert!(r.balanced());
}

#[test]
fn invalid_configs_name_the_key() {
    let mut cfg = config(Switching::PerFrame, 0, true);
    cfg.polarities[1].channels = vec![0];
    let err = Raster::new(cfg).unwrap_err().to_string();
    assert!(err.contains("channel 0 belongs to two polarities"), "{err}");
    let mut cfg = config(Switching::PerPixel, 4, true);
    cfg.dwell_ticks = 12;
    assert!(Raster::new(cfg).is_err());
    let mut cfg = config(Switching::PerFrame, 0, false);
    cfg.dwell_ticks = 0;
    assert!(Raster::new(cfg)
        .unwrap_err()
        .to_string()
        .contains("line_stop"));
}

#[test]
fn fast_division_is_exact() {
    let mut seed = 12345u64;
    for d in (1..2000u64).chain([u32::MAX as u64, (1 << 40) + 7, u64::MAX / 3, u64::MAX]) {
        let f = FastDiv::new(d);
        let top = (1u64 << 63) - 1;
        for n in [
            0,
            1,
            d - 1,
            d,
            d.wrapping_add(1),
            top,
            top - 1,
            d.wrapping_mul(977),
        ] {
            let n = n & top;
            assert_eq!(f.div(n), n / d, "{n} / {d}");
        }
        for _ in 0..50 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = seed >> 1;
            assert_eq!(f.div(n), n / d, "{n} / {d}");
        }
    }
}

#[test]
fn end_markers_close_frames_instead_of_opening_them() {
    let mut cfg = config(Switching::PerFrame, 0, true);
    cfg.frame_marker_at = FrameMarkerAt::End;
    let mut r = Run::new(cfg, 1 << 20, BudgetPolicy::Refuse);
    r.e(5, 0); // frame 0 is under way, but no line yet
    for (f, t0) in [(0u64, 10u64), (1, 200)] {
        for y in 0..2 {
            r.m(t0 + 60 * y, START);
            r.e(t0 + 60 * y + 5, 0);
            r.m(t0 + 60 * y + 53, STOP);
        }
        r.m(t0 + 150, FRAME);
        assert_eq!(r.voxel(f as usize, f as usize, 1, 0), 1);
    }
    assert_eq!(r.rejected(Reject::BeforeFirstLine), 1);
    assert_eq!(r.c.frames_bad_line_count, 0);
    assert_eq!(r.cubes.n_slices(), 2);
}

/// Found by fuzzing (link_stream): a link header that puts an end-marked raster at the
/// last frame number overflowed the frame count at the next frame marker.
#[test]
fn a_frame_marker_after_the_last_frame_number_does_not_overflow() {
    for at in [FrameMarkerAt::End, FrameMarkerAt::Start] {
        let mut cfg = config(Switching::PerFrame, 0, true);
        cfg.frame_marker_at = at;
        let mut r = Run::new(cfg, 1 << 20, BudgetPolicy::Refuse);
        r.raster.link_gap((u64::MAX, 0), &mut r.cubes, &mut r.c);
        for t0 in [0u64, 200] {
            r.m(t0, FRAME);
            r.m(t0 + 10, START);
            r.e(t0 + 20, 0);
            r.m(t0 + 63, STOP);
        }
        assert_eq!(r.c.events, 2);
        assert!(r.balanced(), "{at:?}");
    }
}
