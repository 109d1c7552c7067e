//! The end log: what lets the SQLite journal answer a push without waiting for a commit.
//!
//! A run's end is appended, with a `write(2)` on the thread that ends the run, to a file
//! beside the journal (`FILE.ends-0` or `FILE.ends-1`), and its push is answered once that
//! write succeeded and the file is still there: the record is then in the kernel's page cache
//! and survives a crash of the process, as a WAL commit with `synchronous = NORMAL` does. The
//! writer thread commits the same records to SQLite behind, in batches. When it has committed
//! every record of a file, it empties that file; appends go to the other one meanwhile
//! ([`EndLog::rotate`]). At open, whatever the files still hold is written to SQLite before
//! anything else happens.
//!
//! An append counts only in a file its path still names: a record in a deleted file is lost
//! with the process. So after each append the file's link count is checked (one `statx`), and
//! a deleted file is created again with every record it held, which the log keeps in memory
//! until the file is emptied (as long as the writer lags behind), before the append counts;
//! the writer also checks every second that each path names its file.
//!
//! A record (format 2) is a magic number, the format's version, the JSON's length, a CRC32 of
//! those and the JSON, and the JSON; records of format 1 (a magic number, the length, the
//! JSON) are still read. Appends are one at a time, and a write that fails part-way is cut
//! off the file at once, so only a crash can leave part of a record, and only at the end of a
//! file: a torn last record (the file ends inside it, or from inside it on holds only zeros)
//! was never answered and is skipped with a warning. Any other record that does not read
//! (its checksum, its magic number, its shape) may be the end of an answered run: the open
//! fails, naming the file and the byte offset and saying what the operator can do.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{beside, identity};

/// Starts every record of format 2 (and later); `0xFF` never occurs in UTF-8, so JSON text
/// cannot contain it.
const MAGIC: [u8; 4] = [0xFF, b'E', b'N', b'V'];
/// The format [`EndLog::frame`] writes, the byte after [`MAGIC`].
const FORMAT: u8 = 2;
/// Format 2's header: [`MAGIC`], the version, the JSON's length and the CRC32 (of the version,
/// the length and the JSON), little-endian.
const HEAD: usize = MAGIC.len() + 1 + 4 + 4;
const LEN_AT: usize = MAGIC.len() + 1;
const CRC_AT: usize = LEN_AT + 4;
/// Starts every record of format 1 (before checksums), followed by the JSON's length.
const MAGIC_1: [u8; 4] = [0xFF, b'E', b'N', b'D'];
const HEAD_1: usize = MAGIC_1.len() + 4;
/// What a file's copy in memory keeps of its room once emptied.
const KEEP_ROOM: usize = 1 << 20;

pub(super) struct EndLog {
    paths: [PathBuf; 2],
    state: Mutex<State>,
}

struct State {
    /// The file appends go to.
    current: usize,
    files: [Held; 2],
    /// No more appends: the writer is stopping (see [`EndLog::close`]).
    closed: bool,
}

/// One of the two files, with a copy of what it holds.
struct Held {
    file: File,
    /// Every record appended since the file was last emptied, which is what it holds: written
    /// to a new file should this one be deleted before its records are committed.
    bytes: Vec<u8>,
    /// A write failed and part of it may still be in the file: cut before the next append.
    torn: bool,
}

/// A record as the bytes [`EndLog::append`] writes, or why it has none.
pub(super) struct Frame(Result<Vec<u8>, String>);

/// A record that cannot be read and is not a torn last one.
#[derive(Debug, PartialEq)]
struct Damage {
    at: usize,
    what: String,
}

