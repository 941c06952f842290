//! `JournalWriter`: the caller's side. `append` copies into a bounded queue under a short
//! lock and returns; the writer thread (`worker.rs`) does everything that can take time.

use std::collections::VecDeque;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::codec::FrameBatch;
use super::format::{MAX_BLOCK_LEN, SEGMENT_HEADER_LEN};
use super::recover::recover;
use super::sink::Sink;
use super::worker::Worker;
use super::{BlockKind, JournalConfig};
use crate::acquisition::{lock, realtime_ns};
use crate::error::{CoreError, Result};

/// Drop waits this long for the writer to flush what it holds, then leaves it.
const DROP_WAIT: Duration = Duration::from_secs(2);
/// `close` waits this much longer than `close_timeout` for a writer stuck in a syscall.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);
/// Emptied batch buffers kept for reuse (page faults of fresh 4 MiB buffers are
/// measurable). They are made, touched, when the journal opens, so the memory they hold is
/// there from the start and stays the same; a burst needing more gets fresh buffers, which
/// go back to the system once written (a larger pool grew to a burst's high-water and kept
/// it: +4 MiB at a time, for good, in the daemon's hour-long soak).
pub(super) const SPARE_BATCHES: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Running,
    /// `close` was called: drain, write the closed block, sync, finish.
    Closing(Instant),
    /// Dropped without `close`: one last write and sync of what is queued, then finish.
    Abandoned,
}

/// A block handed to the writer thread, its sequence number already given.
pub(super) enum Pending {
    Opaque {
        kind: BlockKind,
        seq: u64,
        host_ns: i64,
        payload: Vec<u8>,
    },
    Frames {
        seq: u64,
        batch: FrameBatch,
    },
}

pub(super) struct Queue {
    pub(super) items: VecDeque<Pending>,
    pub(super) batch: FrameBatch,
    pub(super) spare: Vec<FrameBatch>,
    pub(super) next_seq: u64,
    pub(super) state: State,
    pub(super) finished: bool,
    /// Why the writer stopped early (a panic, or `close` gave up); appends are refused.
    pub(super) failure: Option<String>,
}

impl Queue {
    /// Hand the open detector batch to the writer thread (counted in `stats`).
    pub(super) fn close_batch(&mut self, block_bytes: usize, stats: &Stats) {
        if self.batch.is_empty() {
            return;
        }
        stats.blocks_appended.fetch_add(1, Ordering::Relaxed);
        let fresh = self
            .spare
            .pop()
            .unwrap_or_else(|| FrameBatch::with_capacity(block_bytes));
        let batch = std::mem::replace(&mut self.batch, fresh);
        let seq = self.take_seq();
        self.items.push_back(Pending::Frames { seq, batch });
    }

    pub(super) fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    pub(super) fn recycle(&mut self, mut batch: FrameBatch) {
        if self.spare.len() < SPARE_BATCHES {
            batch.clear();
            self.spare.push(batch);
        }
    }
}

/// Counters the writer thread publishes after each successful sync (and the appenders
/// as they go); read without a lock by `status`.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) blocks_appended: AtomicU64,
    pub(super) frames_appended: AtomicU64,
    pub(super) bytes_appended: AtomicU64,
    pub(super) refused_appends: AtomicU64,
    pub(super) refused_bytes: AtomicU64,
    pub(super) blocks_durable: AtomicU64,
    pub(super) frames_durable: AtomicU64,
    pub(super) raw_durable: AtomicU64,
    pub(super) stored_durable: AtomicU64,
    /// Sequence number + 1 of the last durable block (0: none yet).
    pub(super) durable_seq: AtomicU64,
    pub(super) durable_bytes: AtomicU64,
    pub(super) durable_host_ns: AtomicI64,
    pub(super) queued_bytes: AtomicU64,
    pub(super) queued_high_water: AtomicU64,
    pub(super) disk_errors: AtomicU64,
    pub(super) segments: AtomicU64,
    pub(super) closed: AtomicBool,
}

pub(super) struct Shared {
    pub(super) queue: Mutex<Queue>,
    /// Wakes the writer thread.
    pub(super) wake: Condvar,
    /// The writer thread finished.
    pub(super) done: Condvar,
    pub(super) stats: Stats,
    pub(super) disk_error: Mutex<Option<String>>,
    pub(super) block_bytes: usize,
    pub(super) queue_bytes: u64,
    pub(super) close_timeout: Duration,
}

/// A snapshot of the writer's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalStatus {
    /// Blocks given a sequence number (a detector batch counts once it is closed).
    pub blocks_appended: u64,
    pub frames_appended: u64,
    /// Payload bytes accepted (frames and opaque payloads).
    pub bytes_appended: u64,
    /// Appends refused because the queue was full (or the writer had stopped).
    pub refused_appends: u64,
    pub refused_bytes: u64,
    pub blocks_durable: u64,
    pub frames_durable: u64,
    /// Raw and stored payload bytes of the durable blocks: the compression ratio.
    pub raw_bytes_durable: u64,
    pub stored_bytes_durable: u64,
    pub durable_seq: Option<u64>,
    /// Bytes of all segment files known to be on disk.
    pub durable_bytes: u64,
    pub durable_host_ns: Option<i64>,
    /// Accepted bytes not yet durable (payloads, and 12 bytes of batch index per frame),
    /// and the most there ever were.
    pub queued_bytes: u64,
    pub queued_high_water: u64,
    /// The disk error the writer is retrying, if any, and how many there were.
    pub disk_error: Option<String>,
    pub disk_errors: u64,
    /// Why the writer stopped early, if it did.
    pub writer_error: Option<String>,
    pub segments: u64,
    /// The closed block is durable.
    pub closed: bool,
}

