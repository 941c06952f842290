//! The interlock as the acquisition's [`SampleCheck`]: the hooks run in the potentiostat
//! reader thread (under the check lock), so nothing on the path from a sample to the
//! OPEN_CIRCUIT it causes waits for the owner or for Python.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Interlock, InterlockConfig, SafetyLink, SafetyState};
use crate::acquisition::{realtime_ns, AcqEvent, LinkWriter, Sample, SampleCheck};
use crate::error::CoreError;
use crate::link::potentiostat::{Hello, Reply};

impl SafetyLink for LinkWriter<'_> {
    fn open_circuit(&mut self) -> Result<u32, String> {
        self.open_circuit_now().map_err(|e| e.to_string())
    }

    fn state_changed(&mut self, host_ns: i64, state: SafetyState, reason: &'static str) {
        self.push_event(AcqEvent::Safety {
            host_ns,
            state: state.name(),
            reason,
        });
    }

    fn step_stopped(&mut self, sample: &Sample, limit_v: f64) {
        self.push_event(AcqEvent::StepStop {
            host_ns: sample.host_ns,
            tick: sample.tick,
            ewe_v: sample.ewe_v,
            limit_v,
        });
    }
}

/// A handle on one [`Interlock`]: one clone goes to `Acquisition::start`, the owner keeps
/// another to read the state and reset it (under `Acquisition::with_check`, so a reset
/// never interleaves with a sample).
#[derive(Clone)]
pub struct InterlockCheck(Arc<Mutex<Interlock>>);

impl InterlockCheck {
    pub fn new(cfg: InterlockConfig) -> Result<Self, CoreError> {
        Ok(InterlockCheck(Arc::new(Mutex::new(Interlock::new(cfg)?))))
    }

    /// The interlock, locked. A panic elsewhere cannot poison it into refusing to trip.
    pub fn lock(&self) -> MutexGuard<'_, Interlock> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SampleCheck for InterlockCheck {
    fn check(&mut self, sample: &Sample, link: &mut LinkWriter<'_>) {
        self.lock().on_sample(sample, realtime_ns(), link);
    }

    fn link_up(&mut self, hello: &Hello, link: &mut LinkWriter<'_>) {
        self.lock()
            .on_link_up(hello.compliance_a, hello.tick_fs, realtime_ns(), link);
    }

    fn link_down(&mut self, host_ns: i64, reason: &str, link: &mut LinkWriter<'_>) {
        self.lock().on_link_down(host_ns, reason, link);
    }

    fn idle(&mut self, host_ns: i64, link: &mut LinkWriter<'_>) {
        self.lock().on_idle(host_ns, link);
    }

    fn reply(&mut self, reply: &Reply, _link: &mut LinkWriter<'_>) {
        self.lock().on_reply(reply.request_sequence, reply.ok());
    }

    fn allow_command(&mut self, kind: u8, payload: &[u8]) -> Result<(), String> {
        self.lock().allow_command(kind, payload, realtime_ns())
    }

    fn shutdown(&mut self, link: &mut LinkWriter<'_>) {
        self.lock().on_shutdown(realtime_ns(), link);
    }
}
