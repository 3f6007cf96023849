//! A bound on what candle's pickle reader builds from a PyTorch checkpoint.
//!
//! candle's reader (`candle_core::pickle`) copies an object each time the
//! pickle stores it in its memo (`BINPUT`) or fetches it back (`BINGET`),
//! where Python shares one object. A pickle that fetches a list twice into
//! a new list, stores that, and repeats, doubles what the reader holds with
//! every few bytes: a file of a kilobyte asks for more memory than any
//! machine has, and the process is killed (or aborts) instead of reporting
//! an error. Fetching one large object many times grows as the square of
//! the file's size.
//!
//! [`check_expansion`] replays the file's opcodes the way candle's reader
//! does, but keeps only each object's approximate size in bytes, and
//! refuses the file once the copies the reader would make add up to more
//! than [`MAX_COPIED_BYTES`]. A `torch.save` state dict fetches only small
//! objects (names, storage classes, argument tuples) from its memo: the
//! copies of a `torch.save`d `transformers` CLIP state dict, 398 tensors
//! as in `openai/clip-vit-base-patch16`, come to about 2 MB.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// The most bytes of copies (memo stores and fetches) a pickle may cost
/// candle's reader: far above any state dict's, far below what a machine
/// that trains CLIP has.
pub(crate) const MAX_COPIED_BYTES: u64 = 1 << 30;

/// The size counted for any object besides its contents: candle's `Object`
/// is a few words.
const OBJECT_BYTES: u64 = 64;

/// One entry on the replayed stack.
#[derive(Clone, Copy)]
enum Slot {
    /// The `MARK` opcode's marker.
    Mark,
    /// An object of this approximate size in bytes.
    Object(u64),
}

/// Refuses a PyTorch zip checkpoint whose pickles (every entry named
/// `*data.pkl`, the ones candle reads) would make candle's reader copy more
/// than [`MAX_COPIED_BYTES`]. Anything this replay cannot follow (not a
/// zip, an opcode candle does not know, a truncated entry) is left to
/// candle's reader, which reports it as an error.
pub(crate) fn check_expansion(path: &Path) -> Result<()> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(());
    };
    let Ok(mut archive) = zip::ZipArchive::new(BufReader::new(file)) else {
        return Ok(());
    };
    for index in 0..archive.len() {
        let Ok(entry) = archive.by_index(index) else {
            continue;
        };
        let Ok(name) = entry.name().map(|name| name.into_owned()) else {
            continue;
        };
        if !name.ends_with("data.pkl") {
            continue;
        }
        if let Some(copied) = replay(BufReader::new(entry)) {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "its pickle {name} makes a reader copy more than {copied} bytes (one object \
                     stored and fetched again and again): a malformed or hostile file, refused \
                     before it exhausts memory; convert the checkpoint to safetensors with \
                     PyTorch, or use the model's model.safetensors"
                ),
            });
        }
    }
    Ok(())
}

/// Replays the opcodes of one pickle; `Some(bytes)` (the bound passed) as
/// soon as the copies exceed [`MAX_COPIED_BYTES`], `None` at the end or
/// where candle's reader would stop with an error of its own.
fn replay(mut reader: impl BufRead) -> Option<u64> {
    let mut stack: Vec<Slot> = Vec::new();
    let mut memo: HashMap<u32, u64> = HashMap::new();
    let mut copied: u64 = 0;
    loop {
        let op = read_array::<1>(&mut reader)?[0];
        match op {
            // STOP
            b'.' => return None,
            // PROTO
            0x80 => {
                read_array::<1>(&mut reader)?;
            }
            // GLOBAL: module and class names, each to a newline.
            b'c' => {
                let mut names = Vec::new();
                for _ in 0..2 {
                    names.clear();
                    // Bounded so a missing newline cannot hold the whole
                    // entry: candle reads it anyway, into one string.
                    (&mut reader)
                        .take(1 << 20)
                        .read_until(b'\n', &mut names)
                        .ok()?;
                }
                stack.push(Slot::Object(OBJECT_BYTES * 2 + names.len() as u64));
            }
            // BININT1, BININT2, BININT, BINFLOAT
            b'K' => leaf(&mut stack, read_array::<1>(&mut reader)),
            b'M' => leaf(&mut stack, read_array::<2>(&mut reader)),
            b'J' => leaf(&mut stack, read_array::<4>(&mut reader)),
            b'G' => leaf(&mut stack, read_array::<8>(&mut reader)),
            // LONG1: a length byte, then that many bytes.
            0x8a => {
                let n = read_array::<1>(&mut reader)?[0];
                std::io::copy(&mut (&mut reader).take(u64::from(n)), &mut std::io::sink()).ok()?;
                stack.push(Slot::Object(OBJECT_BYTES));
            }
            // BINUNICODE: a u32 length, then that many bytes.
            b'X' => {
                let len = u64::from(u32::from_le_bytes(read_array::<4>(&mut reader)?));
                let read =
                    std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink()).ok()?;
                if read < len {
                    return None;
                }
                stack.push(Slot::Object(OBJECT_BYTES + len));
            }
            // NEWTRUE, NEWFALSE, NONE, EMPTY_DICT, DICT (read by candle as
            // EMPTY_DICT), EMPTY_TUPLE, EMPTY_LIST
            0x88 | 0x89 | b'N' | b'}' | b'd' | b')' | b']' => {
                stack.push(Slot::Object(OBJECT_BYTES))
            }
            // MARK
            b'(' => stack.push(Slot::Mark),
            // BINPERSID: the id becomes part of a new object.
            b'Q' => {
                let id = pop(&mut stack)?;
                stack.push(Slot::Object(OBJECT_BYTES + id));
            }
            // TUPLE: everything down to the mark.
            b't' => {
                let items = pop_to_mark(&mut stack)?;
                stack.push(Slot::Object(OBJECT_BYTES.saturating_add(items)));
            }
            // TUPLE1..3
            0x85..=0x87 => {
                let mut total = OBJECT_BYTES;
                for _ in 0..(op - 0x84) {
                    total = total.saturating_add(pop(&mut stack)?);
                }
                stack.push(Slot::Object(total));
            }
            // REDUCE, BUILD, NEWOBJ: two objects become one. (candle's
            // BUILD of two dicts appends one to the other: the same size.)
            b'R' | b'b' | 0x81 => {
                let total = pop(&mut stack)?.saturating_add(pop(&mut stack)?);
                stack.push(Slot::Object(total.saturating_add(OBJECT_BYTES)));
            }
            // APPEND: one object into the list below it.
            b'a' => {
                let value = pop(&mut stack)?;
                grow_top(&mut stack, value)?;
            }
            // SETITEM: a key and a value into the dict below them.
            b's' => {
                let value = pop(&mut stack)?.saturating_add(pop(&mut stack)?);
                grow_top(&mut stack, value)?;
            }
            // APPENDS, SETITEMS: everything down to the mark.
            b'e' | b'u' => {
                let items = pop_to_mark(&mut stack)?;
                grow_top(&mut stack, items)?;
            }
            // BINGET, LONG_BINGET: a copy of a memo entry.
            b'h' | b'j' => {
                let id = memo_id(&mut reader, op == b'j')?;
                let size = *memo.get(&id)?;
                copied = copied.saturating_add(size);
                stack.push(Slot::Object(size));
            }
            // BINPUT, LONG_BINPUT: a copy of the top into the memo.
            b'q' | b'r' => {
                let id = memo_id(&mut reader, op == b'r')?;
                let Slot::Object(size) = *stack.last()? else {
                    // candle stores a copy of the marker: no contents.
                    memo.insert(id, OBJECT_BYTES);
                    continue;
                };
                copied = copied.saturating_add(size);
                memo.insert(id, size);
            }
            // Any other opcode: candle's reader stops with an error.
            _ => return None,
        }
        if copied > MAX_COPIED_BYTES {
            return Some(MAX_COPIED_BYTES);
        }
    }
}