impl JournalStatus {
    /// Raw over stored payload bytes of what is durable (1.0 before anything is).
    pub fn compression_ratio(&self) -> f64 {
        if self.stored_bytes_durable == 0 {
            1.0
        } else {
            self.raw_bytes_durable as f64 / self.stored_bytes_durable as f64
        }
    }
}

/// Writes one run journal; every method may be called from any thread.
pub struct JournalWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Run id, first sequence number and first segment index for a new or continued run.
fn prepare_dir(cfg: &JournalConfig) -> Result<(String, u64, u32)> {
    let dir = &cfg.dir;
    let occupied = match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)?;
            false
        }
        Err(e) => return Err(e.into()),
    };
    let fresh_id = || {
        cfg.run_id
            .clone()
            .unwrap_or_else(|| format!("{:016x}-{:08x}", realtime_ns(), std::process::id()))
    };
    if !occupied {
        return Ok((fresh_id(), 0, 0));
    }
    if !cfg.append {
        return Err(CoreError::Journal(format!(
            "{} exists and is not empty (open with append to continue it)",
            dir.display()
        )));
    }
    let r = recover(dir)?;
    Ok((
        r.run_id.unwrap_or_else(fresh_id),
        r.next_seq,
        r.next_segment,
    ))
}

impl JournalWriter {
    /// Create (or, with `append`, continue) the journal in `config.dir`, write the first
    /// segment header and start the writer thread.
    pub fn open(config: JournalConfig) -> Result<Self> {
        config.validate()?;
        let (run_id, next_seq, first_index) = prepare_dir(&config)?;
        let mut sink = Sink::new(&config.dir, &run_id, config.segment_bytes, first_index);
        sink.start()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                batch: FrameBatch::prefaulted(config.block_bytes),
                spare: (0..SPARE_BATCHES)
                    .map(|_| FrameBatch::prefaulted(config.block_bytes))
                    .collect(),
                next_seq,
                state: State::Running,
                finished: false,
                failure: None,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            stats: Stats::default(),
            disk_error: Mutex::new(None),
            block_bytes: config.block_bytes,
            queue_bytes: config.queue_bytes,
            close_timeout: config.close_timeout,
        });
        let st = &shared.stats;
        st.segments.store(1, Ordering::Relaxed);
        st.durable_bytes
            .store(SEGMENT_HEADER_LEN as u64, Ordering::Relaxed);
        let worker = Worker::new(Arc::clone(&shared), sink, &config)?;
        let thread = std::thread::Builder::new()
            .name("opsims-journal".into())
            .spawn(move || worker.run())?;
        Ok(JournalWriter {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue an opaque payload of `kind` (a detector frame goes to `append_frame`).
    /// Never waits for the disk; `JournalFull` when the queue is at its bound.
    pub fn append(&self, kind: BlockKind, host_ns: i64, payload: &[u8]) -> Result<()> {
        if kind == BlockKind::DetectorFrames {
            return self.append_frame(host_ns, payload);
        }
        if !kind.is_appendable() {
            return Err(CoreError::Journal(format!(
                "{} blocks are written by the journal itself",
                kind.name()
            )));
        }
        check_len(payload.len())?;
        let owned = payload.to_vec();
        let mut q = lock(&self.shared.queue);
        self.admit(&q, payload.len(), 0)?;
        let seq = q.take_seq();
        q.items.push_back(Pending::Opaque {
            kind,
            seq,
            host_ns,
            payload: owned,
        });
        drop(q);
        let st = &self.shared.stats;
        st.blocks_appended.fetch_add(1, Ordering::Relaxed);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Queue one raw detector link frame (any chunk of the link's bytes), kept
    /// byte-identical with its arrival time; frames are batched into blocks.
    pub fn append_frame(&self, host_ns: i64, frame: &[u8]) -> Result<()> {
        check_len(frame.len())?;
        let limit = self.shared.block_bytes;
        let mut q = lock(&self.shared.queue);
        self.admit(&q, frame.len(), FrameBatch::ENTRY)?;
        let st = &self.shared.stats;
        let before = q.items.len();
        // Counted with the index, so a flood of empty frames also fills a batch.
        if !q.batch.is_empty() && q.batch.raw_len() + frame.len() > limit {
            q.close_batch(limit, st);
        }
        q.batch.push(host_ns, frame);
        if q.batch.raw_len() >= limit {
            q.close_batch(limit, st);
        }
        let handed = q.items.len() > before;
        drop(q);
        st.frames_appended.fetch_add(1, Ordering::Relaxed);
        if handed {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Take `len` bytes into the queue's account, or refuse (and count the refusal).
    /// `index` bytes (a frame's batch entry) count against the bound with the payload.
    fn admit(&self, q: &Queue, len: usize, index: usize) -> Result<()> {
        let st = &self.shared.stats;
        let refuse = |msg: String| {
            st.refused_appends.fetch_add(1, Ordering::Relaxed);
            st.refused_bytes.fetch_add(len as u64, Ordering::Relaxed);
            msg
        };
        if let Some(f) = &q.failure {
            return Err(CoreError::Journal(refuse(format!(
                "journal writer stopped: {f}"
            ))));
        }
        if q.state != State::Running {
            return Err(CoreError::Journal(refuse("journal is closed".into())));
        }
        let queued = st.queued_bytes.load(Ordering::Relaxed);
        let limit = self.shared.queue_bytes;
        let take = (len + index) as u64;
        if queued + take > limit {
            let why = lock(&self.shared.disk_error)
                .as_deref()
                .map_or(String::new(), |e| format!("; disk error: {e}"));
            return Err(CoreError::JournalFull(refuse(format!(
                "{queued} bytes not yet durable, limit {limit}: {len} bytes refused{why}"
            ))));
        }
        let now = st.queued_bytes.fetch_add(take, Ordering::Relaxed) + take;
        st.queued_high_water.fetch_max(now, Ordering::Relaxed);
        st.bytes_appended.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The capacities of the spare batch buffers.
    #[cfg(test)]
    pub(super) fn spare_capacities(&self) -> Vec<usize> {
        let q = lock(&self.shared.queue);
        q.spare.iter().map(FrameBatch::capacity).collect()
    }

    pub fn status(&self) -> JournalStatus {
        let st = &self.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Acquire);
        let seq = get(&st.durable_seq);
        let writer_error = lock(&self.shared.queue).failure.clone();
        JournalStatus {
            blocks_appended: get(&st.blocks_appended),
            frames_appended: get(&st.frames_appended),
            bytes_appended: get(&st.bytes_appended),
            refused_appends: get(&st.refused_appends),
            refused_bytes: get(&st.refused_bytes),
            blocks_durable: get(&st.blocks_durable),
            frames_durable: get(&st.frames_durable),
            raw_bytes_durable: get(&st.raw_durable),
            stored_bytes_durable: get(&st.stored_durable),
            durable_seq: seq.checked_sub(1),
            durable_bytes: get(&st.durable_bytes),
            durable_host_ns: (seq > 0).then(|| st.durable_host_ns.load(Ordering::Acquire)),
            queued_bytes: get(&st.queued_bytes),
            queued_high_water: get(&st.queued_high_water),
            disk_error: lock(&self.shared.disk_error).clone(),
            disk_errors: get(&st.disk_errors),
            writer_error,
            segments: get(&st.segments),
            closed: st.closed.load(Ordering::Acquire),
        }
    }

    /// Drain the queue, write the closed block, sync, and return the final status. An
    /// error says what could not be written (the disk failed for `close_timeout`).
    pub fn close(&self) -> Result<JournalStatus> {
        {
            let mut q = lock(&self.shared.queue);
            if q.state == State::Running {
                q.state = State::Closing(Instant::now());
            }
        }
        self.shared.wake.notify_one();
        let limit = match lock(&self.shared.queue).state {
            State::Closing(at) => at + self.shared.close_timeout + CLOSE_MARGIN,
            _ => Instant::now() + CLOSE_MARGIN,
        };
        self.wait_finished(limit);
        let st = self.status();
        if st.closed {
            return Ok(st);
        }
        let why = st
            .writer_error
            .or(st.disk_error)
            .unwrap_or_else(|| "the writer thread did not finish".into());
        Err(CoreError::Journal(format!(
            "journal not closed cleanly: {why}; {} bytes accepted but not durable",
            st.queued_bytes
        )))
    }

    /// Wait until the writer thread finished (then join it) or `until` passed.
    fn wait_finished(&self, until: Instant) {
        let mut q = lock(&self.shared.queue);
        while !q.finished {
            let now = Instant::now();
            if now >= until {
                return;
            }
            q = match self.shared.done.wait_timeout(q, until - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(q);
        if let Some(h) = lock(&self.thread).take() {
            // The thread catches its own panics; a join error cannot carry news.
            let _ = h.join();
        }
    }
}

fn check_len(len: usize) -> Result<()> {
    // Room for a one-frame batch index in the same bound.
    if len > MAX_BLOCK_LEN - 64 {
        return Err(CoreError::Journal(format!(
            "payload of {len} bytes exceeds the block limit {MAX_BLOCK_LEN}"
        )));
    }
    Ok(())
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        {
            let mut q = lock(&self.shared.queue);
            if q.finished {
                drop(q);
                self.wait_finished(Instant::now());
                return;
            }
            if q.state == State::Running || matches!(q.state, State::Closing(_)) {
                q.state = State::Abandoned;
            }
        }
        self.shared.wake.notify_one();
        self.wait_finished(Instant::now() + DROP_WAIT);
    }
}
