//! The fit's geometry: convex hulls of the buckets' lowest and highest pairs, and the
//! band of least width that holds every pair.
//!
//! The lower hull alone has a tail: when by chance no pair arrives nearly on time over a
//! stretch of one half of the window, nothing below the hull shows it and the fitted
//! rate tilts. With 0–2 ms uniform delay at 100 pairs/s, 4.7e-4 of 10 s runs ended above
//! 50 µs (worst 84 µs in 2e5); slopes from several hull points or a posterior over the
//! lines under the hull only got to ~7e-5. When delays are bounded as well, the band's
//! top edge says as much about the rate as its bottom edge, and a tilt needs both edges
//! empty at once (0 of 2e5 runs above 50 µs, worst 40 µs). So the line comes from the
//! band when its top edge is as sharp as the bottom one; otherwise (exponential or
//! heavy-tailed delays, late outliers) the lower hull decides, as before.

/// Equal stretches of the window in which the top edge must be found.
const SEGMENTS: usize = 8;
/// A stretch with `m` pairs must have a pair within `SHARP / m` of the band's width
/// from the top edge (uniform delays: the nearest is ~1 / m away; missed with
/// probability ~e^-SHARP).
const SHARP: f64 = 8.0;
/// The typical bucket's highest pair may lie at most this many times deeper below the
/// top edge than its lowest pair lies above the bottom edge.
const EDGE_RATIO: f64 = 2.0;
/// Slack on the least width, in units of width / pairs (the spacing of the nearest pairs
/// to an edge), that decides which lines count as consistent with the band.
const SLACK_PAIRS: f64 = 4.0;

/// Points sorted by `x`, and the indices of their lower (or upper) convex hull.
pub(super) struct Side<'a> {
    pub xs: &'a [f64],
    pub es: &'a [f64],
    pub hull: &'a [usize],
}

/// Monotone chain over points sorted by `x`: the lower hull, or the upper one with `upper`.
pub(super) fn hull(xs: &[f64], es: &[f64], upper: bool, out: &mut Vec<usize>) {
    let sign = if upper { -1.0 } else { 1.0 };
    out.clear();
    for i in 0..xs.len() {
        while let [.., a, b] = out[..] {
            let cross = (xs[b] - xs[a]) * (es[i] - es[a]) - (es[b] - es[a]) * (xs[i] - xs[a]);
            if sign * cross > 0.0 {
                break;
            }
            out.pop();
        }
        out.push(i);
    }
}

/// The buckets' lowest pairs (`lo`), highest pairs (`hi`) and pair counts, in bucket order.
pub(super) struct Band<'a> {
    pub lo: Side<'a>,
    pub hi: Side<'a>,
    pub counts: &'a [u64],
}

