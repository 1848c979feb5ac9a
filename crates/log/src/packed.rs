//! How the embedded store packs events for the disk.
//!
//! An envelope is mostly boilerplate: the same keys, event names, id prefixes
//! and time layout in every event. Stored one per value as sent, a 240-byte
//! event cost about 700 bytes of disk: each value carries its own key and
//! B-tree slot, and pages are half empty after splits. So a value holds a
//! chunk of a thread's consecutive events, as frames: each frame is the events
//! one commit added, their JSON one per line, compressed with LZ4 against a
//! built-in dictionary of that boilerplate (so later events of a frame also
//! borrow from the earlier ones). A commit that adds to a thread whose last
//! chunk is still small appends a frame to it, copying the bytes without
//! compressing anything again, so a publisher sending one event at a time also
//! fills chunks. Decompressing costs far less than the JSON parse a read does
//! anyway.
//!
//! Frames start with a tag byte that JSON never starts with, so values written
//! before packing (one event as plain JSON, starting with `{`) read as a chunk
//! of one. The dictionary belongs to its tag: changing it means a new tag,
//! never an edit. (Compact JSON has no raw line breaks: they are escaped inside
//! strings, so a line is an event.)

use std::borrow::Cow;

/// A frame: `[count: u32][length: u32][packed length: u32]` (little endian),
/// then `packed length` bytes of an LZ4 block against [`DICTIONARY_1`] that
/// unpacks to `length` bytes of JSON lines.
const FRAME_1: u8 = 0x02;
const FRAME_HEADER: usize = 1 + 4 + 4 + 4;
/// The first packed layout, for a few hours on the way to frames: one block
/// running to the end of the value, without its packed length.
const SINGLE_1: u8 = 0x01;
const SINGLE_HEADER: usize = 1 + 4 + 4;

/// A chunk takes more frames while it holds fewer events and bytes than
/// these: small enough that rewriting it is about as cheap as writing the page
/// it sits in, large enough that keys and slots are a small share.
pub const CHUNK_EVENTS: u64 = 64;
pub const CHUNK_BYTES: usize = 2048;

/// What envelopes repeat. Later bytes are cheaper to refer to, so the most
/// common pieces come last.
const DICTIONARY_1: &[u8] = concat!(
    r#""tool_call_id":"call_","tool_name":"","args":{},"result":"","error":"","duration_ms":"#,
    r#""message_id":"msg_","delta":"","code":"failed","cancelled","timeout","worker_lost","message":""#,
    r#""input":"","text":"","user_message","agent_message","agent_error","agent_completed","#,
    r#""tool_completed","tool_executing","agent_thinking","data":{"thought":"","step":1},"#,
    r#"{"type":"event","thread_id":"thread_","run_id":"run_thread_","seq":1,"#,
    r#""event":"agent_started","event_id":"","ts":"2026-01-01T00:00:00.000Z","data":{"agent_name":""#,
)
.as_bytes();

/// Events of one thread with consecutive seqs, as their JSON, packed as one frame
/// (a value on its own, or appended to a chunk that ends just before them).
pub fn pack<'a>(jsons: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut lines = String::new();
    let mut count: u32 = 0;
    for json in jsons {
        if count > 0 {
            lines.push('\n');
        }
        lines.push_str(json);
        count += 1;
    }
    let input = lines.as_bytes();
    let mut out = vec![0; FRAME_HEADER + lz4_flex::block::get_maximum_output_size(input.len())];
    // The buffer is sized for the worst case, so this cannot fail.
    let written = lz4_flex::block::compress_into_with_dict(input, &mut out[FRAME_HEADER..], DICTIONARY_1)
        .unwrap_or_else(|e| panic!("LZ4 refused a buffer of its own worst-case size: {e}"));
    out.truncate(FRAME_HEADER + written);
    out[0] = FRAME_1;
    out[1..5].copy_from_slice(&count.to_le_bytes());
    out[5..9].copy_from_slice(&(input.len() as u32).to_le_bytes());
    out[9..13].copy_from_slice(&(written as u32).to_le_bytes());
    out
}

/// Whether a chunk stored as `stored` may take another frame.
pub fn has_room(stored: &[u8]) -> bool {
    stored.first() == Some(&FRAME_1) && stored.len() < CHUNK_BYTES && count(stored) < CHUNK_EVENTS
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// One frame of a stored value: (events, unpacked length, its block), and what follows it.
type Frame<'a> = ((u64, usize, &'a [u8]), &'a [u8]);

fn frame(stored: &[u8]) -> Result<Option<Frame<'_>>, String> {
    let cut = |header: usize, packed: usize| {
        let block = stored.get(header..header + packed).ok_or("a frame runs past its value")?;
        Ok::<_, String>((block, &stored[header + packed..]))
    };
    let field = |at| u32_at(stored, at).ok_or_else(|| "a frame header is cut short".to_owned());
    match stored.first() {
        None => Ok(None),
        Some(&FRAME_1) => {
            let (count, len, packed) = (field(1)?, field(5)?, field(9)?);
            let (block, rest) = cut(FRAME_HEADER, packed as usize)?;
            Ok(Some(((u64::from(count), len as usize, block), rest)))
        }
        Some(&SINGLE_1) => {
            let (count, len) = (field(1)?, field(5)?);
            let (block, rest) = cut(SINGLE_HEADER, stored.len().saturating_sub(SINGLE_HEADER))?;
            Ok(Some(((u64::from(count), len as usize, block), rest)))
        }
        Some(b'{') => Ok(None),
        Some(tag) => Err(format!("unknown value tag {tag:#04x}")),
    }
}

