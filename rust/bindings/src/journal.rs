//! The run journal (`opsims_core::journal`) for Python: writer, reader, recovery.
//! Arguments become owned Rust values; opening, closing, reading and recovering run
//! with the GIL released. `append` copies under a short lock and never waits for disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opsims_core::journal::{
    recover, Block, BlockKind, Blocks, CorruptSpan, JournalConfig, JournalReader as CoreReader,
    JournalReport, JournalStatus, JournalWriter as CoreWriter, Recovery, TransformPolicy,
};
use opsims_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::{to_py, ConfigError, JournalError};

/// Copies at least this large are done with the GIL released.
const DETACH_BYTES: usize = 64 << 10;

fn seconds(name: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ConfigError::new_err(format!(
                "invalid configuration: journal.{name} must be a positive number of seconds, got {s}"
            ))
        })
}

fn kind(name: &str) -> PyResult<BlockKind> {
    BlockKind::from_name(name)
        .filter(|k| k.is_appendable())
        .ok_or_else(|| {
            JournalError::new_err(format!(
                "unknown journal kind {name:?}: expected detector_frames, potentiostat, \
                 clock, safety, control, step or note"
            ))
        })
}

/// Writes one run journal: ``append`` only queues, a native thread writes and syncs.
#[pyclass(name = "JournalWriter", module = "opsims._native", frozen)]
pub struct PyJournalWriter {
    // None only while being dropped. Shared with an `Acquisition` that records into it.
    inner: Option<Arc<CoreWriter>>,
}

impl PyJournalWriter {
    fn writer(&self) -> PyResult<&CoreWriter> {
        self.inner
            .as_deref()
            .ok_or_else(|| JournalError::new_err("journal writer is gone"))
    }

    /// The writer itself, for the acquisition threads to append to.
    pub(crate) fn shared(&self) -> PyResult<Arc<CoreWriter>> {
        self.inner
            .clone()
            .ok_or_else(|| JournalError::new_err("journal writer is gone"))
    }
}

#[pymethods]
impl PyJournalWriter {
    #[new]
    #[pyo3(signature = (
        path, *, run_id = None, append = false, segment_bytes = 268435456,
        flush_interval_s = 0.1, flush_bytes = 67108864, block_bytes = 4194304,
        queue_bytes = 536870912, level = 1, transform = "auto",
        retry_interval_s = 1.0, close_timeout_s = 10.0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        run_id: Option<String>,
        append: bool,
        segment_bytes: u64,
        flush_interval_s: f64,
        flush_bytes: u64,
        block_bytes: usize,
        queue_bytes: u64,
        level: i32,
        transform: &str,
        retry_interval_s: f64,
        close_timeout_s: f64,
    ) -> PyResult<Self> {
        let transform = TransformPolicy::from_name(transform).ok_or_else(|| {
            ConfigError::new_err(format!(
                "invalid configuration: journal.transform must be auto, none, shuffle or \
                 delta_shuffle, got {transform:?}"
            ))
        })?;
        let cfg = JournalConfig {
            run_id,
            append,
            segment_bytes,
            flush_interval: seconds("flush_interval_s", flush_interval_s)?,
            flush_bytes,
            block_bytes,
            queue_bytes,
            level,
            transform,
            retry_interval: seconds("retry_interval_s", retry_interval_s)?,
            close_timeout: seconds("close_timeout_s", close_timeout_s)?,
            ..JournalConfig::new(path)
        };
        let inner = py.detach(|| CoreWriter::open(cfg)).map_err(to_py)?;
        Ok(PyJournalWriter {
            inner: Some(Arc::new(inner)),
        })
    }

    /// Queue an opaque payload of ``kind``; raises JournalFullError when the queue is full.
    fn append(&self, py: Python<'_>, kind: &str, host_ns: i64, payload: &[u8]) -> PyResult<()> {
        let (k, w) = (self::kind(kind)?, self.writer()?);
        let result = if payload.len() >= DETACH_BYTES {
            py.detach(|| w.append(k, host_ns, payload))
        } else {
            w.append(k, host_ns, payload)
        };
        result.map_err(to_py)
    }

    /// Queue one raw detector link frame, kept byte-identical with its arrival time.
    fn append_frame(&self, py: Python<'_>, host_ns: i64, frame: &[u8]) -> PyResult<()> {
        let w = self.writer()?;
        let result = if frame.len() >= DETACH_BYTES {
            py.detach(|| w.append_frame(host_ns, frame))
        } else {
            w.append_frame(host_ns, frame)
        };
        result.map_err(to_py)
    }

    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        status_dict(py, &self.writer()?.status())
    }

    /// Drain, write the closed block, sync; the final status. Raises JournalError if
    /// the disk kept failing for ``close_timeout_s`` (``status()`` then says what is lost).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let w = self.writer()?;
        let st = py.detach(|| w.close()).map_err(to_py)?;
        status_dict(py, &st)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

