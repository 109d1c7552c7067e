//! The end log: what lets the SQLite journal answer a push without waiting for a commit.
//!
//! A run's end is appended, with one `write(2)` on the thread that ends the run, to a file
//! beside the journal (`FILE.ends-0` or `FILE.ends-1`), and its push is answered once that
//! write succeeded: the record is then in the kernel's page cache and survives a crash of the
//! process, as a WAL commit with `synchronous = NORMAL` does. The writer thread commits the
//! same records to SQLite behind, in batches. When it has committed every record of a file,
//! it empties that file; appends go to the other one meanwhile ([`EndLog::rotate`]). At open,
//! whatever the files still hold is written to SQLite before anything else happens.
//!
//! A record is a magic number, its length and its JSON. A write cut short (a full disk) leaves
//! a torn record that later appends follow; reading skips to the next magic number, which
//! JSON text, always UTF-8, cannot contain.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::sqlite::{beside, identity};

/// Starts every record; `0xFF` never occurs in UTF-8.
const MAGIC: [u8; 4] = [0xFF, b'E', b'N', b'D'];
const HEAD: usize = MAGIC.len() + 4;

pub(super) struct EndLog {
    paths: [PathBuf; 2],
    files: RwLock<Files>,
    /// Whether each file may hold records (it was appended to since it was emptied).
    dirty: [AtomicBool; 2],
    /// No more appends: the writer is stopping (see [`EndLog::close`]).
    closed: AtomicBool,
}

struct Files {
    /// The file appends go to.
    current: usize,
    open: [File; 2],
}

impl EndLog {
    /// Opens (creating) the two files beside `journal` and reads the records they hold, which
    /// stay until [`EndLog::clear`]. A whole record that does not read as one (written by
    /// another version of cmqhook?) is an error: it was answered, and must not be dropped.
    pub(super) fn open<T: DeserializeOwned>(journal: &Path) -> std::io::Result<(EndLog, Vec<T>)> {
        let paths = paths(journal);
        let mut records = Vec::new();
        let mut open = Vec::with_capacity(2);
        let mut dirty = [false, false];
        for (index, path) in paths.iter().enumerate() {
            let mut file = append_to(path)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            let (read, skipped) = parse(&bytes).map_err(|at| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: the record at byte {at} is whole but cannot be read; \
                         it was written by another version of cmqhook?",
                        path.display()
                    ),
                )
            })?;
            if skipped > 0 {
                // A write cut short was never answered; anything else is worth a look.
                tracing::warn!(
                    path = %path.display(),
                    bytes = skipped,
                    "the end log holds bytes that are not a whole record (a write cut short?); skipped"
                );
            }
            records.extend(read);
            dirty[index] = !bytes.is_empty();
            open.push(file);
        }
        let open: [File; 2] = open.try_into().expect("two files");
        let log = EndLog {
            paths,
            files: RwLock::new(Files { current: 0, open }),
            dirty: dirty.map(AtomicBool::new),
            closed: AtomicBool::new(false),
        };
        Ok((log, records))
    }

    /// `record` as the bytes [`EndLog::append`] writes.
    pub(super) fn frame<T: Serialize>(record: &T) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(512);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut bytes, record).expect("an end record is always JSON");
        let len = u32::try_from(bytes.len() - HEAD).unwrap_or(u32::MAX);
        bytes[MAGIC.len()..HEAD].copy_from_slice(&len.to_le_bytes());
        bytes
    }

    /// Appends a [`EndLog::frame`] with one write, then calls `then` with whether all of it
    /// was written, before the file can be rotated out: whatever `then` sends to the writer
    /// is sent before the writer's next [`EndLog::rotate`] returns. Nothing is written once
    /// the log is closed.
    pub(super) fn append<R>(&self, bytes: &[u8], then: impl FnOnce(bool) -> R) -> R {
        let files = self.files.read().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::Acquire) {
            return then(false);
        }
        self.dirty[files.current].store(true, Ordering::Release);
        // One `write`: with O_APPEND it lands whole after every earlier one; the rest of a
        // short write would not, so a short write is a failed one.
        let written = (&files.open[files.current])
            .write(bytes)
            .is_ok_and(|n| n == bytes.len());
        then(written)
    }

    /// Appends go to the other file from now on, if this one may hold records: returns the
    /// index of the file to [`EndLog::clear`] once everything sent before this call is
    /// committed.
    pub(super) fn rotate(&self) -> Option<usize> {
        let mut files = self.files.write().unwrap_or_else(PoisonError::into_inner);
        let old = files.current;
        if !self.dirty[old].load(Ordering::Acquire) {
            return None;
        }
        files.current = 1 - old;
        Some(old)
    }

    /// Refuses appends from now on: every record appended before was sent to the writer, which
    /// commits them all before it empties the log for good.
    pub(super) fn close(&self) {
        let _files = self.files.write().unwrap_or_else(PoisonError::into_inner);
        self.closed.store(true, Ordering::Release);
    }

    /// Empties file `index`, whose records are all committed.
    pub(super) fn clear(&self, index: usize) -> std::io::Result<()> {
        let files = self.files.read().unwrap_or_else(PoisonError::into_inner);
        files.open[index].set_len(0)?;
        self.dirty[index].store(false, Ordering::Release);
        Ok(())
    }

    /// Empties both files; only when nothing sent is left uncommitted.
    pub(super) fn clear_all(&self) -> std::io::Result<()> {
        self.clear(0)?;
        self.clear(1)
    }

    /// Opens a new file where a path no longer names the open one (deleted, replaced): later
    /// records would be lost with a crash. The records of the old file are in the writer's
    /// queue; until it has committed them, a crash loses them.
    pub(super) fn check(&self) {
        let mut files = self.files.write().unwrap_or_else(PoisonError::into_inner);
        for index in 0..2 {
            let path = &self.paths[index];
            let same = match (identity(path), files.open[index].metadata()) {
                (Ok(named), Ok(open)) => named == (open.dev(), open.ino()),
                _ => false,
            };
            if same {
                continue;
            }
            match append_to(path) {
                Ok(file) => {
                    tracing::warn!(path = %path.display(), "the end log was deleted or replaced; a new one is used");
                    files.open[index] = file;
                }
                Err(err) => {
                    tracing::error!(path = %path.display(), error = %err, "cannot create the end log again");
                }
            }
        }
    }
}