/// How many events a stored value holds, without unpacking it (a damaged value
/// counts what can be read of it).
pub fn count(stored: &[u8]) -> u64 {
    if stored.first() == Some(&b'{') {
        return 1;
    }
    let (mut total, mut rest) = (0, stored);
    while let Ok(Some(((events, _, _), next))) = frame(rest) {
        total += events;
        rest = next;
    }
    total
}

/// The JSON of a stored value's events, one per line.
pub fn unpack(stored: &[u8]) -> Result<Cow<'_, str>, String> {
    match stored.first() {
        Some(b'{') => return std::str::from_utf8(stored).map(Cow::Borrowed).map_err(|e| e.to_string()),
        None => return Err("an empty value".into()),
        Some(_) => {}
    }
    let mut out = Vec::new();
    let mut rest = stored;
    while let Some(((_, len, block), next)) = frame(rest)? {
        // LZ4 grows data at most about 255-fold: a larger claim is damage, and
        // must not become a huge allocation.
        if len > block.len().saturating_mul(255) + 64 {
            return Err(format!("a frame of {} bytes cannot hold {len}", block.len()));
        }
        if !out.is_empty() {
            out.push(b'\n');
        }
        let start = out.len();
        out.resize(start + len, 0);
        let written = lz4_flex::block::decompress_into_with_dict(block, &mut out[start..], DICTIONARY_1)
            .map_err(|e| e.to_string())?;
        if written != len {
            return Err(format!("unpacked {written} bytes of {len}"));
        }
        rest = next;
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: &str = r#"{"type":"event","thread_id":"thread_abc","run_id":"run_thread_abc_1f2e3d4c","seq":42,"event":"tool_executing","event_id":"e7","ts":"2026-11-30T18:44:01.509Z","data":{"tool_call_id":"call_1","tool_name":"search","args":{"q":"rust"}}}"#;
    const DONE: &str = r#"{"type":"event","thread_id":"thread_abc","run_id":"run_thread_abc_1f2e3d4c","seq":43,"event":"tool_completed","event_id":"e8","ts":"2026-11-30T18:44:01.611Z","data":{"tool_call_id":"call_1","result":"found"}}"#;

    #[test]
    fn a_chunk_unpacks_to_the_same_lines_and_is_smaller() {
        let one = pack([TOOL]);
        assert!(one.len() * 10 < TOOL.len() * 6, "{} bytes packed from {}", one.len(), TOOL.len());
        assert_eq!((count(&one), unpack(&one).unwrap()), (1, TOOL.into()));
        let two = pack([TOOL, DONE]);
        assert_eq!(count(&two), 2);
        assert_eq!(unpack(&two).unwrap().lines().collect::<Vec<_>>(), vec![TOOL, DONE]);
        assert!(two.len() < one.len() + DONE.len() / 3, "the second event borrows from the first");
        // A chunk that takes a second frame reads as both frames' events, in order.
        let chunk = [one.as_slice(), pack([DONE]).as_slice()].concat();
        assert!(has_room(&one) && has_room(&chunk));
        assert_eq!((count(&chunk), unpack(&chunk).unwrap().lines().collect::<Vec<_>>()), (2, vec![TOOL, DONE]));
    }

    #[test]
    fn plain_json_written_before_packing_reads_as_a_chunk_of_one() {
        let json = br#"{"type":"event"}"#;
        assert_eq!(unpack(json).unwrap(), r#"{"type":"event"}"#);
        assert_eq!(count(json), 1);
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let mut packed = pack([r#"{"type":"event","data":{"thought":"x"}}"#]);
        packed.truncate(packed.len() - 3);
        assert!(unpack(&packed).is_err());
        let huge = [FRAME_1, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0, 0];
        assert!(unpack(&huge).is_err(), "a huge claimed length");
        assert!(unpack(&[FRAME_1, 1, 0, 0, 0, 9, 0, 0, 0, 0xff, 0, 0, 0, 1]).is_err(), "a frame past its value");
        assert!(unpack(&[FRAME_1, 1, 2]).is_err());
        assert!(unpack(&[0x03, 1, 2]).is_err());
        assert!(unpack(&[]).is_err());
        assert_eq!(count(&[FRAME_1, 1, 2]), 0, "a damaged value counts what can be read");
    }

    #[test]
    fn a_chunk_is_full_past_its_events_or_bytes_and_legacy_values_take_no_frames() {
        let mut chunk = Vec::new();
        while has_room(&chunk) || chunk.is_empty() {
            chunk.extend(pack([TOOL]));
        }
        assert!(count(&chunk) < CHUNK_EVENTS && chunk.len() >= CHUNK_BYTES);
        assert!(!has_room(TOOL.as_bytes()), "plain JSON stays a chunk of one");
    }
}
