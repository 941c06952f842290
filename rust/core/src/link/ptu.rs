//! PicoQuant `.ptu` files: magic, version, tagged header, then 32-bit TTTR records.
//!
//! Layout and the tags we use are in `docs/tttr-records.md`. Policy on bad files:
//! a broken header (bad magic, truncated tag, impossible length, unknown variable-length
//! tag type, no `Header_End`, no record type, records that are not 32-bit) is an error.
//! The record area is read leniently so a file cut short by a crash stays usable:
//! when it holds fewer records than `TTResult_NumberOfRecords` declares, or stray bytes,
//! the whole records present are kept and `PtuFile::warnings` says what was wrong.
//! Undecodable text never fails: ANSI strings fall back to Latin-1, wide strings to
//! lossy UTF-16.

use std::path::Path;

use crate::error::{CoreError, Result};
use crate::link::tttr::RecordType;

const MAGIC: &[u8; 8] = b"PQTTTR\0\0";
const HEADER_END: &str = "Header_End";

// Tag type codes. Those ending in 0xFFFF carry a byte length and trailing data.
const TY_EMPTY8: u32 = 0xFFFF_0008;
const TY_BOOL8: u32 = 0x0000_0008;
const TY_INT8: u32 = 0x1000_0008;
const TY_BITSET64: u32 = 0x1100_0008;
const TY_COLOR8: u32 = 0x1200_0008;
const TY_FLOAT8: u32 = 0x2000_0008;
const TY_DATETIME: u32 = 0x2100_0008;
const TY_FLOAT8_ARRAY: u32 = 0x2001_FFFF;
const TY_ANSI_STRING: u32 = 0x4001_FFFF;
const TY_WIDE_STRING: u32 = 0x4002_FFFF;
const TY_BINARY_BLOB: u32 = 0xFFFF_FFFF;

/// The value of one header tag.
#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    Empty,
    Bool(bool),
    Int(i64),
    BitSet(u64),
    Color(u64),
    Float(f64),
    /// Days since 1899-12-30 (the Delphi/OLE date), as stored.
    DateTime(f64),
    FloatArray(Vec<f64>),
    AnsiString(String),
    WideString(String),
    Blob(Vec<u8>),
    /// A fixed-size tag of a type this reader does not know, kept as raw bits.
    Unknown {
        type_code: u32,
        bits: u64,
    },
}

impl TagValue {
    /// Numeric value of Int/Float/Bool/BitSet/Color/DateTime tags.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            TagValue::Int(v) => Some(v as f64),
            TagValue::Float(v) | TagValue::DateTime(v) => Some(v),
            TagValue::Bool(v) => Some(f64::from(u8::from(v))),
            TagValue::BitSet(v) | TagValue::Color(v) => Some(v as f64),
            _ => None,
        }
    }
    /// Integer value of Int/Bool/BitSet/Color tags.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            TagValue::Int(v) => Some(v),
            TagValue::Bool(v) => Some(i64::from(v)),
            TagValue::BitSet(v) | TagValue::Color(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            TagValue::AnsiString(s) | TagValue::WideString(s) => Some(s),
            _ => None,
        }
    }
}

/// One header tag. `index` is -1 for scalar tags, else the element of an indexed tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub ident: String,
    pub index: i32,
    pub value: TagValue,
}

/// Marker masks and image size from the `ImgHdr_*` tags. A mask is `1 << (n - 1)` for
/// tag value n, so it compares directly with `RecordSink::marker` masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageMarkers {
    pub line_start: Option<u8>,
    pub line_stop: Option<u8>,
    pub frame: Option<u8>,
    pub pix_x: Option<u32>,
    pub pix_y: Option<u32>,
}

/// A parsed `.ptu` file.
#[derive(Debug, Clone, PartialEq)]
pub struct PtuFile {
    pub version: String,
    pub tags: Vec<Tag>,
    pub record_type_code: u32,
    pub records: Vec<u32>,
    /// Problems tolerated while reading the record area (see the module docs).
    pub warnings: Vec<String>,
}