impl EndLog {
    /// Opens (creating) the two files beside `journal` and reads the records they hold, which
    /// stay until [`EndLog::clear`]. A torn last record is skipped with a warning and cut off;
    /// any other record that does not read is an error: it may have been answered, and must
    /// not be dropped without the operator.
    pub(super) fn open<T: DeserializeOwned>(journal: &Path) -> std::io::Result<(EndLog, Vec<T>)> {
        let paths = paths(journal);
        let mut records = Vec::new();
        let mut files = Vec::with_capacity(2);
        for path in &paths {
            let mut file = append_to(path)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            let (read, whole) = parse(&bytes).map_err(|damage| damaged(path, &damage))?;
            if whole < bytes.len() {
                // A write cut short by a crash: never answered.
                tracing::warn!(
                    path = %path.display(),
                    at = whole,
                    bytes = bytes.len() - whole,
                    "the end log ends with a torn record (a write cut short by a crash); skipped"
                );
                file.set_len(whole as u64)?;
                bytes.truncate(whole);
            }
            records.extend(read);
            files.push(Held {
                file,
                bytes,
                torn: false,
            });
        }
        let files: [Held; 2] = files.try_into().ok().expect("one for each of two paths");
        let state = State {
            current: 0,
            files,
            closed: false,
        };
        let log = EndLog {
            paths,
            state: Mutex::new(state),
        };
        Ok((log, records))
    }

