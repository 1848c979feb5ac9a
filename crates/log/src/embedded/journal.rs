//! The journal: where a write is durable before the B-tree has it.
//!
//! A redb commit copies every page it touches and syncs them: with one event
//! per publish it cost about 3.5 ms for a group of 64 appends here, so the
//! disk, not the log, limited a publisher. A journal record costs one
//! sequential write that returns once it is durable (a direct, synced write
//! where the system allows it, [`super::segment`]: 0.1–0.25 ms on the same
//! disk), so a write is made durable here and answered; the applier copies records into
//! redb behind it, many at a time, and recycles a segment once redb holds all
//! of it durably.
//!
//! `journal/` in the data directory holds segments, named by a rising index
//! (`00000000000000000007.journal`), and spare files (`*.spare`) that wait to
//! be written over: segments redb holds, or files of zeros prepared ahead.
//! Overwriting a file's existing blocks syncs without touching the file
//! system's own journal, since neither the size nor the block map changes: a
//! sync of a growing file commits ext4's journal as well (more writes, and a
//! wait behind whatever else that commit carries). So a journal that takes a
//! steady stream of records writes into full-size spares only: the applier
//! prepares one (zeros, written and synced a piece at a time, off the write
//! path) once the segment being written holds [`PREPARE_AFTER`] bytes and no
//! spare is left, and a segment that grows (a new store's first) gives way to
//! it at the next append. A store that takes little never pays for 16 MiB of
//! zeros. A segment is records back to back:
//!
//! ```text
//! [body length: u32][crc32 of body: u32][body]
//! body = [record number: u64]
//!        [threads: u32] ([id][record as JSON])*
//!        [runs: u32]    ([id][record as JSON])*
//!        [events: u32]  ([envelope as JSON])*
//!        [ids: u32]     ([run][event id][seq: u64])*
//!        [zeros, so that the whole record is a multiple of 512 bytes]
//! ```
//!
//! Strings and byte strings are `[length: u32][bytes]`; numbers are little
//! endian. Record numbers rise by one across segments and restarts, and redb
//! stores the number of the last record it applied. Reading back, a record
//! redb already has is skipped; one that is cut short or fails its checksum
//! ends the segment (a write a crash cut off, a spare's old contents or its
//! zeros, whose length reads as 0); a
//! record newer than redb's must be the next number, and a gap is corruption.
//! A recycled file's old records are all older than what redb has, so they
//! can never pass for new ones.
//!
//! Only what adds to the log is journaled (threads, runs, events, event ids):
//! a write that removes (retention, forgetting ids, deleting a thread) waits
//! for the applier to catch up and goes to redb directly, so nothing read
//! from the journal ever needs undoing.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentwire_protocol::{RunId, ThreadId};

use super::segment::{KEPT_BUFFER, RECORD_ALIGN, SegmentFile};
use crate::StoredEvent;
use crate::store::{Batch, RunRecord, StoreError, ThreadRecord};

/// A segment takes records until it holds this many bytes, then the next one
/// starts. Spares are this long: shorter files are not kept.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// A spare is prepared once the segment being written holds this much and
/// none is left: a store that writes this much in one segment is busy enough
/// to gain from never growing a file.
pub const PREPARE_AFTER: u64 = 1 << 20;
/// A spare is prepared this many bytes at a time, each piece synced before the
/// next, so that the appends' syncs never queue behind 16 MiB of zeros.
const PREPARE_PIECE: usize = 1 << 20;
/// Released segments kept to be written over; more are deleted. Enough for
/// what a busy store writes between two durable commits of redb, so the
/// segments in use are nearly always old files written over.
const SPARES: usize = 3;
const HEADER: usize = 8;

/// The journal of one data directory, open for appending.
pub struct Journal {
    dir: PathBuf,
    /// The segment being written, its index, and how many bytes it holds.
    file: SegmentFile,
    index: u64,
    len: u64,
    /// The segment was a full-size spare: appending to it never grows a file.
    overwrites: bool,
    /// Full segments redb may not hold yet: (index, number of their last record).
    full: VecDeque<(u64, u64)>,
    spares: Vec<PathBuf>,
    /// The number the next record gets.
    next_no: u64,
    /// Reused for every record, so an append allocates nothing once warm.
    buf: Vec<u8>,
}