impl Drop for PyJournalWriter {
    fn drop(&mut self) {
        // Dropping flushes (up to 2 s): not with the GIL held.
        if let Some(w) = self.inner.take() {
            Python::attach(|py| py.detach(move || drop(w)));
        }
    }
}

fn status_dict<'py>(py: Python<'py>, s: &JournalStatus) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("blocks_appended", s.blocks_appended)?;
    d.set_item("frames_appended", s.frames_appended)?;
    d.set_item("bytes_appended", s.bytes_appended)?;
    d.set_item("refused_appends", s.refused_appends)?;
    d.set_item("refused_bytes", s.refused_bytes)?;
    d.set_item("blocks_durable", s.blocks_durable)?;
    d.set_item("frames_durable", s.frames_durable)?;
    d.set_item("raw_bytes_durable", s.raw_bytes_durable)?;
    d.set_item("stored_bytes_durable", s.stored_bytes_durable)?;
    d.set_item("compression_ratio", s.compression_ratio())?;
    d.set_item("durable_seq", s.durable_seq)?;
    d.set_item("durable_bytes", s.durable_bytes)?;
    d.set_item("durable_host_ns", s.durable_host_ns)?;
    d.set_item("queued_bytes", s.queued_bytes)?;
    d.set_item("queued_high_water", s.queued_high_water)?;
    d.set_item("disk_error", s.disk_error.clone())?;
    d.set_item("disk_errors", s.disk_errors)?;
    d.set_item("writer_error", s.writer_error.clone())?;
    d.set_item("segments", s.segments)?;
    d.set_item("closed", s.closed)?;
    Ok(d)
}

fn span_dict<'py>(py: Python<'py>, s: &CorruptSpan) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("segment", s.segment)?;
    d.set_item("offset", s.offset)?;
    d.set_item("len", s.len)?;
    d.set_item("reason", &s.reason)?;
    Ok(d)
}

fn spans<'py>(py: Python<'py>, spans: &[CorruptSpan]) -> PyResult<Bound<'py, PyList>> {
    let items = spans
        .iter()
        .map(|s| span_dict(py, s))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

fn tail<'py>(py: Python<'py>, t: &Option<CorruptSpan>) -> PyResult<Option<Bound<'py, PyDict>>> {
    t.as_ref().map(|s| span_dict(py, s)).transpose()
}

fn report_dict<'py>(py: Python<'py>, r: &JournalReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("run_id", r.run_id.clone())?;
    d.set_item("segments", r.segments)?;
    d.set_item("missing_segments", r.missing_segments.clone())?;
    d.set_item("blocks", r.blocks)?;
    d.set_item("frames", r.frames)?;
    d.set_item("raw_bytes", r.raw_bytes)?;
    d.set_item("stored_bytes", r.stored_bytes)?;
    d.set_item("first_seq", r.first_seq)?;
    d.set_item("last_seq", r.last_seq)?;
    d.set_item("last_host_ns", r.last_host_ns)?;
    d.set_item("closed", r.closed)?;
    d.set_item("recovered", r.recovered)?;
    d.set_item("recoveries", r.recoveries)?;
    d.set_item("refused_appends", r.refused_appends)?;
    d.set_item("corrupt", spans(py, &r.corrupt)?)?;
    d.set_item("torn_tail", tail(py, &r.torn_tail)?)?;
    let gaps: Vec<(u64, u64)> = r.gaps.iter().map(|g| (g.expected, g.found)).collect();
    d.set_item("gaps", gaps)?;
    Ok(d)
}

fn recovery_dict<'py>(py: Python<'py>, r: &Recovery) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("run_id", r.run_id.clone())?;
    d.set_item("blocks", r.blocks)?;
    d.set_item("frames", r.frames)?;
    d.set_item("last_seq", r.last_seq)?;
    d.set_item("last_host_ns", r.last_host_ns)?;
    d.set_item("bytes_cut", r.bytes_cut)?;
    d.set_item("cut", tail(py, &r.cut)?)?;
    d.set_item("corrupt", spans(py, &r.corrupt)?)?;
    d.set_item("was_closed", r.was_closed)?;
    d.set_item("marker_written", r.marker_written)?;
    d.set_item("next_seq", r.next_seq)?;
    Ok(d)
}

