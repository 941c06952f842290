//! The writer thread: takes queued blocks, encodes them, writes them as they come and
//! syncs every `flush_interval` (or `flush_bytes`). Encoded blocks stay in memory until
//! a sync covered them; after a disk error the segment goes back to its durable length
//! and they are written again every `retry_interval`. Nothing here may panic out: `run`
//! catches it and reports it through the queue.

use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::{BlockEncoder, FrameBatch};
use super::format::BLOCK_HEADER_LEN;
use super::sink::Sink;
use super::writer::{Pending, Shared, State};
use super::{BlockKind, JournalConfig};
use crate::acquisition::{lock, panic_text, realtime_ns};
use crate::error::Result;

/// Longest sleep with nothing to do (a missed wake-up costs at most this).
const IDLE: Duration = Duration::from_secs(1);

/// A sealed block waiting to become durable.
struct Encoded {
    seq: u64,
    host_ns: i64,
    frames: u64,
    raw: u64,
    /// Bytes it holds in the queue's account (released once durable).
    acct: u64,
    bytes: Vec<u8>,
}

/// What one wake-up found to do.
struct Work {
    items: Vec<Pending>,
    state: State,
    flush_due: bool,
    closed_seq: Option<u64>,
}

pub(super) struct Worker {
    shared: Arc<Shared>,
    sink: Sink,
    enc: BlockEncoder,
    /// Encoded blocks not yet durable; the first `n_written` are written.
    pending: VecDeque<Encoded>,
    n_written: usize,
    flush_interval: Duration,
    flush_bytes: u64,
    retry_interval: Duration,
    close_timeout: Duration,
    last_flush: Instant,
    retry_at: Option<Instant>,
    end_seen: bool,
}

impl Worker {
    pub(super) fn new(shared: Arc<Shared>, sink: Sink, cfg: &JournalConfig) -> Result<Self> {
        Ok(Worker {
            shared,
            sink,
            enc: BlockEncoder::new(cfg.level, cfg.transform)?,
            pending: VecDeque::new(),
            n_written: 0,
            flush_interval: cfg.flush_interval,
            flush_bytes: cfg.flush_bytes,
            retry_interval: cfg.retry_interval,
            close_timeout: cfg.close_timeout,
            last_flush: Instant::now(),
            retry_at: None,
            end_seen: false,
        })
    }

