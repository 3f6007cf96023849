//! The one walk over a JPEG's marker segments, shared by the marker checks
//! of `image_io` and the scan walk of `jpeg_scan`.

/// A marker segment: `FF marker`, then for most markers a 2-byte length and
/// a body.
pub(crate) struct Segment<'a> {
    /// The marker byte.
    pub marker: u8,
    /// Offset of the `FF` right before the marker byte.
    pub at: usize,
    /// The segment's body (after the length), cut short where the data
    /// ends; empty for markers without one.
    pub body: &'a [u8],
    /// Offset after the segment (possibly past the data's end).
    pub next: usize,
}

/// The segment at or after `i`. Stray bytes and fill `FF`s before a marker
/// are skipped, as libjpeg skips them; TEM, RSTn, SOI, EOI and a stray
/// `FF 00` have no length. `None` when the data ends before a marker or its
/// length.
pub(crate) fn segment_at(bytes: &[u8], i: usize) -> Option<Segment<'_>> {
    let mut at = i + bytes.get(i..)?.iter().position(|&b| b == 0xFF)?;
    while bytes.get(at + 1) == Some(&0xFF) {
        at += 1;
    }
    let marker = *bytes.get(at + 1)?;
    if matches!(marker, 0x00 | 0x01 | 0xD0..=0xD9) {
        return Some(Segment {
            marker,
            at,
            body: &[],
            next: at + 2,
        });
    }
    let len = usize::from(u16::from_be_bytes([
        *bytes.get(at + 2)?,
        *bytes.get(at + 3)?,
    ]));
    let next = at + 2 + len.max(2);
    let body = bytes.get(at + 4..next.min(bytes.len())).unwrap_or(&[]);
    Some(Segment {
        marker,
        at,
        body,
        next,
    })
}