    /// `record` as the bytes [`EndLog::append`] writes; none for a record JSON cannot hold
    /// (a time before 1970), which [`EndLog::append`] then refuses.
    pub(super) fn frame<T: Serialize>(record: &T) -> Frame {
        let mut bytes = Vec::with_capacity(512);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(FORMAT);
        bytes.extend_from_slice(&[0; HEAD - LEN_AT]);
        if let Err(err) = serde_json::to_writer(&mut bytes, record) {
            return Frame(Err(err.to_string()));
        }
        let Ok(len) = u32::try_from(bytes.len() - HEAD) else {
            return Frame(Err("a record longer than 4 GiB".to_owned()));
        };
        bytes[LEN_AT..CRC_AT].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&bytes[MAGIC.len()..CRC_AT], &bytes[HEAD..]);
        bytes[CRC_AT..HEAD].copy_from_slice(&crc.to_le_bytes());
        Frame(Ok(bytes))
    }

    /// Appends a [`EndLog::frame`] with one write, checks that its file is still there
    /// (creating a deleted one again with what it held, and the other one too if it was
    /// deleted), then calls `then` with whether the record is in a file its path names, before the
    /// file can be rotated out: whatever `then` sends to the writer is sent before the
    /// writer's next [`EndLog::rotate`] returns. Nothing is written once the log is closed.
    pub(super) fn append<R>(&self, frame: &Frame, then: impl FnOnce(bool) -> R) -> R {
        let mut state = self.lock();
        let logged = match &frame.0 {
            _ if state.closed => false,
            Ok(bytes) => state.append(&self.paths, bytes),
            Err(reason) => {
                tracing::error!(%reason, "a run's end cannot be written to the end log");
                false
            }
        };
        then(logged)
    }

    /// Appends go to the other file from now on, if this one holds records: returns the index
    /// of the file to [`EndLog::clear`] once everything sent before this call is committed.
    pub(super) fn rotate(&self) -> Option<usize> {
        let mut state = self.lock();
        let old = state.current;
        if state.files[old].bytes.is_empty() {
            return None;
        }
        state.current = 1 - old;
        Some(old)
    }

    /// Refuses appends from now on: every record appended before was sent to the writer, which
    /// commits them all before it empties the log for good.
    pub(super) fn close(&self) {
        self.lock().closed = true;
    }

    /// Empties file `index`, whose records are all committed.
    pub(super) fn clear(&self, index: usize) -> std::io::Result<()> {
        let mut state = self.lock();
        let held = &mut state.files[index];
        held.file.set_len(0)?;
        held.bytes.clear();
        held.bytes.shrink_to(KEEP_ROOM);
        held.torn = false;
        Ok(())
    }

    /// Empties both files; only when nothing sent is left uncommitted.
    pub(super) fn clear_all(&self) -> std::io::Result<()> {
        self.clear(0)?;
        self.clear(1)
    }

    /// Creates a file again, with the records it held, where its path no longer names the
    /// open one (deleted, or replaced while another link kept it): between appends, which
    /// check only for a deleted file.
    pub(super) fn check(&self) {
        let mut state = self.lock();
        for (path, held) in self.paths.iter().zip(&mut state.files) {
            let same = match (identity(path), held.file.metadata()) {
                (Ok(named), Ok(open)) => named == (open.dev(), open.ino()),
                _ => false,
            };
            if !same {
                held.recreate(path);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Appends `bytes` to the current file; whether they are now in a file its path names.
    fn append(&mut self, paths: &[PathBuf; 2], bytes: &[u8]) -> bool {
        let current = self.current;
        if let Err(err) = self.files[current].write(bytes) {
            tracing::error!(path = %paths[current].display(), error = %err, "cannot append to the end log");
            return false;
        }
        // The record counts only in a file its path names. A deleted one is created again
        // with its records; so is the other one if it was deleted too (`rm FILE.ends-*`):
        // its records were counted. One `statx` an append: the other file alone is left to
        // the writer's [`EndLog::check`], which runs between its commits, failed ones too.
        if !self.files[current].unlinked() {
            return true;
        }
        let logged = self.files[current].recreate(&paths[current]);
        let other = &mut self.files[1 - current];
        if !other.bytes.is_empty() && other.unlinked() {
            other.recreate(&paths[1 - current]);
        }
        logged
    }
}

impl Held {
    /// Appends `bytes` whole, or not at all.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.bytes.len() as u64)?;
            self.torn = false;
        }
        // Appends are one at a time, so a write that failed part-way can be cut off before
        // another follows it; O_APPEND puts the record after every earlier one.
        if let Err(err) = (&self.file).write_all(bytes) {
            self.torn = self.file.set_len(self.bytes.len() as u64).is_err();
            return Err(err);
        }
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// Whether no path names the file any more (or it cannot be told): one `statx` of the
    /// link count alone. Not `fstat`: it asks for the timestamps too, and on a file system
    /// with multigrain timestamps (ext4, xfs, btrfs since Linux 6.13) a timestamp that was
    /// read must change at the next write, so every append would also dirty the inode (about
    /// 3 µs a push at concurrency 8); asked for no timestamp, appends within one clock tick
    /// leave it alone. Where `statx` is missing (Linux before 4.11, some sandboxes), `fstat`.
    fn unlinked(&self) -> bool {
        use rustix::fs::{AtFlags, StatxFlags, statx};
        match statx(&self.file, c"", AtFlags::EMPTY_PATH, StatxFlags::NLINK) {
            Ok(named) if named.stx_mask & StatxFlags::NLINK.bits() != 0 => named.stx_nlink == 0,
            Ok(_) | Err(_) => {
                !nix::sys::stat::fstat(&self.file).is_ok_and(|open| open.st_nlink > 0)
            }
        }
    }

    /// Creates `path` again with the records the file held, and appends go there; whether
    /// that worked.
    fn recreate(&mut self, path: &Path) -> bool {
        let made = append_to(path).and_then(|file| {
            file.set_len(0)?;
            (&file).write_all(&self.bytes)?;
            Ok(file)
        });
        match made {
            Ok(file) => {
                tracing::warn!(
                    path = %path.display(),
                    bytes = self.bytes.len(),
                    "the end log was deleted or replaced; a new one is used, with the records it held"
                );
                self.file = file;
                self.torn = false;
                true
            }
            Err(err) => {
                tracing::error!(
                    path = %path.display(),
                    error = %err,
                    "cannot create the end log again; no end counts as logged until it can"
                );
                false
            }
        }
    }
}

/// The records in the end log beside `journal`, read without taking it over (for
/// `cmqhook history` beside a running `serve`); none from a file that cannot be read.
pub(super) fn read<T: DeserializeOwned>(journal: &Path) -> Vec<T> {
    let mut records = Vec::new();
    for path in paths(journal) {
        match std::fs::read(&path).map(|bytes| parse(&bytes)) {
            Ok(Ok((read, _))) => records.extend(read),
            Ok(Err(damage)) => {
                tracing::warn!(error = %damaged(&path, &damage), "end log skipped");
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "end log skipped");
            }
        }
    }
    records
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

fn checksum(head: &[u8], json: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(head);
    hasher.update(json);
    hasher.finalize()
}

/// The error that stops the open: where, what, and what the operator can do.
fn damaged(path: &Path, damage: &Damage) -> std::io::Error {
    let (path, at) = (path.display(), damage.at);
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{path}: the end-log record at byte {at} is damaged ({}); it may hold the end of a \
             run already answered, so the journal is not opened. To start anyway, accepting \
             that the messages whose ends are in this file from byte {at} on may run again: \
             keep a copy (`cp {path} {path}.damaged`), then `truncate -s {at} {path}`",
            damage.what
        ),
    )
}

