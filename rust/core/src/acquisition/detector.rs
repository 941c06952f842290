//! The detector thread: the live link (`docs/detector-link.md`) read into the engine.
//!
//! Reads use a short timeout so a stop is noticed within [`READ_POLL`]. Each read is fed
//! whole, stamped with CLOCK_REALTIME at the read; the engine's frame sequence numbers
//! turn a reconnect into a counted loss interval, so the engine (and its cubes) simply
//! carries on across connections.

use std::io::{ErrorKind, Read};
use std::time::Duration;

use super::{
    bump, connect, lock, realtime_ns, Backoff, LinkAddress, LinkId, LinkState, Session, Shared,
};

const READ_POLL: Duration = Duration::from_millis(50);
/// Up to this much is read (and fed under the engine lock) at once.
const READ_BUF: usize = 1 << 20;

pub(crate) struct DetectorSession {
    address: LinkAddress,
    buf: Vec<u8>,
}

impl DetectorSession {
    pub(crate) fn new(address: LinkAddress) -> Self {
        DetectorSession {
            address,
            buf: vec![0; READ_BUF],
        }
    }
}

impl Session for DetectorSession {
    const LINK: LinkId = LinkId::Detector;

    fn session(&mut self, sh: &Shared, backoff: &mut Backoff) -> Result<(), String> {
        let c = &sh.counters;
        let mut stream =
            connect(&self.address).inspect_err(|_| bump(&c.detector_connect_failures, 1))?;
        stream
            .set_read_timeout(Some(READ_POLL))
            .map_err(|e| format!("cannot set a read timeout: {e}"))?;
        bump(&c.detector_connects, 1);
        backoff.reset();
        sh.link_event(
            LinkId::Detector,
            LinkState::Up,
            format!("connected to {}", self.address),
        );
        let Some(engine) = &sh.engine else {
            return Err("no engine".into());
        };
        let result = loop {
            if sh.stop.is_set() {
                return Ok(());
            }
            match stream.read(&mut self.buf) {
                Ok(0) => break "the detector front-end closed the connection".to_owned(),
                Ok(n) => {
                    let host_ns = realtime_ns();
                    bump(&c.detector_bytes, n as u64);
                    let mut engine = lock(engine);
                    // Under the engine lock: recording starts and stops between reads.
                    sh.recorder.detector(host_ns, &self.buf[..n], c);
                    engine.feed_link(&self.buf[..n], host_ns);
                    drop(engine);
                    sh.data_arrived();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => break format!("read failed: {e}"),
            }
        };
        bump(&c.detector_disconnects, 1);
        Err(result)
    }

    fn end(&mut self, _sh: &Shared, _reason: &str) {}
}