/// The records in the end log beside `journal`, read without taking it over (for
/// `cmqhook history` beside a running `serve`); none where it cannot be read.
pub(super) fn read<T: DeserializeOwned>(journal: &Path) -> Vec<T> {
    paths(journal)
        .iter()
        .filter_map(|path| std::fs::read(path).ok())
        .filter_map(|bytes| parse(&bytes).ok())
        .flat_map(|(records, _)| records)
        .collect()
}

fn paths(journal: &Path) -> [PathBuf; 2] {
    [beside(journal, ".ends-0"), beside(journal, ".ends-1")]
}

fn append_to(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

/// The whole records in `bytes`, and how many bytes were not part of one (torn records); or
/// the offset of a record that is JSON but not of the shape `T`.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Vec<T>, usize), usize> {
    let mut records = Vec::new();
    let mut at = 0;
    let mut whole = 0;
    while let Some(found) = find_magic(bytes, at) {
        let body = found + HEAD;
        let len = bytes
            .get(found + MAGIC.len()..body)
            .map(|len| u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize);
        let Some(json) = len.and_then(|len| bytes.get(body..body.checked_add(len)?)) else {
            at = found + 1;
            continue;
        };
        match serde_json::from_slice(json) {
            Ok(record) => {
                records.push(record);
                at = body + json.len();
                whole += HEAD + json.len();
            }
            // JSON of another shape (a torn record followed by others holds a magic number,
            // which is no JSON).
            Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(json).is_ok() => {
                return Err(found);
            }
            Err(_) => at = found + 1,
        }
    }
    Ok((records, bytes.len() - whole))
}