/// The whole records in `bytes`, and where they end: after them comes at most a torn last
/// record. Or the first record that is damaged.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Vec<T>, usize), Damage> {
    // Where the trailing zeros start, which a crash can leave where writes were lost.
    let data_end = bytes
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |at| at + 1);
    let mut records = Vec::new();
    let mut at = 0;
    while at < data_end {
        let rest = &bytes[at..];
        match record(rest) {
            Ok((record, len)) => {
                records.push(record);
                at += len;
            }
            // The file ends inside the record, and nothing follows that could be another.
            Err(Bad::Short) if find_magic(&rest[1..]).is_none() => break,
            // From inside the record on, only zeros (a whole record's JSON never ends in one).
            Err(Bad::Wrong { end, .. }) if data_end - at < end => break,
            Err(Bad::Short) => {
                return Err(Damage {
                    at,
                    what: "its length runs past the record after it".to_owned(),
                });
            }
            Err(Bad::Wrong { what, .. }) => return Err(Damage { at, what }),
        }
    }
    Ok((records, at))
}

/// Why the bytes at some offset are no whole record.
enum Bad {
    /// The bytes end inside the record's header or its declared length.
    Short,
    /// The record, `end` bytes long (as far as it can tell), does not read.
    Wrong { end: usize, what: String },
}

/// The record at the start of `rest`, and its length.
fn record<T: DeserializeOwned>(rest: &[u8]) -> Result<(T, usize), Bad> {
    let declared = |at: usize| {
        rest.get(at..at + 4)
            .map(|len| u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize)
    };
    let (json, end) = if rest.starts_with(&MAGIC) {
        let version = *rest.get(MAGIC.len()).ok_or(Bad::Short)?;
        if version != FORMAT {
            return Err(Bad::Wrong {
                end: MAGIC.len() + 1,
                what: format!("format version {version}, which this cmqhook does not know"),
            });
        }
        let len = declared(LEN_AT).ok_or(Bad::Short)?;
        let crc = declared(CRC_AT).ok_or(Bad::Short)?;
        let json = rest.get(HEAD..HEAD + len).ok_or(Bad::Short)?;
        if checksum(&rest[MAGIC.len()..CRC_AT], json) as usize != crc {
            return Err(Bad::Wrong {
                end: HEAD + len,
                what: "checksum mismatch".to_owned(),
            });
        }
        (json, HEAD + len)
    } else if rest.starts_with(&MAGIC_1) {
        let len = declared(MAGIC_1.len()).ok_or(Bad::Short)?;
        let json = rest.get(HEAD_1..HEAD_1 + len).ok_or(Bad::Short)?;
        (json, HEAD_1 + len)
    } else if MAGIC.starts_with(rest) || MAGIC_1.starts_with(rest) {
        return Err(Bad::Short);
    } else {
        return Err(Bad::Wrong {
            end: 1,
            what: "no record starts there".to_owned(),
        });
    };
    match serde_json::from_slice(json) {
        Ok(record) => Ok((record, end)),
        Err(err) => Err(Bad::Wrong {
            end,
            what: format!("not an end record this cmqhook can read: {err}"),
        }),
    }
}