/// Records read back at open, newer than what redb holds, in order.
pub type Replayed = Vec<(u64, Batch)>;

impl Journal {
    /// Opens the journal in `dir` (creating it), reads back the records newer
    /// than `applied` (the last record redb holds), and starts a new segment
    /// for what comes next. The segments read stay until
    /// [`Journal::release_through`] is told redb holds their records.
    pub fn open(dir: &Path, applied: u64) -> Result<(Self, Replayed), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, &e))?;
        let mut segments = Vec::new();
        let mut spares = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| fail("list", dir, &e))? {
            let path = entry.map_err(|e| fail("list", dir, &e))?.path();
            match path.extension().and_then(|x| x.to_str()) {
                Some("journal") => {
                    let index = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
                    let index = index.ok_or_else(|| corrupt(&path, "a segment name that is not a number"))?;
                    segments.push((index, path));
                }
                Some("spare") if is_full_size(&path) => spares.push(path),
                // A spare from before spares were full size, or one whose
                // preparation a crash cut short: never read, so never needed.
                Some("spare" | "filling") => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        segments.sort();
        let mut replayed = Vec::new();
        let mut last = applied;
        let mut full = VecDeque::new();
        for (index, path) in &segments {
            let bytes = std::fs::read(path).map_err(|e| fail("read", path, &e))?;
            for (no, body) in records(&bytes) {
                if no <= applied {
                    continue;
                }
                if no != last + 1 {
                    if no < last + 1 {
                        break; // an old record past this segment's end
                    }
                    return Err(corrupt(path, format!("record {no} follows record {last}: records are missing")));
                }
                let batch = decode(body).map_err(|e| corrupt(path, format!("record {no}: {e}")))?;
                replayed.push((no, batch));
                last = no;
            }
            full.push_back((*index, last));
        }
        let index = segments.last().map_or(1, |(i, _)| i + 1);
        let spare = spares.pop();
        let overwrites = spare.is_some();
        let mut journal = Self {
            dir: dir.to_owned(),
            file: open_segment(dir, index, spare)?,
            index,
            len: 0,
            overwrites,
            full,
            spares,
            next_no: last + 1,
            buf: Vec::new(),
        };
        journal.trim_spares();
        tracing::debug!(direct = journal.file.is_direct(), "journal open");
        Ok((journal, replayed))
    }

    /// Appends one record holding `batches` and syncs it: once this answers
    /// `Ok`, the record survives a crash. Answers the record's number. On an
    /// error the segment is cut back to where it was, so a later record never
    /// follows a torn one.
    pub fn append(&mut self, batches: &[&Batch]) -> Result<u64, StoreError> {
        if self.len >= SEGMENT_BYTES || (!self.overwrites && !self.spares.is_empty()) {
            self.rotate()?;
        }
        let no = self.next_no;
        encode(no, batches, &mut self.buf)?;
        if let Err(e) = self.file.write_durably(&self.buf, self.len) {
            // Best effort: the record was never answered, and the next open
            // ignores a torn tail anyway; cutting it makes room for the next one.
            let _ = self.file.cut(self.len);
            return Err(StoreError::Io(format!("cannot write the journal: {e}")));
        }
        self.len += self.buf.len() as u64;
        self.next_no += 1;
        // One large group must not keep its buffer for the life of the server.
        if self.buf.capacity() > KEPT_BUFFER {
            self.buf = Vec::new();
        }
        Ok(no)
    }

    /// The number of the last record appended (or read back).
    pub fn last_no(&self) -> u64 {
        self.next_no - 1
    }

    /// Where a spare should be prepared, if one should ([`PREPARE_AFTER`]):
    /// pass it to [`prepare`], without holding the journal, then to
    /// [`Journal::add_spare`].
    pub fn spare_wanted(&self) -> Option<PathBuf> {
        (self.spares.is_empty() && self.len >= PREPARE_AFTER)
            .then(|| self.dir.join(format!("{:020}-prepared.spare", self.index)))
    }

    /// Takes a spare [`prepare`] made, unless this journal has it already
    /// (it was opened again, by a recovery, after the spare was named).
    pub fn add_spare(&mut self, spare: PathBuf) {
        if !self.spares.contains(&spare) && spare.exists() {
            self.spares.push(spare);
            self.trim_spares();
        }
    }

    /// Redb holds every record up to `no` durably: full segments with nothing
    /// newer become spares. Answers those past [`SPARES`], for the caller to
    /// [`remove`] once it no longer holds the journal (removing a file of many
    /// megabytes takes milliseconds that no append should wait for).
    #[must_use]
    pub fn release_through(&mut self, no: u64) -> Vec<PathBuf> {
        let mut unwanted = Vec::new();
        while let Some(&(index, last)) = self.full.front() {
            if last > no {
                break;
            }
            self.full.pop_front();
            let path = segment_path(&self.dir, index);
            let spare = self.dir.join(format!("{index:020}.spare"));
            if self.spares.len() < SPARES && is_full_size(&path) && std::fs::rename(&path, &spare).is_ok() {
                self.spares.push(spare);
            } else {
                unwanted.push(path);
            }
        }
        unwanted
    }

    /// Closes the segment being written and starts the next one (also after
    /// a failed write, so what follows goes to a file with nothing uncertain in it).
    pub fn rotate(&mut self) -> Result<(), StoreError> {
        let next = self.index + 1;
        let spare = self.spares.pop();
        self.overwrites = spare.is_some();
        self.file = open_segment(&self.dir, next, spare)?;
        self.full.push_back((self.index, self.last_no()));
        self.index = next;
        self.len = 0;
        Ok(())
    }

    fn trim_spares(&mut self) {
        while self.spares.len() > SPARES {
            if let Some(path) = self.spares.pop() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Removes segments [`Journal::release_through`] let go.
pub fn remove(unwanted: Vec<PathBuf>) {
    for path in unwanted {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a journal segment redb holds");
        }
    }
}

/// Writes `spare`, a file of [`SEGMENT_BYTES`] zeros, for [`Journal::add_spare`]:
/// under another name until it is whole and synced, so a crash never leaves a
/// short spare (a `*.filling` file is removed at open).
pub fn prepare(spare: &Path) -> Result<(), StoreError> {
    let filling = spare.with_extension("filling");
    let file = OpenOptions::new().create(true).write(true).truncate(true).open(&filling);
    let file = file.map_err(|e| fail("create", &filling, &e))?;
    let zeros = vec![0; PREPARE_PIECE];
    let mut at = 0;
    while at < SEGMENT_BYTES {
        file.write_all_at(&zeros, at).and_then(|()| file.sync_data()).map_err(|e| fail("prepare", &filling, &e))?;
        at += PREPARE_PIECE as u64;
    }
    std::fs::rename(&filling, spare).map_err(|e| fail("name", spare, &e))?;
    let dir = spare.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("sync", dir, &e))
}

/// Whether the file at `path` is as long as a segment may grow before the next starts.
fn is_full_size(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() >= SEGMENT_BYTES)
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.journal"))
}

