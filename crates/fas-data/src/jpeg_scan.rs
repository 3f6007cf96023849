//! Verification of the entropy-coded data of sequential Huffman JPEGs
//! (baseline SOF0 and extended SOF1: what cameras, phones and libjpeg
//! write), block by block, without reconstructing pixels.
//!
//! The decoder (`zune-jpeg` through `image`, like libjpeg) is lenient: it
//! decodes damaged scan data into plausible-looking wrong pixels and fills
//! missing blocks with grey. Damage that leaves no stray marker (see `image_io`) still
//! breaks the structure the encoder wrote, and this walk finds it where the
//! structure allows:
//!
//! * a bit pattern that is no code of the scan's Huffman tables;
//! * an AC run that goes past coefficient 63, or a magnitude category a
//!   baseline/extended encoder cannot emit;
//! * a coefficient larger than any 8x8 block of valid samples yields
//!   (`|coefficient x quantiser| > 1040 + quantiser` for 8-bit samples:
//!   the transform's bound of 1024, a margin for integer transforms, one
//!   step of rounding; 16x for 12-bit), the DC coefficient tracked through
//!   its prediction;
//! * data that ends before the last block of a scan or restart interval
//!   (libjpeg: "premature end of data segment");
//! * whole bytes left after the last block of a scan or restart interval
//!   (libjpeg: "N extraneous bytes before marker").
//!
//! What it cannot find: JPEG has no checksum, so damage that happens to
//! decode as valid codes of the right count and size changes pixels
//! undetectably. Progressive, lossless and arithmetic-coded files, and
//! files whose height is given later by a DNL marker, are not walked.

use crate::jpeg_segments::{segment_at, Segment};

/// Walks every scan of `bytes` (a whole JPEG starting with SOI). `Ok` for
/// files it does not walk (see the module docs).
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    let mut state = State::default();
    let mut i = 2;
    while let Some(Segment {
        marker, body, next, ..
    }) = segment_at(bytes, i)
    {
        match marker {
            0xC0 | 0xC1 => {
                let walked = state.read_frame(body)?;
                if !walked {
                    return Ok(());
                }
            }
            // Progressive, lossless, arithmetic-coded: not walked.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(()),
            0xC4 => state.read_huffman(body)?,
            0xDB => state.read_quantisers(body)?,
            0xDD => {
                let ri = body
                    .get(..2)
                    .ok_or("a restart-interval segment shorter than 2 bytes")?;
                state.restart_interval = u16::from_be_bytes([ri[0], ri[1]]) as usize;
            }
            0xDA => {
                let end = state.scan(body, bytes, next)?;
                i = end;
                continue;
            }
            0xD9 => return Ok(()),
            _ => {}
        }
        i = next;
    }
    Ok(())
}

/// A frame component: sampling factors and quantiser table.
#[derive(Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    quantiser: usize,
}

#[derive(Default)]
struct State {
    width: usize,
    height: usize,
    /// 8 or 12.
    precision: u8,
    components: Vec<Component>,
    /// Index `class * 4 + id` (class 0 DC, 1 AC).
    tables: [Option<Huffman>; 8],
    /// Quantisers in zigzag order, as stored.
    quantisers: [Option<[u16; 64]>; 4],
    restart_interval: usize,
}

impl State {
    /// Reads SOF0/SOF1; `false` when the file is not walked (DNL height).
    fn read_frame(&mut self, body: &[u8]) -> Result<bool, String> {
        let short = || "a start-of-frame segment shorter than its component list".to_string();
        let head = body.get(..6).ok_or_else(short)?;
        self.precision = head[0];
        self.height = usize::from(u16::from_be_bytes([head[1], head[2]]));
        self.width = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if !matches!(self.precision, 8 | 12) {
            return Err(format!("a sample precision of {} bits", self.precision));
        }
        if self.height == 0 {
            return Ok(false);
        }
        let count = usize::from(head[5]);
        let list = body.get(6..6 + 3 * count).ok_or_else(short)?;
        self.components = list
            .chunks_exact(3)
            .map(|c| Component {
                id: c[0],
                h: usize::from(c[1] >> 4),
                v: usize::from(c[1] & 15),
                quantiser: usize::from(c[2]),
            })
            .collect();
        for c in &self.components {
            if !(1..=4).contains(&c.h) || !(1..=4).contains(&c.v) || c.quantiser > 3 {
                return Err(format!(
                    "component {} has sampling {}x{} and quantiser table {}",
                    c.id, c.h, c.v, c.quantiser
                ));
            }
        }
        if self.components.is_empty() || self.width == 0 {
            return Err("a frame without components or width".to_string());
        }
        Ok(true)
    }

