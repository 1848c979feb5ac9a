//! How the embedded store packs events for the disk.
//!
//! An envelope is mostly boilerplate: the same keys, event names, id prefixes
//! and time layout in every event. Stored one per value as sent, a 240-byte
//! event cost about 700 bytes of disk: each value carries its own key and
//! B-tree slot, and pages are half empty after splits. Packed, the events one
//! decision appends to a thread (consecutive seqs) are one value: their JSON,
//! one per line, compressed with LZ4 against a built-in dictionary of that
//! boilerplate, so later events of the chunk also borrow from the earlier
//! ones. Decompressing costs far less than the JSON parse a read does anyway.
//!
//! A packed value starts with a tag byte that JSON never starts with, so values
//! written before packing (one event as plain JSON, starting with `{`) read as
//! a chunk of one. The dictionary belongs to its tag: changing it means a new
//! tag, never an edit. (Compact JSON has no raw line breaks: they are escaped
//! inside strings, so a line is an event.)

use std::borrow::Cow;

/// `[count: u32][length: u32]` (little endian), then an LZ4 block against
/// [`DICTIONARY_1`] of `length` bytes of JSON lines once unpacked.
const LZ4_CHUNK_1: u8 = 0x01;
const HEADER: usize = 1 + 4 + 4;

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

/// Events of one thread with consecutive seqs, as their JSON, packed as one value.
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
    let mut out = vec![0; HEADER + lz4_flex::block::get_maximum_output_size(input.len())];
    out[0] = LZ4_CHUNK_1;
    out[1..5].copy_from_slice(&count.to_le_bytes());
    out[5..9].copy_from_slice(&(input.len() as u32).to_le_bytes());
    // The buffer is sized for the worst case, so this cannot fail; if it ever
    // did, one event as plain JSON is a valid value too.
    match lz4_flex::block::compress_into_with_dict(input, &mut out[HEADER..], DICTIONARY_1) {
        Ok(written) => {
            out.truncate(HEADER + written);
            out
        }
        Err(_) if count == 1 => input.to_vec(),
        Err(e) => panic!("LZ4 refused a buffer of its own worst-case size: {e}"),
    }
}

fn header(stored: &[u8]) -> Option<(u64, usize)> {
    match stored {
        [LZ4_CHUNK_1, c0, c1, c2, c3, l0, l1, l2, l3, ..] => Some((
            u64::from(u32::from_le_bytes([*c0, *c1, *c2, *c3])),
            u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize,
        )),
        _ => None,
    }
}

/// How many events a stored value holds, without unpacking it.
pub fn count(stored: &[u8]) -> u64 {
    header(stored).map_or(1, |(count, _)| count)
}

/// The JSON of a stored value's events, one per line.
pub fn unpack(stored: &[u8]) -> Result<Cow<'_, str>, String> {
    if let Some((_, len)) = header(stored) {
        let block = &stored[HEADER..];
        // LZ4 grows data at most about 255-fold: a larger claim is damage, and
        // must not become a huge allocation.
        if len > block.len().saturating_mul(255) + 64 {
            return Err(format!("a value of {} bytes cannot hold {len}", block.len()));
        }
        let mut out = vec![0; len];
        let written =
            lz4_flex::block::decompress_into_with_dict(block, &mut out, DICTIONARY_1).map_err(|e| e.to_string())?;
        if written != len {
            return Err(format!("unpacked {written} bytes of {len}"));
        }
        return String::from_utf8(out).map(Cow::Owned).map_err(|e| e.to_string());
    }
    match stored {
        [b'{', ..] => std::str::from_utf8(stored).map(Cow::Borrowed).map_err(|e| e.to_string()),
        [tag, ..] => Err(format!("unknown value tag {tag:#04x}")),
        [] => Err("an empty value".into()),
    }
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
        assert!(unpack(&[LZ4_CHUNK_1, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0]).is_err(), "a huge claimed length");
        assert!(unpack(&[0x02, 1, 2]).is_err());
        assert!(unpack(&[]).is_err());
    }
}
