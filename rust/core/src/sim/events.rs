//! The true event log: every count the emitter generated, sent or not, with what became
//! of it, so a test can hold the core to the event times and not only to the voxels.

/// What became of a generated count (`EventLog::fate`). The first four are the core's
/// verdicts on a sent event; the emitter also uses them to tag the counts of a line.
pub mod fate {
    /// Sent, in live pixel time: a count of the truth cube.
    pub const IN_VOXEL: u8 = 0;
    /// Sent, in a line's settle (a dark count).
    pub const LINE_SETTLE: u8 = 1;
    /// Sent, in flyback or frame gap (a dark count).
    pub const FLYBACK: u8 = 2;
    /// Sent, while the magnet settled.
    pub const MASS_SETTLE: u8 = 3;
    /// Not sent: within the dead time of its channel.
    pub const DEAD_TIME_LOST: u8 = 4;
}

/// One column per field, in the order the counts were emitted (time order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// Unwrapped device tick (the jumped counter after `Emitter::jump`).
    pub tick: Vec<u64>,
    pub channel: Vec<u8>,
    /// Global species index; -1 for dark counts.
    pub species: Vec<i16>,
    /// The voxel of an `IN_VOXEL` count; 0 for the others.
    pub z: Vec<u32>,
    pub y: Vec<u16>,
    pub x: Vec<u16>,
    pub fate: Vec<u8>,
}

impl EventLog {
    pub fn len(&self) -> usize {
        self.tick.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tick.is_empty()
    }

    #[inline]
    pub(super) fn push(
        &mut self,
        tick: u64,
        channel: u8,
        species: i16,
        (z, y, x): (u32, u16, u16),
        fate: u8,
    ) {
        self.tick.push(tick);
        self.channel.push(channel);
        self.species.push(species);
        self.z.push(z);
        self.y.push(y);
        self.x.push(x);
        self.fate.push(fate);
    }
}
