//! PicoQuant `.ptu` files and raw TTTR record decoding for Python.
//! Reading and decoding run with the GIL released; only conversion holds it.

use std::path::PathBuf;

use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1};
use opsims_core::link::frame::FrameHeader;
use opsims_core::link::ptu::{self, ImageMarkers, TagValue};
use opsims_core::link::stream::{DecodedFrames, StreamDecoder};
use opsims_core::link::tttr::{decode_columns, RecordColumns, RecordType};
use opsims_core::CoreError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3::IntoPyObjectExt;

use crate::errors::to_py;

/// A PicoQuant .ptu file read into memory.
#[pyclass(name = "PtuFile", module = "opsims._native", frozen)]
pub struct PyPtuFile {
    #[pyo3(get)]
    version: String,
    #[pyo3(get)]
    record_type: u32,
    #[pyo3(get)]
    record_type_name: String,
    #[pyo3(get)]
    tags: Py<PyDict>,
    #[pyo3(get)]
    global_resolution: Option<f64>,
    #[pyo3(get)]
    resolution: Option<f64>,
    #[pyo3(get)]
    records: Py<PyArray1<u32>>,
    #[pyo3(get)]
    number_of_records: usize,
    #[pyo3(get)]
    warnings: Vec<String>,
    // Kept as a result so a bad ImgHdr tag only fails when asked for.
    markers: Result<ImageMarkers, String>,
}

fn tag_value<'py>(py: Python<'py>, v: &TagValue) -> PyResult<Bound<'py, PyAny>> {
    match v {
        TagValue::Empty => Ok(py.None().into_bound(py)),
        TagValue::Bool(b) => b.into_bound_py_any(py),
        TagValue::Int(i) => i.into_bound_py_any(py),
        TagValue::BitSet(u) | TagValue::Color(u) => u.into_bound_py_any(py),
        TagValue::Float(f) | TagValue::DateTime(f) => f.into_bound_py_any(py),
        TagValue::FloatArray(a) => a.clone().into_bound_py_any(py),
        TagValue::AnsiString(s) | TagValue::WideString(s) => s.into_bound_py_any(py),
        TagValue::Blob(b) => Ok(PyBytes::new(py, b).into_any()),
        TagValue::Unknown { bits, .. } => bits.into_bound_py_any(py),
    }
}

#[pymethods]
impl PyPtuFile {
    /// Marker masks and image size from the ImgHdr tags (None where absent).
    #[getter]
    fn image_markers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = match &self.markers {
            Ok(m) => *m,
            Err(msg) => return Err(to_py(CoreError::Ptu(msg.clone()))),
        };
        let d = PyDict::new(py);
        d.set_item("line_start", m.line_start)?;
        d.set_item("line_stop", m.line_stop)?;
        d.set_item("frame", m.frame)?;
        d.set_item("pix_x", m.pix_x)?;
        d.set_item("pix_y", m.pix_y)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "PtuFile(version={:?}, record_type={}, records={})",
            self.version, self.record_type_name, self.number_of_records
        )
    }
}

/// Read a .ptu file.
#[pyfunction]
fn read_ptu(py: Python<'_>, path: PathBuf) -> PyResult<PyPtuFile> {
    let file = py.detach(|| ptu::read(&path)).map_err(to_py)?;
    let tags = PyDict::new(py);
    for t in &file.tags {
        let key = if t.index == -1 {
            t.ident.clone()
        } else {
            format!("{}[{}]", t.ident, t.index)
        };
        tags.set_item(key, tag_value(py, &t.value)?)?;
    }
    let record_type_name = match RecordType::code_name(file.record_type_code) {
        Some(n) => n.to_owned(),
        None => format!("unknown (0x{:08x})", file.record_type_code),
    };
    let global_resolution = file.global_resolution();
    let resolution = file.resolution();
    let number_of_records = file.number_of_records();
    let markers = file.image_markers().map_err(|e| match e {
        CoreError::Ptu(m) => m,
        other => other.to_string(),
    });
    let records = file.records.into_pyarray(py);
    let records = records.readwrite().make_nonwriteable();
    Ok(PyPtuFile {
        version: file.version,
        record_type: file.record_type_code,
        record_type_name,
        tags: tags.unbind(),
        global_resolution,
        resolution,
        number_of_records,
        records: records.as_unbound().clone_ref(py),
        warnings: file.warnings,
        markers,
    })
}