    fn read_huffman(&mut self, mut body: &[u8]) -> Result<(), String> {
        while !body.is_empty() {
            let class_id = body[0];
            let (class, id) = (usize::from(class_id >> 4), usize::from(class_id & 15));
            if class > 1 || id > 3 {
                return Err(format!("a Huffman table of class {class} and id {id}"));
            }
            let counts = body.get(1..17).ok_or("a Huffman table cut short")?;
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            let values = body
                .get(17..17 + total)
                .ok_or("a Huffman table cut short")?;
            self.tables[class * 4 + id] = Some(Huffman::new(counts, values)?);
            body = &body[17 + total..];
        }
        Ok(())
    }

    fn read_quantisers(&mut self, mut body: &[u8]) -> Result<(), String> {
        while !body.is_empty() {
            let (wide, id) = (body[0] >> 4, usize::from(body[0] & 15));
            if wide > 1 || id > 3 {
                return Err(format!(
                    "a quantisation table of precision {wide} and id {id}"
                ));
            }
            let size = if wide == 1 { 128 } else { 64 };
            let raw = body
                .get(1..1 + size)
                .ok_or("a quantisation table cut short")?;
            let mut table = [0u16; 64];
            for (k, q) in table.iter_mut().enumerate() {
                *q = if wide == 1 {
                    u16::from_be_bytes([raw[2 * k], raw[2 * k + 1]])
                } else {
                    u16::from(raw[k])
                };
            }
            self.quantisers[id] = Some(table);
            body = &body[1 + size..];
        }
        Ok(())
    }

    /// Walks the scan whose header is `header` and whose data starts at
    /// `start`; returns the offset of the marker that ends it.
    fn scan(&self, header: &[u8], bytes: &[u8], start: usize) -> Result<usize, String> {
        if self.components.is_empty() {
            return Err("a scan before the start-of-frame header".to_string());
        }
        let count = usize::from(*header.first().ok_or("an empty scan header")?);
        let list = header
            .get(1..1 + 2 * count)
            .ok_or("a scan header shorter than its component list")?;
        let h_max = self.components.iter().map(|c| c.h).max().unwrap_or(1);
        let v_max = self.components.iter().map(|c| c.v).max().unwrap_or(1);
        // |F(u,v)| <= 1024 for every coefficient of 8-bit samples (max over
        // samples in -128..=127 of (1/4) C(u) C(v) sum f cos cos, reached
        // at u, v in {0, 4}), 16384 for 12-bit; 16/256 more for the integer
        // transforms' error, one quantiser step more (below) for rounding.
        let limit = if self.precision == 12 {
            16 * 1040
        } else {
            1040
        };
        let mut members = Vec::with_capacity(count);
        for pair in list.chunks_exact(2) {
            let c = *self
                .components
                .iter()
                .find(|c| c.id == pair[0])
                .ok_or_else(|| format!("the scan names component {}, not in the frame", pair[0]))?;
            let table = |class: usize, id: u8| {
                self.tables
                    .get(class * 4 + usize::from(id))
                    .and_then(Option::as_ref)
                    .ok_or_else(|| {
                        format!(
                            "component {} uses {} Huffman table {id}, never defined",
                            c.id,
                            ["DC", "AC"][class]
                        )
                    })
            };
            let quantiser = self.quantisers[c.quantiser].ok_or_else(|| {
                format!(
                    "component {} uses quantisation table {}, never defined",
                    c.id, c.quantiser
                )
            })?;
            members.push(Member {
                dc: table(0, pair[1] >> 4)?,
                ac: table(1, pair[1] & 15)?,
                quantiser,
                blocks: if count == 1 { 1 } else { c.h * c.v },
                prediction: 0,
            });
            // Non-interleaved: one block per MCU over the component's own grid.
            if count == 1 {
                let w = (self.width * c.h).div_ceil(h_max).div_ceil(8);
                let h = (self.height * c.v).div_ceil(v_max).div_ceil(8);
                return self.walk(&mut members, w * h, limit, bytes, start);
            }
        }
        let mcus = self.width.div_ceil(8 * h_max) * self.height.div_ceil(8 * v_max);
        self.walk(&mut members, mcus, limit, bytes, start)
    }