/// Opens segment `index` for writing from its start: a spare renamed (its
/// blocks are written over) or a new file. The directory is synced, so the
/// segment's name survives a crash along with what is written to it.
fn open_segment(dir: &Path, index: u64, spare: Option<PathBuf>) -> Result<SegmentFile, StoreError> {
    let path = segment_path(dir, index);
    if let Some(spare) = spare {
        std::fs::rename(&spare, &path).map_err(|e| fail("reuse", &spare, &e))?;
    }
    let file = SegmentFile::open(&path).map_err(|e| fail("open", &path, &e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("sync", dir, &e))?;
    Ok(file)
}

fn fail(what: &str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io(format!("cannot {what} the journal at {}: {e}", path.display()))
}

fn corrupt(path: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { path: path.display().to_string(), detail: format!("journal: {detail}") }
}

/// The records of a segment, in order, as (number, body), up to the first
/// one that is cut short or fails its checksum.
fn records(mut bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    std::iter::from_fn(move || {
        let header = bytes.get(..HEADER)?;
        let len = usize::try_from(u32::from_le_bytes(header[..4].try_into().ok()?)).ok()?;
        let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
        let body = bytes.get(HEADER..HEADER.checked_add(len)?)?;
        if len < 8 || crc32fast::hash(body) != crc {
            return None;
        }
        bytes = &bytes[HEADER + len..];
        Some((u64::from_le_bytes(body[..8].try_into().ok()?), &body[8..]))
    })
}

/// Writes record `no` of `batches` into `buf` (cleared first), header included.
fn encode(no: u64, batches: &[&Batch], buf: &mut Vec<u8>) -> Result<(), StoreError> {
    buf.clear();
    buf.extend_from_slice(&[0; HEADER]);
    buf.extend_from_slice(&no.to_le_bytes());
    let threads = batches.iter().flat_map(|b| &b.threads);
    put_count(buf, threads.clone().count())?;
    for (id, record) in threads {
        put_bytes(buf, id.as_str().as_bytes())?;
        put_json(buf, record)?;
    }
    let runs = batches.iter().flat_map(|b| &b.runs);
    put_count(buf, runs.clone().count())?;
    for (id, record) in runs {
        put_bytes(buf, id.as_str().as_bytes())?;
        put_json(buf, record)?;
    }
    let events = batches.iter().flat_map(|b| &b.events);
    put_count(buf, events.clone().count())?;
    for event in events {
        put_bytes(buf, event.json.as_bytes())?;
    }
    let ids = batches.iter().flat_map(|b| &b.event_ids);
    put_count(buf, ids.clone().count())?;
    for (run, event_id, seq) in ids {
        put_bytes(buf, run.as_str().as_bytes())?;
        put_bytes(buf, event_id.as_bytes())?;
        buf.extend_from_slice(&seq.to_le_bytes());
    }
    seal(buf, RECORD_ALIGN)
}

/// Pads the record in `buf` with zeros to a multiple of `align` bytes, inside
/// its body (records stay back to back, and a direct write takes each whole),
/// and writes its header.
fn seal(buf: &mut Vec<u8>, align: usize) -> Result<(), StoreError> {
    buf.resize(buf.len().next_multiple_of(align), 0);
    let body = &buf[HEADER..];
    let len = u32::try_from(body.len()).map_err(|_| StoreError::Io("a journal record over 4 GiB".into()))?;
    let crc = crc32fast::hash(body);
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn put_count(buf: &mut Vec<u8>, n: usize) -> Result<(), StoreError> {
    let n = u32::try_from(n).map_err(|_| StoreError::Io("too many items for one journal record".into()))?;
    buf.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StoreError> {
    put_count(buf, bytes.len())?;
    buf.extend_from_slice(bytes);
    Ok(())
}

/// A record as JSON, written in place behind its length.
fn put_json(buf: &mut Vec<u8>, value: &impl serde::Serialize) -> Result<(), StoreError> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *buf, value).map_err(|e| StoreError::Io(format!("cannot encode a record: {e}")))?;
    let len = u32::try_from(buf.len() - at - 4).map_err(|_| StoreError::Io("a record over 4 GiB".into()))?;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// A record's body (after its number) as one batch.
fn decode(body: &[u8]) -> Result<Batch, String> {
    let mut r = Reader(body);
    let mut batch = Batch::default();
    for _ in 0..r.u32()? {
        let id = ThreadId::parse(r.str()?).map_err(|e| e.to_string())?;
        let record: ThreadRecord = serde_json::from_slice(r.bytes()?).map_err(|e| e.to_string())?;
        batch.threads.push((id, record));
    }
    for _ in 0..r.u32()? {
        let id = RunId::parse(r.str()?).map_err(|e| e.to_string())?;
        let record: RunRecord = serde_json::from_slice(r.bytes()?).map_err(|e| e.to_string())?;
        batch.runs.push((id, record));
    }
    for _ in 0..r.u32()? {
        let event = StoredEvent::from_json(r.str()?).map_err(|e| e.to_string())?;
        batch.events.push(Arc::new(event));
    }
    for _ in 0..r.u32()? {
        let run = RunId::parse(r.str()?).map_err(|e| e.to_string())?;
        let event_id = r.str()?.to_owned();
        batch.event_ids.push((run, event_id, r.u64()?));
    }
    if r.0.len() >= RECORD_ALIGN || r.0.iter().any(|&b| b != 0) {
        return Err(format!("{} bytes after the record that are not its padding", r.0.len()));
    }
    Ok(batch)
}

/// Reads a record body front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the record ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut n = [0; 8];
        n.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(n))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.u32()?).map_err(|e| e.to_string())?;
        self.take(len)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::{EventKind, NewEvent, UserId};

    fn batch(thread: &str, run: &str, seqs: std::ops::RangeInclusive<u64>) -> Batch {
        let thread = ThreadId::parse(thread).unwrap();
        let run = RunId::parse(run).unwrap();
        let owner = UserId::parse("u").unwrap();
        let mut b = Batch::default();
        b.threads.push((thread.clone(), ThreadRecord { owner, oldest_seq: 1, by_publisher: false }));
        for seq in seqs {
            let data = serde_json::json!({"thought": format!("t{seq}")}).as_object().cloned().unwrap();
            let mut event = NewEvent::new(EventKind::AgentThinking, data);
            event.event_id = Some(format!("e{seq}"));
            b.event_ids.push((run.clone(), format!("e{seq}"), seq));
            b.events.extend(crate::numbered(&thread, &run, seq - 1, agentwire_protocol::Timestamp::now(), vec![event]));
        }
        b
    }

    fn seqs(replayed: &Replayed) -> Vec<(u64, Vec<u64>)> {
        replayed.iter().map(|(no, b)| (*no, b.events.iter().map(|e| e.seq()).collect())).collect()
    }

    #[test]
    fn records_read_back_after_what_redb_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, replayed) = Journal::open(dir.path(), 0).unwrap();
        assert!(replayed.is_empty());
        let (a, b) = (batch("thread_a", "run_a", 1..=2), batch("thread_a", "run_a", 3..=3));
        assert_eq!(j.append(&[&a]).unwrap(), 1);
        assert_eq!(j.append(&[&b, &b]).unwrap(), 2);
        drop(j);
        let (j, replayed) = Journal::open(dir.path(), 1).unwrap();
        assert_eq!(seqs(&replayed), vec![(2, vec![3, 3])]);
        assert_eq!(replayed[0].1.event_ids.len(), 2);
        assert_eq!(replayed[0].1.threads.len(), 2);
        assert_eq!(j.last_no(), 2);
    }

    #[test]
    fn records_are_padded_to_the_alignment_and_the_padding_must_be_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        j.append(&[&batch("thread_a", "run_a", 1..=1)]).unwrap();
        j.append(&[&batch("thread_a", "run_a", 2..=4)]).unwrap();
        assert!(j.len.is_multiple_of(RECORD_ALIGN as u64));
        let path = segment_path(dir.path(), j.index);
        drop(j);
        let bytes = std::fs::read(&path).unwrap();
        let bodies: Vec<&[u8]> = records(&bytes).map(|(_, body)| body).collect();
        assert_eq!(bodies.len(), 2);
        assert!(bodies.iter().all(|b| (HEADER + 8 + b.len()).is_multiple_of(RECORD_ALIGN)));
        assert_eq!(decode(bodies[1]).unwrap().events.len(), 3);
        let mut dirty = bodies[1].to_vec();
        *dirty.last_mut().unwrap() = 1;
        assert!(decode(&dirty).unwrap_err().contains("not its padding"));
    }

    #[test]
    fn records_written_before_padding_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for (no, seqs) in [(1, 1..=1), (2, 2..=3)] {
            let mut record = Vec::new();
            encode(no, &[&batch("thread_a", "run_a", seqs)], &mut record).unwrap();
            // The layout before padding: the same record, back to back.
            let body_end = HEADER + 8 + decode_len(&record[HEADER + 8..]);
            record.truncate(body_end);
            seal(&mut record, 1).unwrap();
            bytes.extend_from_slice(&record);
        }
        std::fs::write(segment_path(dir.path(), 1), bytes).unwrap();
        let (_, replayed) = Journal::open(dir.path(), 0).unwrap();
        assert_eq!(seqs(&replayed), vec![(1, vec![1]), (2, vec![2, 3])]);
    }

    /// How many bytes of `body` its sections take (what follows is padding).
    fn decode_len(body: &[u8]) -> usize {
        let mut r = Reader(body);
        for _ in 0..2 {
            for _ in 0..r.u32().unwrap() {
                r.bytes().unwrap();
                r.bytes().unwrap();
            }
        }
        for _ in 0..r.u32().unwrap() {
            r.bytes().unwrap();
        }
        for _ in 0..r.u32().unwrap() {
            r.bytes().unwrap();
            r.bytes().unwrap();
            r.u64().unwrap();
        }
        body.len() - r.0.len()
    }

    #[test]
    fn a_torn_tail_ends_the_journal_and_the_next_record_follows_the_last_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        j.append(&[&batch("thread_a", "run_a", 1..=1)]).unwrap();
        j.append(&[&batch("thread_a", "run_a", 2..=2)]).unwrap();
        let path = segment_path(dir.path(), j.index);
        drop(j);
        let len = std::fs::metadata(&path).unwrap().len();
        // A crash cut the second record short.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        let (mut j, replayed) = Journal::open(dir.path(), 0).unwrap();
        assert_eq!(seqs(&replayed), vec![(1, vec![1])]);
        assert_eq!(j.append(&[&batch("thread_a", "run_a", 2..=2)]).unwrap(), 2);
        drop(j);
        let (_, replayed) = Journal::open(dir.path(), 0).unwrap();
        assert_eq!(seqs(&replayed), vec![(1, vec![1]), (2, vec![2])]);
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        j.append(&[&batch("thread_a", "run_a", 1..=1)]).unwrap();
        let path = segment_path(dir.path(), j.index);
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        assert!(Journal::open(dir.path(), 0).unwrap().1.is_empty());
    }

    #[test]
    fn released_segments_are_written_over_and_their_old_records_never_read_as_new() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        let big = batch("thread_a", "run_a", 1..=400);
        let mut no = 0;
        // Fill several segments, releasing as redb would.
        while j.index < 6 {
            no = j.append(&[&big]).unwrap();
            remove(j.release_through(no - 1));
        }
        assert!(j.spares.len() <= SPARES);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 2 + SPARES, "{files} files: released segments are recycled or removed");
        drop(j);
        // redb holds everything but the last record: only that one comes back.
        let (j, replayed) = Journal::open(dir.path(), no - 1).unwrap();
        assert_eq!(replayed.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![no]);
        assert_eq!(j.last_no(), no);
    }

    #[test]
    fn a_busy_journal_moves_onto_a_prepared_spare_and_reads_back_across_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        assert!(!j.overwrites, "a new store's first segment grows");
        let big = batch("thread_a", "run_a", 1..=400);
        let mut appended = Vec::new();
        while j.spare_wanted().is_none() {
            appended.push(j.append(&[&big]).unwrap());
        }
        assert!(j.len >= PREPARE_AFTER);
        let spare = j.spare_wanted().unwrap();
        prepare(&spare).unwrap();
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), SEGMENT_BYTES);
        j.add_spare(spare.clone());
        j.add_spare(spare);
        assert_eq!(j.spares.len(), 1, "a spare is taken once");
        assert!(j.spare_wanted().is_none(), "one spare at a time");
        let first = j.index;
        appended.push(j.append(&[&big]).unwrap());
        assert_eq!(j.index, first + 1, "the growing segment gave way at once");
        assert!(j.overwrites);
        let path = segment_path(dir.path(), j.index);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SEGMENT_BYTES, "written over, not grown");
        drop(j);
        let (_, replayed) = Journal::open(dir.path(), 0).unwrap();
        assert_eq!(
            replayed.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            appended,
            "the zeros after the last record read as the end"
        );
    }

    #[test]
    fn short_spares_and_unfinished_preparations_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000001.spare"), [0; 64]).unwrap();
        std::fs::write(dir.path().join("00000000000000000002-prepared.filling"), [0; 64]).unwrap();
        let (j, _) = Journal::open(dir.path(), 0).unwrap();
        assert!(j.spares.is_empty() && !j.overwrites);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "only the new segment is left: {names:?}");
    }

    #[test]
    fn a_gap_in_the_records_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        j.append(&[&batch("thread_a", "run_a", 1..=1)]).unwrap();
        j.next_no = 5;
        j.append(&[&batch("thread_a", "run_a", 2..=2)]).unwrap();
        drop(j);
        assert!(matches!(Journal::open(dir.path(), 0), Err(StoreError::Corrupt { .. })));
    }
}