/// Decode raw records of the given type code, one row per record.
#[pyfunction]
fn decode_records<'py>(
    py: Python<'py>,
    record_type: u32,
    records: PyReadonlyArray1<'py, u32>,
) -> PyResult<Bound<'py, PyDict>> {
    let kind = RecordType::from_code(record_type).map_err(to_py)?;
    let cols = match records.as_slice() {
        Ok(slice) => py.detach(|| decode_columns(kind, slice)),
        Err(_) => {
            let owned = records.as_array().to_vec();
            py.detach(|| decode_columns(kind, &owned))
        }
    };
    let d = PyDict::new(py);
    d.set_item("kind", cols.kind.into_pyarray(py))?;
    d.set_item("tick", cols.tick.into_pyarray(py))?;
    d.set_item("channel", cols.channel.into_pyarray(py))?;
    d.set_item("dtime", cols.dtime.into_pyarray(py))?;
    d.set_item("marker", cols.marker.into_pyarray(py))?;
    Ok(d)
}

/// A recorded detector link stream read back as records (`docs/journal.md`): feed it the
/// bytes as they arrived, in any pieces; each whole frame's records come out decoded from
/// the time base its header carries.
#[pyclass(name = "LinkStreamDecoder", module = "opsims._native")]
pub struct PyLinkStreamDecoder {
    inner: StreamDecoder,
}

#[pymethods]
impl PyLinkStreamDecoder {
    #[new]
    fn new() -> Self {
        PyLinkStreamDecoder {
            inner: StreamDecoder::new(),
        }
    }

    /// The records of every frame this piece completes, as `decode_records` gives them,
    /// and ``frames``: ``sequence``, ``first_record`` (index into these records),
    /// ``overflow_base``, ``sent_tick``, ``record_type`` per frame.
    fn push<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
        let inner = &mut self.inner;
        let (mut cols, mut frames) = (None, DecodedFrames::default());
        py.detach(|| inner.push(data, &mut cols, &mut frames))
            .map_err(to_py)?;
        let d = PyDict::new(py);
        let cols = cols.unwrap_or_else(|| RecordColumns::new(RecordType::GenericT2, 0));
        d.set_item("kind", cols.kind.into_pyarray(py))?;
        d.set_item("tick", cols.tick.into_pyarray(py))?;
        d.set_item("channel", cols.channel.into_pyarray(py))?;
        d.set_item("dtime", cols.dtime.into_pyarray(py))?;
        d.set_item("marker", cols.marker.into_pyarray(py))?;
        let f = PyDict::new(py);
        let column =
            |get: fn(&FrameHeader) -> u64| -> Vec<u64> { frames.headers.iter().map(get).collect() };
        f.set_item("sequence", column(|h| h.sequence).into_pyarray(py))?;
        f.set_item(
            "overflow_base",
            column(|h| h.overflow_base).into_pyarray(py),
        )?;
        f.set_item("sent_tick", column(|h| h.sent_tick).into_pyarray(py))?;
        f.set_item(
            "record_type",
            column(|h| u64::from(h.record_type)).into_pyarray(py),
        )?;
        f.set_item("first_record", frames.first_record.into_pyarray(py))?;
        d.set_item("frames", f)?;
        Ok(d)
    }

    /// Frames whose checksum failed (dropped).
    #[getter]
    fn corrupt(&self) -> u64 {
        self.inner.corrupt
    }

    /// Bytes skipped looking for a frame start.
    #[getter]
    fn bytes_skipped(&self) -> u64 {
        self.inner.bytes_skipped()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPtuFile>()?;
    m.add_class::<PyLinkStreamDecoder>()?;
    m.add_function(wrap_pyfunction!(read_ptu, m)?)?;
    m.add_function(wrap_pyfunction!(decode_records, m)?)?;
    Ok(())
}