    fn walk(
        &self,
        members: &mut [Member],
        mcus: usize,
        limit: i64,
        bytes: &[u8],
        start: usize,
    ) -> Result<usize, String> {
        let mut bits = Bits::new(bytes, start);
        let interval = if self.restart_interval == 0 {
            mcus
        } else {
            self.restart_interval
        };
        let mut mcu = 0;
        while mcu < mcus {
            let end = (mcu + interval).min(mcus);
            while mcu < end {
                for m in members.iter_mut() {
                    for _ in 0..m.blocks {
                        block(&mut bits, m, limit)
                            .map_err(|e| format!("{e} in MCU {mcu} of {mcus}"))?;
                    }
                }
                mcu += 1;
            }
            let left = bits.bytes_left();
            if left > 0 {
                return Err(format!(
                    "{left} bytes of scan data left after MCU {} of {mcus} (damaged scan)",
                    mcu - 1
                ));
            }
            if mcu < mcus {
                bits.restart()
                    .map_err(|e| format!("{e} after MCU {} of {mcus}", mcu - 1))?;
                for m in members.iter_mut() {
                    m.prediction = 0;
                }
            }
        }
        Ok(bits.marker)
    }
}

/// A component as one scan codes it.
struct Member<'a> {
    dc: &'a Huffman,
    ac: &'a Huffman,
    quantiser: [u16; 64],
    /// Blocks per MCU.
    blocks: usize,
    prediction: i64,
}

/// Decodes one 8x8 block's codes, checking what the module docs list.
#[inline]
fn block(bits: &mut Bits, m: &mut Member, limit: i64) -> Result<(), String> {
    let category = m.dc.decode(bits)?;
    if category > 15 {
        return Err(format!("a DC magnitude category of {category}"));
    }
    m.prediction += bits.signed(category)?;
    let q = i64::from(m.quantiser[0]);
    if m.prediction.abs() * q > limit + q {
        return Err(format!(
            "a DC coefficient of {} (x quantiser {q}) no valid block yields",
            m.prediction
        ));
    }
    let mut k = 1;
    while k < 64 {
        let rs = m.ac.decode(bits)?;
        let (run, size) = (usize::from(rs >> 4), rs & 15);
        if size == 0 {
            if run != 15 {
                return Ok(()); // end of block
            }
            k += 16;
            if k > 63 {
                return Err("a zero run past coefficient 63".to_string());
            }
            continue;
        }
        k += run;
        if k > 63 {
            return Err("an AC run past coefficient 63".to_string());
        }
        let value = bits.signed(size)?;
        let q = i64::from(m.quantiser[k]);
        if value.abs() * q > limit + q {
            return Err(format!(
                "an AC coefficient of {value} (x quantiser {q}) no valid block yields"
            ));
        }
        k += 1;
    }
    Ok(())
}

/// A canonical Huffman table: a 9-bit lookup for short codes, the
/// per-length code ranges for the rest.
struct Huffman {
    /// `(length << 8) | symbol` for every 9-bit prefix starting with a code
    /// of at most 9 bits; 0 where none does.
    fast: Vec<u16>,
    /// Largest code of each length (index 1..=16), -1 where none.
    max_code: [i32; 17],
    /// Index in `values` of the first code of each length, minus that code.
    offset: [i32; 17],
    values: Vec<u8>,
}

const FAST_BITS: u32 = 9;

impl Huffman {
    fn new(counts: &[u8], values: &[u8]) -> Result<Self, String> {
        let mut max_code = [-1i32; 17];
        let mut offset = [0i32; 17];
        let mut fast = vec![0u16; 1 << FAST_BITS];
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16 {
            let n = i32::from(counts[len - 1]);
            if code + n > (1 << len) {
                return Err("a Huffman table with more codes than its lengths allow".to_string());
            }
            offset[len] = k as i32 - code;
            for j in 0..n {
                let c = (code + j) as u32;
                if len as u32 <= FAST_BITS {
                    let shift = FAST_BITS - len as u32;
                    for fill in 0..(1u32 << shift) {
                        fast[((c << shift) | fill) as usize] =
                            ((len as u16) << 8) | u16::from(values[k + j as usize]);
                    }
                }
            }
            code += n;
            k += n as usize;
            if n > 0 {
                max_code[len] = code - 1;
            }
            code <<= 1;
        }
        Ok(Self {
            fast,
            max_code,
            offset,
            values: values.to_vec(),
        })
    }

