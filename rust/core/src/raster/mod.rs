//! Raster mapping: detector events + sync markers → (species, z, y, x) or a counted
//! rejection. The rules are written down in `docs/raster.md`; this file follows them
//! check by check.
//!
//! Events of a line are held until the line closes, because only its closing marker
//! tells whether the line was good: a lost overflow or a missed marker must not put
//! counts into the wrong pixels.

use crate::error::{CoreError, Result};

mod mapper;
#[cfg(test)]
mod tests;

pub use mapper::{Raster, Taken};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switching {
    /// The magnet steps once per frame through the polarity's species.
    PerFrame,
    /// Every pixel's dwell is split evenly among the polarity's species.
    PerPixel,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Polarity {
    pub name: String,
    pub channels: Vec<u8>,
    pub species: Vec<String>,
    pub switching: Switching,
    pub settle_ticks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MarkerMasks {
    pub frame: u8,
    pub line_start: u8,
    pub line_stop: u8,
    pub mass_switch: u8,
}

/// Where the frame marker stands in the raster. Instruments differ: some mark the start
/// of each frame, others (PicoQuant image files among them) the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameMarkerAt {
    #[default]
    Start,
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RasterConfig {
    pub nx: u32,
    pub ny: u32,
    /// Pixel dwell in ticks; 0 = measured per line from its start and stop markers.
    pub dwell_ticks: u64,
    pub line_settle_ticks: u64,
    pub flyback_ticks: u64,
    pub line_tolerance_ticks: u64,
    pub frames_per_slice: u32,
    pub markers: MarkerMasks,
    pub frame_marker_at: FrameMarkerAt,
    pub polarities: Vec<Polarity>,
}

impl RasterConfig {
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(CoreError::Config(m));
        if self.nx == 0 || self.ny == 0 {
            return err(format!(
                "raster.nx and raster.ny must be > 0 (got {} x {})",
                self.nx, self.ny
            ));
        }
        if self.frames_per_slice == 0 {
            return err("raster.frames_per_slice must be > 0".into());
        }
        let m = self.markers;
        if m.frame == 0 || m.line_start == 0 {
            return err("raster.markers: frame and line_start bits are required".into());
        }
        let masks = [m.frame, m.line_start, m.line_stop, m.mass_switch];
        for (i, a) in masks.iter().enumerate() {
            for b in &masks[i + 1..] {
                if a & b != 0 {
                    return err(format!(
                        "raster.markers: masks 0x{a:x} and 0x{b:x} share a bit"
                    ));
                }
            }
        }
        if self.dwell_ticks == 0 && m.line_stop == 0 {
            return err("raster.dwell_ticks = 0 (measured dwell) needs line_stop markers".into());
        }
        if self
            .dwell_ticks
            .checked_mul(self.nx as u64)
            .and_then(|v| v.checked_add(self.line_settle_ticks))
            .is_none()
        {
            return err("raster: line_settle_ticks + nx * dwell_ticks overflows".into());
        }
        if self.polarities.is_empty() {
            return err("raster.polarities: at least one polarity is required".into());
        }
        let mut seen = [false; 256];
        let mut n_species = 0usize;
        for p in &self.polarities {
            if p.species.is_empty() {
                return err(format!("raster.polarities.{}: no species", p.name));
            }
            if p.channels.is_empty() {
                return err(format!("raster.polarities.{}: no channels", p.name));
            }
            for &c in &p.channels {
                if seen[c as usize] {
                    return err(format!(
                        "raster.polarities.{}: channel {c} belongs to two polarities",
                        p.name
                    ));
                }
                seen[c as usize] = true;
            }
            n_species += p.species.len();
            if p.switching == Switching::PerPixel {
                if self.dwell_ticks == 0 {
                    return err(format!(
                        "raster.polarities.{}: per_pixel switching needs a fixed dwell_ticks",
                        p.name
                    ));
                }
                if p.settle_ticks * p.species.len() as u64 >= self.dwell_ticks {
                    return err(format!(
                        "raster.polarities.{}: settle_ticks leaves no time in a {}-way split pixel",
                        p.name,
                        p.species.len()
                    ));
                }
            }
        }
        if n_species > 64 {
            return err(format!(
                "raster.polarities: {n_species} species, at most 64 are supported"
            ));
        }
        Ok(())
    }

    pub fn species_names(&self) -> Vec<String> {
        self.polarities
            .iter()
            .flat_map(|p| p.species.iter().cloned())
            .collect()
    }
}
