//! `.ptu` files: the header parser and what readers take from a parsed file.

use crate::error::CoreError;
use crate::link::ptu::{parse, TagValue};
use crate::link::tttr::decode_columns;

/// Arbitrary bytes as a whole `.ptu` file. A file that parses keeps only whole records
/// of the record area, as many as it declares when it holds them all; its tags, image
/// markers and records can be asked for; parsing is deterministic. Anything else is a
/// `CoreError::Ptu`.
pub fn ptu_header(data: &[u8]) {
    let file = match parse(data) {
        Ok(f) => f,
        Err(CoreError::Ptu(_)) => return,
        Err(e) => panic!("a .ptu parse failed with {e:?}, not a PTU error"),
    };
    let present = data.len() / 4;
    assert!(file.records.len() <= present);
    let declared = file
        .tag("TTResult_NumberOfRecords")
        .and_then(TagValue::as_i64);
    if let Some(n) = declared
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
    {
        assert!(file.records.len() <= n, "more records than declared");
    }
    assert!(file.tags.iter().any(|t| t.ident == "Header_End"));
    for t in &file.tags {
        let _ = (t.value.as_f64(), t.value.as_i64(), t.value.as_str());
        let _ = file.tag_at(&t.ident, t.index);
    }
    let _ = (file.global_resolution(), file.resolution());
    match file.image_markers() {
        Ok(m) => {
            for mask in [m.line_start, m.line_stop, m.frame].into_iter().flatten() {
                assert!(mask.is_power_of_two() && mask <= 8, "marker mask {mask}");
            }
        }
        Err(CoreError::Ptu(_)) => {}
        Err(e) => panic!("image_markers failed with {e:?}, not a PTU error"),
    }
    if let Ok(kind) = file.record_type() {
        assert_eq!(
            decode_columns(kind, &file.records).len(),
            file.records.len()
        );
    }
    // Compared as text: a NaN tag value is not equal to itself.
    let again = parse(data).expect("a file that parsed once parses again");
    assert_eq!(
        format!("{again:?}"),
        format!("{file:?}"),
        "parsing is not deterministic"
    );
}