fn find_magic(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(MAGIC.len())
        .position(|window| window == MAGIC)
        .map(|position| from + position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Rec {
        id: u32,
        text: String,
    }

    fn rec(id: u32) -> Rec {
        Rec {
            id,
            text: format!("run {id} \u{e9}"),
        }
    }

    #[test]
    fn records_are_read_back_across_both_files_and_cleared_files_hold_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("j.db");
        let (log, found) = EndLog::open::<Rec>(&journal).expect("open");
        assert!(found.is_empty());
        assert!(log.append(&EndLog::frame(&rec(1)), |ok| ok));
        let old = log.rotate().expect("the file holds a record");
        assert!(log.append(&EndLog::frame(&rec(2)), |ok| ok));
        // Nothing new in the other file yet: not rotated again until the old one is cleared.
        drop(log);
        let (log, mut found) = EndLog::open::<Rec>(&journal).expect("reopen");
        found.sort_by_key(|rec| rec.id);
        assert_eq!(found, [rec(1), rec(2)]);
        log.clear(old).expect("clear");
        drop(log);
        let (log, found) = EndLog::open::<Rec>(&journal).expect("reopen");
        assert_eq!(found, [rec(2)]);
        log.clear_all().expect("clear");
        assert_eq!(log.rotate(), None, "empty files are not rotated");
        let (_, found) = EndLog::open::<Rec>(&journal).expect("reopen");
        assert!(found.is_empty());
    }

    #[test]
    fn a_torn_record_is_skipped_and_the_records_after_it_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("j.db");
        let (log, _) = EndLog::open::<Rec>(&journal).expect("open");
        log.append(&EndLog::frame(&rec(1)), |_| ());
        log.append(&EndLog::frame(&rec(2)), |_| ());
        log.append(&EndLog::frame(&rec(3)), |_| ());
        drop(log);
        let path = dir.path().join("j.db.ends-0");
        let bytes = std::fs::read(&path).expect("read");
        let second = find_magic(&bytes, 1).expect("second record");
        let third = find_magic(&bytes, second + 1).expect("third record");
        // The second record cut short, as by a write that ran out of room, and the third
        // appended after it; then a tail cut short too.
        let mut torn = bytes[..second + (third - second) / 2].to_vec();
        torn.extend_from_slice(&bytes[third..]);
        torn.extend_from_slice(&bytes[second..second + 6]);
        assert_eq!(
            parse::<Rec>(&torn).map(|(_, skipped)| skipped),
            Ok((third - second) / 2 + 6),
            "bytes skipped"
        );
        std::fs::write(&path, &torn).expect("write");
        let (_, found) = EndLog::open::<Rec>(&journal).expect("reopen");
        assert_eq!(found, [rec(1), rec(3)]);
    }

    #[test]
    fn a_whole_record_that_does_not_read_stops_the_open_and_a_closed_log_takes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("j.db");
        let (log, _) = EndLog::open::<Rec>(&journal).expect("open");
        assert!(log.append(&EndLog::frame(&rec(1)), |ok| ok));
        // Another shape of record, as another version might write.
        assert!(log.append(&EndLog::frame(&("other", 2)), |ok| ok));
        log.close();
        assert!(!log.append(&EndLog::frame(&rec(3)), |ok| ok));
        drop(log);
        let err = EndLog::open::<Rec>(&journal).err().expect("refused");
        assert!(err.to_string().contains("cannot be read"), "{err}");
        assert_eq!(read::<Rec>(&journal), Vec::new(), "history skips the file");
    }

    #[test]
    fn a_deleted_file_is_created_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("j.db");
        let (log, _) = EndLog::open::<Rec>(&journal).expect("open");
        std::fs::remove_file(dir.path().join("j.db.ends-0")).expect("rm");
        log.check();
        log.append(&EndLog::frame(&rec(7)), |_| ());
        let (_, found) = EndLog::open::<Rec>(&journal).expect("reopen");
        assert_eq!(found, [rec(7)]);
    }
}