impl Band<'_> {
    /// Intercept of the lowest line of slope `s` under every pair.
    fn bottom(&self, s: f64) -> f64 {
        let lo = &self.lo;
        lo.hull
            .iter()
            .map(|&i| lo.es[i] - s * lo.xs[i])
            .fold(f64::INFINITY, f64::min)
    }
    /// Intercept of the highest line of slope `s` over every pair.
    fn top(&self, s: f64) -> f64 {
        let hi = &self.hi;
        hi.hull
            .iter()
            .map(|&i| hi.es[i] - s * hi.xs[i])
            .fold(f64::NEG_INFINITY, f64::max)
    }
    /// Width of the band of slope `s`: convex in `s` (a max minus a min of lines).
    fn width(&self, s: f64) -> f64 {
        self.top(s) - self.bottom(s)
    }

    /// The line `e = c + s·x` in the middle of the lines consistent with the band, or
    /// None when the top edge is not sharp enough to trust. `lower` is the slope fitted
    /// to the lower hull alone; `scratch` is reused memory.
    pub(super) fn fit(&self, pairs: u64, lower: f64, scratch: &mut Vec<f64>) -> Option<(f64, f64)> {
        // The typical bucket is judged at the lower hull's slope: the band's own hugs the
        // top pairs, and with few of them makes a soft top edge look sharp.
        if !self.typical(lower, scratch) {
            return None;
        }
        // The least width is at a hull edge's slope; the widths along the sorted slopes
        // are convex, so a binary search finds it.
        scratch.clear();
        for side in [&self.lo, &self.hi] {
            scratch.extend(side.hull.windows(2).map(|w| {
                let (a, b) = (w[0], w[1]);
                (side.es[b] - side.es[a]) / (side.xs[b] - side.xs[a])
            }));
        }
        scratch.retain(|s| s.is_finite());
        scratch.sort_unstable_by(f64::total_cmp);
        let (mut a, mut b) = (0, scratch.len().checked_sub(1)?);
        while a < b {
            let m = (a + b) / 2;
            if self.width(scratch[m]) <= self.width(scratch[m + 1]) {
                b = m;
            } else {
                a = m + 1;
            }
        }
        let s0 = scratch[a];
        // Coverage at the band's slope: the lower hull's may be the tilted one.
        if !self.covered(s0) {
            return None;
        }
        let least = self.width(s0);
        // Slopes whose band is at most `limit` wide are all about as likely; take the
        // middle one, and the middle of its feasible offsets (still under every pair).
        let limit = least * (1.0 + SLACK_PAIRS / pairs.max(1) as f64);
        let span = self.lo.xs[self.lo.xs.len() - 1] - self.lo.xs[0];
        let reach = |dir: f64| {
            let (mut ok, mut bad) = (0.0, (limit - least) / span);
            if bad.is_nan() || bad <= 0.0 {
                return 0.0;
            }
            for _ in 0..64 {
                if self.width(s0 + dir * bad) > limit {
                    break;
                }
                ok = bad;
                bad *= 2.0;
            }
            for _ in 0..20 {
                let m = 0.5 * (ok + bad);
                if self.width(s0 + dir * m) <= limit {
                    ok = m;
                } else {
                    bad = m;
                }
            }
            ok
        };
        let s = s0 + 0.5 * (reach(1.0) - reach(-1.0));
        let c = 0.5 * (self.bottom(s) + self.top(s) - limit);
        Some((c, s))
    }

    /// Whether the typical bucket has its highest pair as near the top edge as its
    /// lowest pair is near the bottom one, at slope `s`.
    fn typical(&self, s: f64, scratch: &mut Vec<f64>) -> bool {
        let (top, bottom) = (self.top(s), self.bottom(s));
        let (lo, hi) = (&self.lo, &self.hi);
        let n = lo.xs.len();
        let mut median = |f: &dyn Fn(usize) -> f64| {
            scratch.clear();
            scratch.extend((0..n).map(f));
            *scratch.select_nth_unstable_by(n / 2, f64::total_cmp).1
        };
        let depth = median(&|i| top - (hi.es[i] - s * hi.xs[i]));
        let height = median(&|i| (lo.es[i] - s * lo.xs[i]) - bottom);
        depth <= EDGE_RATIO * height
    }

    /// Whether no stretch of the window lacks a pair near the top edge of slope `s`.
    fn covered(&self, s: f64) -> bool {
        let top = self.top(s);
        let width = top - self.bottom(s);
        let (lo, hi) = (&self.lo, &self.hi);
        let n = lo.xs.len();
        let (x0, x1) = (lo.xs[0], lo.xs[n - 1]);
        let mut pairs = [0u64; SEGMENTS];
        let mut nearest = [f64::INFINITY; SEGMENTS];
        for i in 0..n {
            let k = ((hi.xs[i] - x0) / (x1 - x0) * SEGMENTS as f64) as usize;
            let k = k.min(SEGMENTS - 1);
            pairs[k] += self.counts[i];
            nearest[k] = nearest[k].min(top - (hi.es[i] - s * hi.xs[i]));
        }
        pairs
            .iter()
            .zip(nearest)
            .all(|(&m, d)| m > 0 && d <= SHARP * width / m as f64)
    }
}
