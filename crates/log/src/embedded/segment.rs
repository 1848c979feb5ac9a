//! How a journal record reaches the disk: one write that returns once the
//! record is durable.
//!
//! On Linux a segment is opened with `O_DIRECT | O_DSYNC`: the record goes
//! from the buffer to the device and the device's cache is flushed, in one
//! system call, without passing through the page cache (a segment is never
//! read back but at open, so caching it only crowds out redb's pages). Over a
//! prepared spare (blocks that exist and are written) that took 0.10–0.14 ms
//! per 2 KiB record at p50 on this project's disk, 0.73–1.03× a buffered
//! write and an `fdatasync` alternated with it (`bench/src/bin/journal_sync.rs`,
//! `BENCHMARKS.md`). Direct I/O wants the buffer, the offset and
//! the length aligned to the device's logical block: records are padded to
//! [`RECORD_ALIGN`] bytes by the journal, and the bytes are copied into a
//! buffer of this module that starts at a page boundary (4 KiB).
//!
//! Where the file system refuses direct I/O (it answers `EINVAL`: some
//! file systems, or a device whose logical block is larger than
//! [`RECORD_ALIGN`]), the segment is opened again without it and every
//! record is written and then synced with `fdatasync`, as on other systems.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Records start and end at multiples of this: the logical block of nearly
/// every disk (4 KiB-sector disks refuse it, and get the buffered path).
pub const RECORD_ALIGN: usize = 512;
/// Where in memory a direct write's bytes start: a page, enough for any device.
const MEMORY_ALIGN: usize = 4096;
/// The largest record buffer kept between writes: the journal's and the
/// aligned copy here hold the same record, so one bound serves both.
pub(super) const KEPT_BUFFER: usize = 1 << 20;

/// A journal segment open for durable writes.
pub struct SegmentFile {
    file: File,
    path: PathBuf,
    /// Written with `O_DIRECT | O_DSYNC`; otherwise buffered and synced.
    direct: bool,
    /// Holds a record's bytes at an aligned address for a direct write.
    aligned: Vec<u8>,
}

impl SegmentFile {
    /// Opens `path` for writing (creating it), directly where the system
    /// allows it.
    pub fn open(path: &Path) -> io::Result<Self> {
        let (file, direct) = match open_direct(path) {
            Ok(file) => (file, true),
            Err(e) if e.raw_os_error() == Some(EINVAL) => (open_buffered(path)?, false),
            Err(e) => return Err(e),
        };
        Ok(Self { file, path: path.to_owned(), direct, aligned: Vec::new() })
    }

    /// Opens `path` the way other systems get: buffered writes, each synced
    /// with `fdatasync`. For comparing the two (`bench/src/bin/journal_sync.rs`).
    pub fn open_buffered(path: &Path) -> io::Result<Self> {
        Ok(Self { file: open_buffered(path)?, path: path.to_owned(), direct: false, aligned: Vec::new() })
    }

    /// Whether records go to the disk directly (the fast path).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes `bytes` at `at` and answers once they are durable. `bytes` and
    /// `at` should be multiples of [`RECORD_ALIGN`]; if they are not, or the
    /// system refuses the direct write, the segment goes buffered from here.
    pub fn write_durably(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        if self.direct {
            match self.write_direct(bytes, at) {
                Err(e) if e.raw_os_error() == Some(EINVAL) => {
                    tracing::warn!(path = %self.path.display(), "direct writes refused; the journal writes through the page cache");
                    self.file = open_buffered(&self.path)?;
                    self.direct = false;
                    self.aligned = Vec::new();
                }
                written => return written,
            }
        }
        self.file.write_all_at(bytes, at)?;
        self.file.sync_data()
    }

    /// Cuts the segment at `len` and syncs it (after a failed write).
    pub fn cut(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_data()
    }

    fn write_direct(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        let need = bytes.len() + MEMORY_ALIGN;
        if self.aligned.len() < need {
            self.aligned = vec![0; need.next_power_of_two()];
        }
        // `align_offset` may answer usize::MAX (it cannot align): then the
        // write goes buffered, as any refused direct write does.
        let start = self.aligned.as_ptr().align_offset(MEMORY_ALIGN);
        let window = start
            .checked_add(bytes.len())
            .and_then(|end| self.aligned.get_mut(start..end))
            .ok_or_else(|| io::Error::from_raw_os_error(EINVAL))?;
        window.copy_from_slice(bytes);
        let written = self.file.write_all_at(window, at);
        // One large record must not keep its buffer for the life of the server.
        if self.aligned.len() > KEPT_BUFFER {
            self.aligned = Vec::new();
        }
        written
    }
}

fn open_buffered(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).write(true).truncate(false).open(path)
}

#[cfg(target_os = "linux")]
const EINVAL: i32 = libc::EINVAL;
#[cfg(not(target_os = "linux"))]
const EINVAL: i32 = 22;

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).write(true).truncate(false).custom_flags(libc::O_DIRECT | libc::O_DSYNC).open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> io::Result<File> {
    Err(io::Error::from_raw_os_error(EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_records_are_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut file = SegmentFile::open(&path).unwrap();
        let first = vec![7u8; RECORD_ALIGN * 3];
        let second = vec![9u8; RECORD_ALIGN];
        file.write_durably(&first, 0).unwrap();
        file.write_durably(&second, first.len() as u64).unwrap();
        let read = std::fs::read(&path).unwrap();
        assert_eq!(read.len(), first.len() + second.len());
        assert_eq!(&read[..first.len()], &first[..]);
        assert_eq!(&read[first.len()..], &second[..]);
    }

    #[test]
    fn a_write_direct_io_refuses_goes_buffered_and_lands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut file = SegmentFile::open(&path).unwrap();
        // At an offset no device's block divides: where the segment is
        // direct (ext4, xfs), the write is refused and goes buffered.
        file.write_durably(b"abc", 1).unwrap();
        file.write_durably(b"de", 4).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0abcde");
    }
}