    #[inline]
    fn decode(&self, bits: &mut Bits) -> Result<u8, String> {
        bits.fill();
        if bits.count >= 16 {
            let window = bits.buffer >> 48;
            let entry = self.fast[(window >> (16 - FAST_BITS)) as usize];
            if entry != 0 {
                bits.consume(u32::from(entry >> 8));
                return Ok(entry as u8);
            }
            for len in FAST_BITS as usize + 1..=16 {
                let code = (window >> (16 - len)) as i32;
                if code <= self.max_code[len] {
                    bits.consume(len as u32);
                    return Ok(self.values[(code + self.offset[len]) as usize]);
                }
            }
            return Err(Self::no_code());
        }
        // Near the end of the data: bit by bit, never past it.
        let mut code = 0i32;
        for len in 1..=16 {
            code = (code << 1) | bits.bit()? as i32;
            if code <= self.max_code[len] {
                return Ok(self.values[(code + self.offset[len]) as usize]);
            }
        }
        Err(Self::no_code())
    }

    fn no_code() -> String {
        "a bit pattern that is no Huffman code of the scan".to_string()
    }
}

/// The bits of one scan's entropy-coded data, stuffed zeros removed, up to
/// the next marker.
struct Bits<'a> {
    bytes: &'a [u8],
    /// Next byte to load.
    pos: usize,
    /// Offset of the marker that stopped loading (valid once `at_marker`).
    marker: usize,
    at_marker: bool,
    buffer: u64,
    /// Bits in `buffer`, all real data.
    count: u32,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8], pos: usize) -> Self {
        Self {
            bytes,
            pos,
            marker: bytes.len(),
            at_marker: false,
            buffer: 0,
            count: 0,
        }
    }

    #[inline]
    fn fill(&mut self) {
        if self.count >= 32 {
            return;
        }
        while self.count <= 56 && !self.at_marker {
            match self.bytes.get(self.pos) {
                None => {
                    self.at_marker = true;
                    self.marker = self.bytes.len();
                }
                Some(&0xFF) if self.bytes.get(self.pos + 1) == Some(&0x00) => {
                    self.push(0xFF);
                    self.pos += 2;
                }
                Some(&0xFF) => {
                    self.at_marker = true;
                    self.marker = self.pos;
                }
                Some(&b) => {
                    self.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    #[inline]
    fn push(&mut self, byte: u8) {
        self.buffer |= u64::from(byte) << (56 - self.count);
        self.count += 8;
    }

    /// The next `n` bits, when that many remain.
    #[inline]
    fn peek(&mut self, n: u32) -> Option<u32> {
        self.fill();
        (self.count >= n).then(|| (self.buffer >> (64 - n)) as u32)
    }

    #[inline]
    fn consume(&mut self, n: u32) {
        self.buffer <<= n;
        self.count -= n;
    }

    fn bit(&mut self) -> Result<u32, String> {
        let bit = self.peek(1).ok_or_else(Self::exhausted)?;
        self.consume(1);
        Ok(bit)
    }

    /// A magnitude of `size` bits, sign-extended as JPEG codes it.
    #[inline]
    fn signed(&mut self, size: u8) -> Result<i64, String> {
        if size == 0 {
            return Ok(0);
        }
        let n = u32::from(size);
        let raw = i64::from(self.peek(n).ok_or_else(Self::exhausted)?);
        self.consume(n);
        Ok(if raw < 1 << (n - 1) {
            raw - (1 << n) + 1
        } else {
            raw
        })
    }

    fn exhausted() -> String {
        "scan data that ends before its last block (damaged or cut scan)".to_string()
    }

    /// Whole bytes left before the marker, after dropping the partial byte
    /// of padding bits.
    fn bytes_left(&mut self) -> usize {
        self.consume(self.count % 8);
        let mut left = (self.count / 8) as usize;
        while !self.at_marker {
            self.count = 0;
            self.buffer = 0;
            self.fill();
            left += (self.count / 8) as usize;
        }
        self.count = 0;
        self.buffer = 0;
        left
    }

    /// Steps over the restart marker that must follow a restart interval.
    fn restart(&mut self) -> Result<(), String> {
        let mut i = self.marker;
        while self.bytes.get(i) == Some(&0xFF) && self.bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        match self.bytes.get(i + 1) {
            Some(0xD0..=0xD7) => {
                *self = Bits::new(self.bytes, i + 2);
                Ok(())
            }
            _ => Err("no restart marker where a restart interval ends (damaged scan)".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-component JPEG of `width` x 8 pixels whose DC and AC tables
    /// each hold the single 1-bit code `0` (for `dc_symbol` / `ac_symbol`),
    /// with quantiser `q` everywhere, restart interval `restart`, and scan
    /// data `scan`. Bit patterns below are derived by hand from these tables.
    fn jpeg(width: u8, q: u8, dc_symbol: u8, ac_symbol: u8, restart: u8, scan: &[u8]) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        b.extend([0xFF, 0xDB, 0x00, 67, 0x00]);
        b.extend([q; 64]);
        b.extend([0xFF, 0xC0, 0x00, 11, 8, 0, 8, 0, width, 1, 1, 0x11, 0]);
        for (class, symbol) in [(0x00, dc_symbol), (0x10, ac_symbol)] {
            b.extend([0xFF, 0xC4, 0x00, 20, class, 1]);
            b.extend([0; 15]);
            b.push(symbol);
        }
        if restart > 0 {
            b.extend([0xFF, 0xDD, 0x00, 4, 0, restart]);
        }
        b.extend([0xFF, 0xDA, 0x00, 8, 1, 1, 0x00, 0, 63, 0]);
        b.extend(scan);
        b.extend([0xFF, 0xD9]);
        b
    }

    #[test]
    fn a_whole_scan_passes() {
        // One block: DC code `0` (category 0), AC code `0` (end of block),
        // then six 1-bits of padding: 0b0011_1111.
        assert_eq!(check(&jpeg(8, 1, 0, 0x00, 0, &[0x3F])), Ok(()));
        // Four blocks in one byte of zeros; two MCUs split by a restart.
        assert_eq!(check(&jpeg(32, 1, 0, 0x00, 0, &[0x00])), Ok(()));
        let restarted = [0x3F, 0xFF, 0xD0, 0x3F];
        assert_eq!(check(&jpeg(16, 1, 0, 0x00, 1, &restarted)), Ok(()));
    }

    fn fault(bytes: &[u8]) -> String {
        check(bytes).expect_err("a damaged scan")
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        // Two stuffed FFs: sixteen 1-bits, and `1...` is no code of the table.
        let err = fault(&jpeg(8, 1, 0, 0x00, 0, &[0xFF, 0x00, 0xFF, 0x00]));
        assert!(err.contains("no Huffman code"), "{err}");
        // AC symbol F0 (sixteen zeros): 1 -> 17 -> 33 -> 49 -> past 63.
        let err = fault(&jpeg(8, 1, 0, 0xF0, 0, &[0x07]));
        assert!(err.contains("past coefficient 63"), "{err}");
        // DC category 10 with magnitude bits 11 1111 1111: 1023 x q 2 =
        // 2046, beyond 1040 + q. Bits: 0 1111111111 0 + padding 1111.
        let err = fault(&jpeg(8, 2, 10, 0x00, 0, &[0x7F, 0xEF]));
        assert!(err.contains("DC coefficient of 1023"), "{err}");
        // The same magnitude under q 1 is within the bound.
        assert_eq!(check(&jpeg(8, 1, 10, 0x00, 0, &[0x7F, 0xEF])), Ok(()));
        // AC symbol 0x0A (run 0, size 10) after DC 0: 1023 at q 2. Bits:
        // 0 0 1111111111 + padding 1111, the FF byte stuffed.
        let err = fault(&jpeg(8, 2, 0, 0x0A, 0, &[0x3F, 0xFF, 0x00]));
        assert!(err.contains("AC coefficient of 1023"), "{err}");
        // Five blocks need ten bits; one byte holds eight.
        let err = fault(&jpeg(40, 1, 0, 0x00, 0, &[0x00]));
        assert!(err.contains("ends before its last block"), "{err}");
        // A whole byte after the last block.
        let err = fault(&jpeg(8, 1, 0, 0x00, 0, &[0x3F, 0x00]));
        assert!(err.contains("1 bytes of scan data left"), "{err}");
        // A restart interval of one MCU without its restart marker.
        let err = fault(&jpeg(16, 1, 0, 0x00, 1, &[0x3F, 0x3F]));
        assert!(err.contains("left after MCU 0"), "{err}");
    }

    #[test]
    fn malformed_tables_are_errors_not_panics() {
        // Three 1-bit codes cannot exist.
        let mut counts = [0u8; 16];
        counts[0] = 3;
        assert!(Huffman::new(&counts, &[0, 1, 2]).is_err());
        // Every prefix of a valid file, and the file with each byte
        // replaced, ends in Ok or Err.
        let whole = jpeg(16, 1, 0, 0x00, 1, &[0x3F, 0xFF, 0xD0, 0x3F]);
        for cut in 0..whole.len() {
            let _ = check(&whole[..cut]);
            for byte in [0x00, 0x01, 0x7F, 0xFF] {
                let mut damaged = whole.clone();
                damaged[cut] = byte;
                let _ = check(&damaged);
            }
        }
    }
}