/// Reads a journal directory, verifying every block.
#[pyclass(name = "JournalReader", module = "opsims._native", frozen)]
pub struct PyJournalReader {
    reader: CoreReader,
}

#[pymethods]
impl PyJournalReader {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let reader = py.detach(|| CoreReader::open(path)).map_err(to_py)?;
        Ok(PyJournalReader { reader })
    }

    /// Every verified block as ``(kind, seq, host_ns, payload)``, in order.
    fn blocks(&self, py: Python<'_>) -> PyResult<JournalBlocks> {
        let it = py.detach(|| self.reader.blocks()).map_err(to_py)?;
        Ok(JournalBlocks { it })
    }

    /// Every detector frame as ``(seq, host_ns, frame)``: the bytes as received.
    fn frames(&self, py: Python<'_>) -> PyResult<JournalFrames> {
        let it = py.detach(|| self.reader.blocks()).map_err(to_py)?;
        Ok(JournalFrames {
            it,
            cur: None,
            at: 0,
        })
    }

    /// Read and verify everything: segments, blocks, corrupt spans, torn tail, gaps.
    fn report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = py.detach(|| self.reader.scan()).map_err(to_py)?;
        report_dict(py, &r)
    }
}

fn next_block(py: Python<'_>, it: &mut Blocks) -> PyResult<Option<Block>> {
    py.detach(|| it.next()).transpose().map_err(to_py)
}

/// `(kind, seq, host_ns, payload)` as Python sees a block.
type BlockTuple<'py> = (&'static str, u64, i64, Bound<'py, PyBytes>);
/// A frame's arrival time and where it lies in its block's payload.
type FrameSpan = (i64, usize, usize);

/// The iterator of ``JournalReader.blocks()``.
#[pyclass(module = "opsims._native")]
pub struct JournalBlocks {
    it: Blocks,
}

#[pymethods]
impl JournalBlocks {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<BlockTuple<'py>>> {
        Ok(next_block(py, &mut self.it)?.map(|b| {
            (
                b.kind.name(),
                b.seq,
                b.host_ns,
                PyBytes::new(py, &b.payload),
            )
        }))
    }

    /// The report of what was read so far (complete once exhausted).
    fn report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        report_dict(py, self.it.report())
    }
}

/// The iterator of ``JournalReader.frames()``.
#[pyclass(module = "opsims._native")]
pub struct JournalFrames {
    it: Blocks,
    /// The current detector block and its frames as (host_ns, start, end).
    cur: Option<(Block, Vec<FrameSpan>)>,
    at: usize,
}

/// Where each frame lies in the batch payload (layout in docs/journal.md).
fn frame_spans(b: &Block) -> Result<Vec<FrameSpan>, CoreError> {
    let frames: Vec<(i64, usize)> = b.frames()?.map(|(ns, f)| (ns, f.len())).collect();
    let mut at = 4 + 12 * frames.len();
    Ok(frames
        .into_iter()
        .map(|(ns, len)| {
            at += len;
            (ns, at - len, at)
        })
        .collect())
}

#[pymethods]
impl JournalFrames {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<Option<(u64, i64, Bound<'py, PyBytes>)>> {
        loop {
            if let Some((b, frames)) = &self.cur {
                if let Some(&(ns, s, e)) = frames.get(self.at) {
                    self.at += 1;
                    return Ok(Some((b.seq, ns, PyBytes::new(py, &b.payload[s..e]))));
                }
            }
            let Some(b) = next_block(py, &mut self.it)? else {
                return Ok(None);
            };
            if b.kind == BlockKind::DetectorFrames {
                let spans = frame_spans(&b).map_err(to_py)?;
                self.cur = Some((b, spans));
                self.at = 0;
            }
        }
    }
}

/// End a journal left open: cut its torn tail, append a recovered block; idempotent.
#[pyfunction]
fn recover_journal<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let r = py.detach(|| recover(path)).map_err(to_py)?;
    recovery_dict(py, &r)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyJournalWriter>()?;
    m.add_class::<PyJournalReader>()?;
    m.add_class::<JournalBlocks>()?;
    m.add_class::<JournalFrames>()?;
    m.add_function(wrap_pyfunction!(recover_journal, m)?)?;
    Ok(())
}