    pub(super) fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_loop()));
        let mut q = lock(&shared.queue);
        if let Err(p) = outcome {
            q.failure = Some(format!(
                "writer thread panicked: {}",
                panic_text(p.as_ref())
            ));
        }
        q.finished = true;
        drop(q);
        shared.done.notify_all();
    }

    fn run_loop(&mut self) {
        loop {
            let work = self.next_work();
            for item in work.items {
                self.encode(item);
            }
            if let Some(seq) = work.closed_seq {
                self.encode_closed(seq);
            }
            let now = Instant::now();
            let ending = work.state != State::Running;
            if ending || self.retry_at.is_none_or(|t| now >= t) {
                self.attempt(work.flush_due || ending);
            }
            match work.state {
                State::Running => {}
                State::Closing(_) if self.pending.is_empty() => {
                    self.shared.stats.closed.store(true, Ordering::Release);
                    return;
                }
                State::Closing(at) if now >= at + self.close_timeout => {
                    return self.give_up("close gave up");
                }
                State::Closing(_) => {}
                State::Abandoned => {
                    if !self.pending.is_empty() {
                        self.give_up("dropped without close");
                    }
                    return;
                }
            }
        }
    }

    /// Wait until there is something to do, and take it from the queue.
    fn next_work(&mut self) -> Work {
        let mut q = lock(&self.shared.queue);
        loop {
            let now = Instant::now();
            let dirty = !self.pending.is_empty() || !q.batch.is_empty() || !q.items.is_empty();
            let flush_at = self.last_flush + self.flush_interval;
            let flush_due = dirty && now >= flush_at;
            let backoff = self.retry_at.filter(|&t| now < t);
            let deadline = match q.state {
                State::Closing(at) => Some(at + self.close_timeout),
                _ => None,
            };
            let go = !q.items.is_empty()
                || (q.state != State::Running && !self.end_seen)
                || q.state == State::Abandoned
                || deadline.is_some_and(|d| now >= d)
                || (backoff.is_none() && (flush_due || self.retry_at.is_some()));
            if go {
                if flush_due || q.state != State::Running {
                    q.close_batch(self.shared.block_bytes, &self.shared.stats);
                }
                let closed_seq = match q.state {
                    State::Closing(_) if !self.end_seen => Some(q.take_seq()),
                    _ => None,
                };
                self.end_seen = q.state != State::Running;
                return Work {
                    items: q.items.drain(..).collect(),
                    state: q.state,
                    flush_due,
                    closed_seq,
                };
            }
            let until = [backoff, dirty.then_some(flush_at), deadline]
                .into_iter()
                .flatten()
                .min();
            let timeout = until.map_or(IDLE, |t| t.saturating_duration_since(now).min(IDLE));
            q = match self.shared.wake.wait_timeout(q, timeout) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn encode(&mut self, item: Pending) {
        let e = match item {
            Pending::Opaque {
                kind,
                seq,
                host_ns,
                payload,
            } => Encoded {
                seq,
                host_ns,
                frames: 0,
                raw: payload.len() as u64,
                acct: payload.len() as u64,
                bytes: self.enc.opaque(kind, seq, host_ns, &payload),
            },
            Pending::Frames { seq, batch } => {
                let e = Encoded {
                    seq,
                    host_ns: batch.last_host_ns(),
                    frames: batch.frames() as u64,
                    raw: batch.raw_len() as u64,
                    acct: (batch.data_len() + FrameBatch::ENTRY * batch.frames()) as u64,
                    bytes: self.enc.frames(seq, &batch),
                };
                lock(&self.shared.queue).recycle(batch);
                e
            }
        };
        self.pending.push_back(e);
    }

    /// The closed block: the sequence number before it and the refusals of the run.
    fn encode_closed(&mut self, seq: u64) {
        let st = &self.shared.stats;
        let mut p = Vec::with_capacity(24);
        p.extend_from_slice(&seq.checked_sub(1).unwrap_or(u64::MAX).to_le_bytes());
        p.extend_from_slice(&st.refused_appends.load(Ordering::Relaxed).to_le_bytes());
        p.extend_from_slice(&st.refused_bytes.load(Ordering::Relaxed).to_le_bytes());
        let host_ns = realtime_ns();
        self.pending.push_back(Encoded {
            seq,
            host_ns,
            frames: 0,
            raw: p.len() as u64,
            acct: 0,
            bytes: self.enc.opaque(BlockKind::Closed, seq, host_ns, &p),
        });
    }

    fn attempt(&mut self, flush: bool) {
        let result = self.write_out(flush);
        if flush {
            self.last_flush = Instant::now();
        }
        match result {
            Ok(()) => {
                if self.retry_at.take().is_some() {
                    *lock(&self.shared.disk_error) = None;
                }
            }
            Err(e) => {
                self.sink.fail();
                self.n_written = 0;
                self.shared
                    .stats
                    .disk_errors
                    .fetch_add(1, Ordering::Relaxed);
                *lock(&self.shared.disk_error) = Some(e.to_string());
                self.retry_at = Some(Instant::now() + self.retry_interval);
            }
        }
    }

    fn write_out(&mut self, flush: bool) -> io::Result<()> {
        while let Some(e) = self.pending.get(self.n_written) {
            if self.sink.needs_roll(e.bytes.len()) {
                self.sink.sync()?;
                self.retire();
                self.sink.roll();
                continue;
            }
            self.sink.write(&e.bytes)?;
            self.n_written += 1;
        }
        if self.sink.unsynced() > 0 && (flush || self.sink.unsynced() >= self.flush_bytes) {
            self.sink.sync()?;
            self.retire();
        }
        Ok(())
    }

    /// The written blocks are durable: publish them and release their queue bytes.
    fn retire(&mut self) {
        let st = &self.shared.stats;
        let mut acct = 0;
        let mut last = None;
        for e in self.pending.drain(..self.n_written) {
            st.blocks_durable.fetch_add(1, Ordering::Relaxed);
            st.frames_durable.fetch_add(e.frames, Ordering::Relaxed);
            st.raw_durable.fetch_add(e.raw, Ordering::Relaxed);
            let stored = (e.bytes.len() - BLOCK_HEADER_LEN) as u64;
            st.stored_durable.fetch_add(stored, Ordering::Relaxed);
            acct += e.acct;
            last = Some((e.seq, e.host_ns));
        }
        self.n_written = 0;
        if let Some((seq, ns)) = last {
            st.durable_host_ns.store(ns, Ordering::Release);
            st.durable_seq.store(seq.wrapping_add(1), Ordering::Release);
        }
        st.durable_bytes
            .store(self.sink.durable_bytes(), Ordering::Release);
        st.segments
            .store(u64::from(self.sink.segments()), Ordering::Release);
        st.queued_bytes.fetch_sub(acct, Ordering::AcqRel);
    }

    /// Stop with blocks that never became durable: say so where `status` shows it.
    fn give_up(&mut self, why: &str) {
        let bytes: usize = self.pending.iter().map(|e| e.bytes.len()).sum();
        let disk = lock(&self.shared.disk_error)
            .clone()
            .unwrap_or_else(|| "no disk error".into());
        lock(&self.shared.queue).failure = Some(format!(
            "{why}: {} blocks ({bytes} bytes encoded) not durable; {disk}",
            self.pending.len()
        ));
    }
}