fn err(msg: impl Into<String>) -> CoreError {
    CoreError::Ptu(msg.into())
}

/// Bytes up to the first NUL, as UTF-8 if valid, else Latin-1 (which always decodes).
fn decode_ansi(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let bytes = &bytes[..end];
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// UTF-16LE up to the first NUL unit; an odd last byte is dropped.
fn decode_wide(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// A bounds-checked cursor; every read names what it was reading when it runs out.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let rest = self.bytes.len() - self.pos;
        if n > rest {
            return Err(err(format!(
                "truncated header: {what} needs {n} bytes at offset {}, {rest} left",
                self.pos
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
}

fn parse_tag(cur: &mut Cursor<'_>) -> Result<Tag> {
    let offset = cur.pos;
    let ident = decode_ansi(cur.take(32, "tag ident")?);
    let index = i32::from_le_bytes(cur.array("tag index")?);
    let type_code = u32::from_le_bytes(cur.array("tag type")?);
    let raw: [u8; 8] = cur.array("tag value")?;
    let bits = u64::from_le_bytes(raw);
    let float = f64::from_le_bytes(raw);
    let value = match type_code {
        TY_EMPTY8 => TagValue::Empty,
        TY_BOOL8 => TagValue::Bool(bits != 0),
        TY_INT8 => TagValue::Int(bits as i64),
        TY_BITSET64 => TagValue::BitSet(bits),
        TY_COLOR8 => TagValue::Color(bits),
        TY_FLOAT8 => TagValue::Float(float),
        TY_DATETIME => TagValue::DateTime(float),
        TY_FLOAT8_ARRAY | TY_ANSI_STRING | TY_WIDE_STRING | TY_BINARY_BLOB => {
            let len = bits as i64;
            let len = usize::try_from(len).map_err(|_| {
                err(format!(
                    "tag {ident:?} at offset {offset} has negative length {len}"
                ))
            })?;
            let data = cur.take(len, &format!("data of tag {ident:?}"))?;
            match type_code {
                TY_FLOAT8_ARRAY => {
                    if len % 8 != 0 {
                        return Err(err(format!(
                            "tag {ident:?}: float array length {len} is not a multiple of 8"
                        )));
                    }
                    let v = data
                        .chunks_exact(8)
                        .map(|c| {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(c);
                            f64::from_le_bytes(b)
                        })
                        .collect();
                    TagValue::FloatArray(v)
                }
                TY_ANSI_STRING => TagValue::AnsiString(decode_ansi(data)),
                TY_WIDE_STRING => TagValue::WideString(decode_wide(data)),
                _ => TagValue::Blob(data.to_vec()),
            }
        }
        // Variable-length types of unknown meaning cannot be skipped safely.
        t if t & 0xFFFF == 0xFFFF => {
            return Err(err(format!(
                "tag {ident:?} at offset {offset} has unknown variable-length type 0x{t:08x}"
            )))
        }
        t => TagValue::Unknown { type_code: t, bits },
    };
    Ok(Tag {
        ident,
        index,
        value,
    })
}

/// Parses a whole `.ptu` file held in memory.
pub fn parse(bytes: &[u8]) -> Result<PtuFile> {
    let mut cur = Cursor { bytes, pos: 0 };
    let magic = cur
        .take(8, "magic")
        .map_err(|_| err(format!("not a PTU file: {} bytes, too short", bytes.len())))?;
    if magic != MAGIC {
        return Err(err(format!(
            "not a PTU file: magic {:?}, expected \"PQTTTR\"",
            String::from_utf8_lossy(magic)
        )));
    }
    let version = decode_ansi(cur.take(8, "version")?).trim().to_owned();

    let mut tags = Vec::new();
    loop {
        if cur.pos == bytes.len() {
            return Err(err("truncated header: no Header_End tag"));
        }
        let tag = parse_tag(&mut cur)?;
        let end = tag.ident == HEADER_END;
        tags.push(tag);
        if end {
            break;
        }
    }

    let find = |ident: &str| tags.iter().find(|t| t.ident == ident).map(|t| &t.value);
    let record_type_code = match find("TTResultFormat_TTTRRecType") {
        Some(TagValue::Int(v)) => u32::try_from(*v)
            .map_err(|_| err(format!("TTResultFormat_TTTRRecType {v} out of range")))?,
        Some(v) => {
            return Err(err(format!(
                "TTResultFormat_TTTRRecType is not an integer: {v:?}"
            )))
        }
        None => return Err(err("no TTResultFormat_TTTRRecType tag: not a TTTR file")),
    };
    if let Some(v) = find("TTResultFormat_BitsPerRecord") {
        // 0 appears in some writers' files and means the default, 32.
        if !matches!(v.as_i64(), Some(0 | 32)) {
            return Err(err(format!(
                "unsupported TTResultFormat_BitsPerRecord {v:?}"
            )));
        }
    }
    let declared = find("TTResult_NumberOfRecords").and_then(TagValue::as_i64);

    let data = &bytes[cur.pos..];
    let present = data.len() / 4;
    let mut warnings = Vec::new();
    let count = match declared {
        Some(n) if n > 0 => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if present < n {
                warnings.push(format!(
                    "file declares {n} records but holds {present}: reading those present"
                ));
                present
            } else {
                if data.len() > n * 4 {
                    warnings.push(format!(
                        "{} bytes after the last record ignored",
                        data.len() - n * 4
                    ));
                }
                n
            }
        }
        other => {
            if let Some(n) = other {
                warnings.push(format!(
                    "TTResult_NumberOfRecords is {n}: reading all {present} records present"
                ));
            }
            if data.len() % 4 != 0 {
                warnings.push(format!(
                    "{} bytes after the last record ignored",
                    data.len() % 4
                ));
            }
            present
        }
    };
    let records = data[..count * 4]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();

    Ok(PtuFile {
        version,
        tags,
        record_type_code,
        records,
        warnings,
    })
}

/// Reads and parses a `.ptu` file.
pub fn read(path: &Path) -> Result<PtuFile> {
    let bytes = std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    parse(&bytes).map_err(|e| match e {
        CoreError::Ptu(m) => err(format!("{}: {m}", path.display())),
        other => other,
    })
}

impl PtuFile {
    pub fn record_type(&self) -> Result<RecordType> {
        RecordType::from_code(self.record_type_code)
    }

    /// The first tag named `ident` (scalar tags have one).
    pub fn tag(&self, ident: &str) -> Option<&TagValue> {
        self.tags
            .iter()
            .find(|t| t.ident == ident)
            .map(|t| &t.value)
    }

    /// The tag named `ident` with the given element index (-1 for scalars).
    pub fn tag_at(&self, ident: &str, index: i32) -> Option<&TagValue> {
        self.tags
            .iter()
            .find(|t| t.ident == ident && t.index == index)
            .map(|t| &t.value)
    }

    /// Seconds per time tick (T2 tag, T3 sync period): `MeasDesc_GlobalResolution`.
    pub fn global_resolution(&self) -> Option<f64> {
        self.tag("MeasDesc_GlobalResolution")
            .and_then(TagValue::as_f64)
    }

    /// Seconds per T3 dtime bin: `MeasDesc_Resolution`.
    pub fn resolution(&self) -> Option<f64> {
        self.tag("MeasDesc_Resolution").and_then(TagValue::as_f64)
    }

    pub fn number_of_records(&self) -> usize {
        self.records.len()
    }

    /// Raster marker masks and pixel counts. Absent tags give `None`; a marker tag
    /// outside 1..=4 (there are four marker inputs) or a negative size is an error.
    pub fn image_markers(&self) -> Result<ImageMarkers> {
        let mask = |ident: &str| -> Result<Option<u8>> {
            match self.tag(ident) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n @ 1..=4) => Ok(Some(1u8 << (n - 1))),
                    _ => Err(err(format!("{ident} {v:?} is not a marker number 1..=4"))),
                },
            }
        };
        let size = |ident: &str| -> Result<Option<u32>> {
            match self.tag(ident) {
                None => Ok(None),
                Some(v) => match v.as_i64().map(u32::try_from) {
                    Some(Ok(n)) => Ok(Some(n)),
                    _ => Err(err(format!("{ident} {v:?} is not a pixel count"))),
                },
            }
        };
        Ok(ImageMarkers {
            line_start: mask("ImgHdr_LineStart")?,
            line_stop: mask("ImgHdr_LineStop")?,
            frame: mask("ImgHdr_Frame")?,
            pix_x: size("ImgHdr_PixX")?,
            pix_y: size("ImgHdr_PixY")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag_head(out: &mut Vec<u8>, ident: &str, index: i32, ty: u32, value: [u8; 8]) {
        let mut name = [0u8; 32];
        name[..ident.len()].copy_from_slice(ident.as_bytes());
        out.extend_from_slice(&name);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&value);
    }
    fn int(out: &mut Vec<u8>, ident: &str, v: i64) {
        tag_head(out, ident, -1, TY_INT8, v.to_le_bytes());
    }
    fn var(out: &mut Vec<u8>, ident: &str, index: i32, ty: u32, data: &[u8]) {
        tag_head(out, ident, index, ty, (data.len() as i64).to_le_bytes());
        out.extend_from_slice(data);
    }

    /// A small but complete file using every tag type.
    fn sample(records: &[u32], declared: i64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(b"1.0.00\0\0");
        var(
            &mut b,
            "File_Comment",
            -1,
            TY_ANSI_STRING,
            b"caf\xe9 \xb5m\0\0\0",
        );
        let wide: Vec<u8> = "µs Å"
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect();
        var(&mut b, "UsrHeadName", 0, TY_WIDE_STRING, &wide);
        var(&mut b, "UsrHeadName", 1, TY_ANSI_STRING, "ok µ".as_bytes());
        tag_head(&mut b, "Fast_Load_End", -1, TY_EMPTY8, [0; 8]);
        tag_head(&mut b, "Measurement_Flag", -1, TY_BOOL8, 1u64.to_le_bytes());
        tag_head(
            &mut b,
            "HW_Features",
            -1,
            TY_BITSET64,
            0x55u64.to_le_bytes(),
        );
        tag_head(&mut b, "Colour", -1, TY_COLOR8, 7u64.to_le_bytes());
        tag_head(
            &mut b,
            "MeasDesc_GlobalResolution",
            -1,
            TY_FLOAT8,
            1e-7f64.to_le_bytes(),
        );
        tag_head(
            &mut b,
            "MeasDesc_Resolution",
            -1,
            TY_FLOAT8,
            2.5e-11f64.to_le_bytes(),
        );
        tag_head(
            &mut b,
            "File_CreatingTime",
            -1,
            TY_DATETIME,
            45000.5f64.to_le_bytes(),
        );
        let arr: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        var(&mut b, "Curve", -1, TY_FLOAT8_ARRAY, &arr);
        var(&mut b, "Blob", -1, TY_BINARY_BLOB, &[1, 2, 3]);
        tag_head(&mut b, "Future", -1, 0x3000_0008, 9u64.to_le_bytes());
        int(&mut b, "ImgHdr_LineStart", 1);
        int(&mut b, "ImgHdr_LineStop", 2);
        int(&mut b, "ImgHdr_Frame", 3);
        int(&mut b, "ImgHdr_PixX", 256);
        int(&mut b, "ImgHdr_PixY", 128);
        int(&mut b, "TTResultFormat_TTTRRecType", 0x0001_0303);
        int(&mut b, "TTResultFormat_BitsPerRecord", 32);
        int(&mut b, "TTResult_NumberOfRecords", declared);
        tag_head(&mut b, HEADER_END, -1, TY_EMPTY8, [0; 8]);
        for r in records {
            b.extend_from_slice(&r.to_le_bytes());
        }
        b
    }

    const RECS: [u32; 3] = [0xF000_0000, 0x1001_0002, 0xDEAD_BEEF];

    #[test]
    fn parses_every_tag_type() {
        let f = parse(&sample(&RECS, 3)).unwrap();
        assert_eq!(f.version, "1.0.00");
        assert_eq!(f.records, RECS);
        assert!(f.warnings.is_empty());
        assert_eq!(f.record_type().unwrap(), RecordType::PicoHarpT3);
        assert_eq!(f.number_of_records(), 3);
        assert_eq!(f.global_resolution(), Some(1e-7));
        assert_eq!(f.resolution(), Some(2.5e-11));
        // Not UTF-8, so Latin-1.
        assert_eq!(f.tag("File_Comment").unwrap().as_str(), Some("café µm"));
        assert_eq!(f.tag_at("UsrHeadName", 0).unwrap().as_str(), Some("µs Å"));
        assert_eq!(
            f.tag_at("UsrHeadName", 1),
            Some(&TagValue::AnsiString("ok µ".into()))
        );
        assert_eq!(f.tag("Fast_Load_End"), Some(&TagValue::Empty));
        assert_eq!(f.tag("Measurement_Flag"), Some(&TagValue::Bool(true)));
        assert_eq!(f.tag("HW_Features"), Some(&TagValue::BitSet(0x55)));
        assert_eq!(f.tag("Colour"), Some(&TagValue::Color(7)));
        assert_eq!(
            f.tag("File_CreatingTime"),
            Some(&TagValue::DateTime(45000.5))
        );
        assert_eq!(f.tag("Curve"), Some(&TagValue::FloatArray(vec![1.5, -2.0])));
        assert_eq!(f.tag("Blob"), Some(&TagValue::Blob(vec![1, 2, 3])));
        assert_eq!(
            f.tag("Future"),
            Some(&TagValue::Unknown {
                type_code: 0x3000_0008,
                bits: 9
            })
        );
        assert_eq!(
            f.image_markers().unwrap(),
            ImageMarkers {
                line_start: Some(1),
                line_stop: Some(2),
                frame: Some(4),
                pix_x: Some(256),
                pix_y: Some(128)
            }
        );
    }

    #[test]
    fn truncation_anywhere_is_an_error_or_a_warning_never_a_panic() {
        let full = sample(&RECS, 3);
        let header_len = full.len() - 12;
        for cut in 0..full.len() {
            match parse(&full[..cut]) {
                Err(CoreError::Ptu(msg)) => {
                    assert!(cut < header_len, "cut {cut}: {msg}");
                    assert!(!msg.is_empty());
                }
                Ok(f) => {
                    assert!(cut >= header_len, "cut {cut} parsed");
                    assert_eq!(f.records, RECS[..(cut - header_len) / 4]);
                    assert!(!f.warnings.is_empty());
                }
                Err(e) => panic!("unexpected error kind {e}"),
            }
        }
    }

    #[test]
    fn garbled_bytes_never_panic() {
        let full = sample(&RECS, 3);
        let mut x: u32 = 0x9E37_79B9;
        for _ in 0..3000 {
            let mut g = full.clone();
            for _ in 0..3 {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let at = (x as usize >> 8) % g.len();
                g[at] = (x >> 24) as u8;
            }
            let _ = parse(&g);
        }
        for n in [0usize, 1, 7, 8, 15, 16, 17, 63, 64, 200] {
            let _ = parse(&vec![0xFF; n]);
            let mut v = MAGIC.to_vec();
            v.resize(n.max(8), 0xFF);
            let _ = parse(&v);
        }
    }

    fn expect_err(bytes: &[u8], needle: &str) {
        match parse(bytes) {
            Err(CoreError::Ptu(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected a PTU error with {needle:?}, got {other:?}"),
        }
    }

    fn header_only() -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(b"1.0.00\0\0");
        b
    }

    #[test]
    fn clear_errors_for_broken_headers() {
        expect_err(b"PQTT", "too short");
        let mut bad = sample(&RECS, 3);
        bad[..8].copy_from_slice(b"PQHISTO\0");
        expect_err(&bad, "magic");
        expect_err(&header_only(), "Header_End");

        let mut neg = header_only();
        tag_head(&mut neg, "S", -1, TY_ANSI_STRING, (-5i64).to_le_bytes());
        expect_err(&neg, "negative length");

        let mut huge = header_only();
        tag_head(
            &mut huge,
            "S",
            -1,
            TY_BINARY_BLOB,
            (1i64 << 40).to_le_bytes(),
        );
        expect_err(&huge, "truncated");

        let mut odd = header_only();
        var(&mut odd, "A", -1, TY_FLOAT8_ARRAY, &[0; 12]);
        expect_err(&odd, "multiple of 8");

        let mut unk = header_only();
        var(&mut unk, "A", -1, 0x5001_FFFF, &[0; 4]);
        expect_err(&unk, "unknown variable-length");

        let mut no_type = header_only();
        tag_head(&mut no_type, HEADER_END, -1, TY_EMPTY8, [0; 8]);
        expect_err(&no_type, "TTResultFormat_TTTRRecType");

        let mut bits = header_only();
        int(&mut bits, "TTResultFormat_TTTRRecType", 0x0001_0303);
        int(&mut bits, "TTResultFormat_BitsPerRecord", 64);
        tag_head(&mut bits, HEADER_END, -1, TY_EMPTY8, [0; 8]);
        expect_err(&bits, "BitsPerRecord");
    }

    #[test]
    fn record_count_policy() {
        // Declared more than present: keep what is there, warn.
        let f = parse(&sample(&RECS, 10)).unwrap();
        assert_eq!(f.records, RECS);
        assert!(f.warnings[0].contains("declares 10"));
        // Declared fewer: trust the header, warn about the rest.
        let f = parse(&sample(&RECS, 2)).unwrap();
        assert_eq!(f.records, RECS[..2]);
        assert!(f.warnings[0].contains("4 bytes"));
        // Zero or negative: read everything present.
        for n in [0, -1] {
            let mut b = sample(&RECS, n);
            b.push(0xAA);
            let f = parse(&b).unwrap();
            assert_eq!(f.records, RECS);
            assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
        }
    }

    #[test]
    fn unknown_record_type_and_bad_marker_tags() {
        let mut b = sample(&RECS, 3);
        let at = b
            .windows(26)
            .position(|w| w.starts_with(b"TTResultFormat_TTTRRecType"))
            .unwrap();
        b[at + 40..at + 48].copy_from_slice(&0x0001_0399i64.to_le_bytes());
        let f = parse(&b).unwrap();
        assert!(matches!(
            f.record_type(),
            Err(CoreError::UnknownRecordType(0x0001_0399))
        ));

        let mut f = parse(&sample(&RECS, 3)).unwrap();
        for t in &mut f.tags {
            if t.ident == "ImgHdr_Frame" {
                t.value = TagValue::Int(9);
            }
        }
        assert!(matches!(f.image_markers(), Err(CoreError::Ptu(_))));
    }

    #[test]
    fn real_hazelnut_file_if_present() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ptu/hazelnut_z1.ptu");
        if !path.exists() {
            return;
        }
        let f = read(&path).unwrap();
        assert_eq!(f.record_type().unwrap(), RecordType::PicoHarpT3);
        assert_eq!(f.number_of_records(), 155_398);
        assert!(f.warnings.is_empty());
        let m = f.image_markers().unwrap();
        assert_eq!(
            (m.line_start, m.line_stop, m.frame),
            (Some(1), Some(2), Some(4))
        );
        assert_eq!((m.pix_x, m.pix_y), (Some(256), Some(256)));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        match read(Path::new("/nonexistent/x.ptu")) {
            Err(CoreError::Io(e)) => assert!(e.to_string().contains("/nonexistent/x.ptu")),
            other => panic!("{other:?}"),
        }
    }
}
