//! Recording a run into its journal from the link threads themselves: every detector read,
//! as fed to the engine and with the same arrival time, and every batch of samples as
//! queued for the owner. Nothing of it waits for Python; the journal's `append` only
//! copies into its queue, and a refusal (the journal's memory bound) is counted here.

use std::sync::{Arc, Mutex};

use super::potentiostat::Sample;
use super::{bump, lock, LinkCounters};
use crate::journal::{BlockKind, JournalWriter};

/// Bytes per sample in a journal's potentiostat block, little-endian: host_ns i64,
/// arrival_ns i64, tick u64, ewe_v f64, current_a f64, mode u8, flags u8.
const SAMPLE_RECORD_LEN: usize = 42;

/// The journal the threads write to while a run records.
#[derive(Default)]
pub(crate) struct Recorder {
    journal: Mutex<Option<Arc<JournalWriter>>>,
}

impl Recorder {
    pub(crate) fn set(&self, journal: Option<Arc<JournalWriter>>) -> Option<Arc<JournalWriter>> {
        std::mem::replace(&mut *lock(&self.journal), journal)
    }

    /// One detector read, exactly as the engine is fed it.
    pub(crate) fn detector(&self, host_ns: i64, bytes: &[u8], c: &LinkCounters) {
        if let Some(j) = &*lock(&self.journal) {
            count(j.append_frame(host_ns, bytes).is_ok(), c);
        }
    }

    pub(crate) fn samples(&self, samples: &[Sample], c: &LinkCounters) {
        let Some(first) = samples.first() else { return };
        if let Some(j) = &*lock(&self.journal) {
            let payload = encode_samples(samples);
            count(
                j.append(BlockKind::Potentiostat, first.host_ns, &payload)
                    .is_ok(),
                c,
            );
        }
    }
}

fn count(ok: bool, c: &LinkCounters) {
    bump(
        if ok {
            &c.journal_appends
        } else {
            &c.journal_refused
        },
        1,
    );
}

fn encode_samples(samples: &[Sample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * SAMPLE_RECORD_LEN);
    for s in samples {
        out.extend_from_slice(&s.host_ns.to_le_bytes());
        out.extend_from_slice(&s.arrival_ns.to_le_bytes());
        out.extend_from_slice(&s.tick.to_le_bytes());
        out.extend_from_slice(&s.ewe_v.to_le_bytes());
        out.extend_from_slice(&s.current_a.to_le_bytes());
        out.push(s.mode);
        out.push(s.flags);
    }
    out
}