/// Pushes a plain value once its argument was read.
fn leaf<const N: usize>(stack: &mut Vec<Slot>, argument: Option<[u8; N]>) {
    if argument.is_some() {
        stack.push(Slot::Object(OBJECT_BYTES));
    }
}

fn read_array<const N: usize>(reader: &mut impl Read) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    reader.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

fn memo_id(reader: &mut impl Read, long: bool) -> Option<u32> {
    if long {
        Some(u32::from_le_bytes(read_array::<4>(reader)?))
    } else {
        Some(u32::from(read_array::<1>(reader)?[0]))
    }
}

/// The size of the popped object; `None` (candle fails too) on an empty
/// stack. A marker popped as an object counts as a small one.
fn pop(stack: &mut Vec<Slot>) -> Option<u64> {
    match stack.pop()? {
        Slot::Mark => Some(OBJECT_BYTES),
        Slot::Object(size) => Some(size),
    }
}

/// Pops everything above the last mark and the mark; the popped objects'
/// total size. `None` without a mark (candle fails too).
fn pop_to_mark(stack: &mut Vec<Slot>) -> Option<u64> {
    let mark = stack.iter().rposition(|slot| matches!(slot, Slot::Mark))?;
    let total = stack[mark + 1..]
        .iter()
        .fold(0u64, |total, slot| match slot {
            Slot::Object(size) => total.saturating_add(*size),
            Slot::Mark => total,
        });
    stack.truncate(mark);
    Some(total)
}

/// Adds `size` to the object on top (a list or dict being filled).
fn grow_top(stack: &mut [Slot], size: u64) -> Option<()> {
    match stack.last_mut()? {
        Slot::Object(top) => *top = top.saturating_add(size),
        Slot::Mark => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list fetched twice into a new list, stored, and again: the copies
    /// double every round, and the replay stops once they pass the bound.
    #[test]
    fn a_doubling_memo_is_refused() {
        let mut pickle = b"\x80\x02]q\x00".to_vec();
        for _ in 0..64 {
            pickle.extend_from_slice(b"](h\x00h\x00eq\x00");
        }
        pickle.push(b'.');
        assert_eq!(replay(&pickle[..]), Some(MAX_COPIED_BYTES));
    }

    /// A string of 1 MiB fetched 2,000 times: quadratic, refused.
    #[test]
    fn one_large_object_fetched_many_times_is_refused() {
        let mut pickle = b"\x80\x02X".to_vec();
        pickle.extend_from_slice(&(1u32 << 20).to_le_bytes());
        pickle.extend(std::iter::repeat_n(b'a', 1 << 20));
        pickle.extend_from_slice(b"q\x00](");
        for _ in 0..2000 {
            pickle.extend_from_slice(b"h\x00");
        }
        pickle.extend_from_slice(b"e.");
        assert_eq!(replay(&pickle[..]), Some(MAX_COPIED_BYTES));
        // A few hundred fetches of it stay under the bound.
        let few = pickle.len() - 2 - 2 * 1700;
        let mut pickle = pickle[..few].to_vec();
        pickle.extend_from_slice(b"e.");
        assert_eq!(replay(&pickle[..]), None);
    }

    /// What candle cannot read is left to candle: an unknown opcode, a
    /// truncated string, a fetch of nothing.
    #[test]
    fn what_candle_rejects_is_left_to_it() {
        for pickle in [
            &b"\x80\x02Z."[..],
            b"X\x10\x00\x00\x00abc",
            b"h\x07.",
            b"a.",
        ] {
            assert_eq!(replay(pickle), None);
        }
    }
}