/// Where the first record (of either format) starts in `bytes`.
fn find_magic(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(MAGIC.len())
        .position(|window| window == MAGIC || window == MAGIC_1)
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

    fn bytes(id: u32) -> Vec<u8> {
        EndLog::frame(&rec(id)).0.expect("a record")
    }

    /// A journal path in a new directory, and its first end-log file holding `records`.
    fn log_holding(records: &[Vec<u8>]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("j.db");
        let file = dir.path().join("j.db.ends-0");
        std::fs::write(&file, records.concat()).expect("write");
        (dir, journal, file)
    }

    fn opened(journal: &Path) -> Vec<Rec> {
        EndLog::open::<Rec>(journal).expect("open").1
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
        assert!(opened(&journal).is_empty());
    }

    #[test]
    fn a_checksum_mismatch_stops_the_open_naming_the_file_the_offset_and_the_way_out() {
        let at = bytes(1).len();
        let mut second = bytes(2);
        // One byte inside the JSON, still JSON of the right shape: only the checksum tells.
        let digit = HEAD + second[HEAD..].iter().position(|&b| b == b'2').expect("id");
        second[digit] = b'3';
        let (_dir, journal, file) = log_holding(&[bytes(1), second, bytes(4)]);
        let err = EndLog::open::<Rec>(&journal).err().expect("refused");
        let text = err.to_string();
        let path = file.display();
        for needle in [
            format!("{path}: the end-log record at byte {at} is damaged (checksum mismatch)"),
            format!("`truncate -s {at} {path}`"),
            "may run again".to_owned(),
        ] {
            assert!(text.contains(&needle), "{needle:?} in {text}");
        }
        assert_eq!(read::<Rec>(&journal), [], "history skips the file");
        // What the operator does: the records before it are read.
        File::options()
            .write(true)
            .open(&file)
            .and_then(|file| file.set_len(at as u64))
            .expect("truncate");
        assert_eq!(opened(&journal), [rec(1)]);
    }

    #[test]
    fn a_whole_record_of_another_shape_or_version_or_garbage_followed_by_records_is_damage() {
        let at = bytes(1).len();
        let other = EndLog::frame(&("other", 2)).0.expect("a record");
        let mut newer = bytes(2);
        newer[MAGIC.len()] = FORMAT + 1;
        let mut flipped = bytes(2);
        flipped[0] = b'x';
        let cut = bytes(2)[..HEAD + 3].to_vec();
        for (middle, after, what) in [
            (&other, bytes(3), "not an end record this cmqhook can read"),
            (
                &newer,
                bytes(3),
                "format version 3, which this cmqhook does not know",
            ),
            (&flipped, bytes(3), "no record starts there"),
            (&cut, bytes(3), "checksum mismatch"),
            (
                &cut,
                bytes(3)[..HEAD].to_vec(),
                "its length runs past the record after it",
            ),
        ] {
            let all = [bytes(1), middle.clone(), after].concat();
            let damage = parse::<Rec>(&all).expect_err("damage");
            assert_eq!(damage.at, at, "{what}");
            assert!(damage.what.starts_with(what), "{what}: {damage:?}");
            // As the last record, damage too, unless it is merely cut short.
            let last = [bytes(1), middle.clone()].concat();
            let expected = if middle == &cut { Ok(at) } else { Err(at) };
            assert_eq!(
                parse::<Rec>(&last)
                    .map(|(_, whole)| whole)
                    .map_err(|damage| damage.at),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn a_torn_last_record_cut_short_or_zero_filled_is_skipped_and_cut_off() {
        let at = bytes(1).len();
        let second = bytes(2);
        let zeros = |from: usize| {
            let mut torn = second.clone();
            torn[from..].fill(0);
            torn
        };
        for torn in [
            second[..3].to_vec(),
            second[..HEAD - 1].to_vec(),
            second[..second.len() - 1].to_vec(),
            zeros(0),
            zeros(MAGIC.len()),
            zeros(HEAD + 2),
            [second.clone(), vec![0; 4096]].concat(),
        ] {
            let (_dir, journal, file) = log_holding(&[bytes(1), torn.clone()]);
            let (log, found) = EndLog::open::<Rec>(&journal).expect("open");
            let whole = [bytes(1), second.clone()].concat();
            if torn.starts_with(&second) {
                assert_eq!(found, [rec(1), rec(2)], "whole records, then zeros");
                assert_eq!(std::fs::read(&file).expect("read"), whole);
                continue;
            }
            assert_eq!(found, [rec(1)], "{torn:?}");
            assert_eq!(std::fs::metadata(&file).expect("file").len(), at as u64);
            // Cut off: later appends do not follow it, and read back.
            assert!(log.append(&EndLog::frame(&rec(3)), |ok| ok));
            drop(log);
            assert_eq!(opened(&journal), [rec(1), rec(3)]);
        }
    }

    #[test]
    fn records_of_the_format_before_checksums_are_still_read() {
        let old = |record: &Rec| {
            let json = serde_json::to_vec(record).expect("json");
            let len = u32::try_from(json.len()).expect("short");
            [&MAGIC_1[..], &len.to_le_bytes(), &json].concat()
        };
        let (_dir, journal, _) = log_holding(&[old(&rec(1)), old(&rec(2)), bytes(3)]);
        assert_eq!(opened(&journal), [rec(1), rec(2), rec(3)]);
    }

    #[test]
    fn a_deleted_file_is_created_again_with_every_record_not_yet_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("j.db");
        let (log, _) = EndLog::open::<Rec>(&journal).expect("open");
        assert!(log.append(&EndLog::frame(&rec(1)), |ok| ok));
        let old = log.rotate().expect("rotated");
        assert!(log.append(&EndLog::frame(&rec(2)), |ok| ok));
        // Both deleted, the writer not checking: the next append finds out, and both files
        // hold what they held.
        for index in 0..2 {
            std::fs::remove_file(dir.path().join(format!("j.db.ends-{index}"))).expect("rm");
        }
        assert!(log.append(&EndLog::frame(&rec(3)), |ok| ok));
        let mut found = opened(&journal);
        found.sort_by_key(|rec| rec.id);
        assert_eq!(found, [rec(1), rec(2), rec(3)]);
        // Once cleared, a record is not written again.
        log.clear(old).expect("clear");
        std::fs::remove_file(dir.path().join("j.db.ends-1")).expect("rm");
        assert!(log.append(&EndLog::frame(&rec(4)), |ok| ok));
        assert_eq!(opened(&journal), [rec(2), rec(3), rec(4)]);
        // The writer's check creates a file again between appends.
        std::fs::remove_file(dir.path().join("j.db.ends-1")).expect("rm");
        log.check();
        assert_eq!(opened(&journal), [rec(2), rec(3), rec(4)]);
    }

    #[test]
    fn an_append_that_cannot_be_kept_does_not_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("j.db");
        let (log, _) = EndLog::open::<Rec>(&journal).expect("open");
        // Where the file was, a directory: it cannot be created again.
        let file = dir.path().join("j.db.ends-0");
        std::fs::remove_file(&file).expect("rm");
        std::fs::create_dir(&file).expect("mkdir");
        assert!(!log.append(&EndLog::frame(&rec(1)), |ok| ok));
        std::fs::remove_dir(&file).expect("rmdir");
        assert!(log.append(&EndLog::frame(&rec(2)), |ok| ok));
        assert_eq!(opened(&journal), [rec(1), rec(2)]);
        // A time JSON cannot hold (before 1970) is no record; a closed log takes nothing.
        let before_1970 = std::time::SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(1);
        assert!(!log.append(&EndLog::frame(&before_1970), |ok| ok));
        log.close();
        assert!(!log.append(&EndLog::frame(&rec(3)), |ok| ok));
        assert_eq!(opened(&journal), [rec(1), rec(2)]);
    }

    /// A tmpfs of `size` mounted on a new directory; unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Tmpfs {
            let dir = tempfile::tempdir().expect("tempdir");
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|status| status.success());
            assert!(mounted, "cannot mount a tmpfs (needs root)");
            Tmpfs(dir)
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    #[ignore = "needs root: mounts a tmpfs"]
    fn a_write_cut_short_by_a_full_disk_is_cut_off_and_the_records_after_it_read() {
        let big = |id| Rec {
            id,
            text: "x".repeat(500),
        };
        let tmpfs = Tmpfs::mount("64k");
        let journal = tmpfs.0.path().join("j.db");
        let (log, _) = EndLog::open::<Rec>(&journal).expect("open");
        assert!(log.append(&EndLog::frame(&big(0)), |ok| ok));
        let filler = tmpfs.0.path().join("filler");
        let mut file = File::create(&filler).expect("filler");
        while file.write_all(&[0xAA; 4096]).is_ok() {}
        drop(file);
        // Appends go on in the file's last page, until one is cut short at its end.
        let mut taken = 1;
        while log.append(&EndLog::frame(&big(taken)), |ok| ok) {
            taken += 1;
            assert!(taken < 100, "the filesystem never filled");
        }
        std::fs::remove_file(&filler).expect("room again");
        assert!(log.append(&EndLog::frame(&big(1000)), |ok| ok));
        drop(log);
        let expected: Vec<Rec> = (0..taken).chain([1000]).map(big).collect();
        assert_eq!(opened(&journal), expected);
    }
}
