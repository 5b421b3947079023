//! The write-ahead segment: where a group's events become durable before redb holds them
//! durably.
//!
//! A durable redb commit costs about twice a small write and fdatasync of the same disk (it
//! writes the B-tree pages a commit touched and its header; BENCHMARKS.md, "Single-client
//! append"). So a group is written twice: its records go into this segment, one frame per group
//! with one fdatasync, and then into redb with a non-durable commit, which costs CPU only. Every
//! so often (when the segment is full, on shutdown, after a reopen) a group is committed to
//! redb durably instead (a *checkpoint*), which makes every earlier non-durable commit durable
//! too, and the segment starts over under a new *generation*.
//!
//! The segment is a file of fixed size ([`CAPACITY`]), written with zeros when made, so that a
//! frame's write changes no file metadata and cannot run out of space. A frame is
//!
//! ```text
//! u32 magic | u32 payload length | u64 generation | u32 crc32(generation, payload) | u32 0
//! payload: sections of [u16 len, account | u32 count | count × (u64 position | u32 len, record)]
//! ```
//!
//! Recovery (`Store::open`) reads the frames of the generation redb's `wal` table names, from
//! the start, up to the first that is torn, of another generation or not a frame at all, and
//! writes into redb every record past its partition's head; then it checkpoints. Frames left
//! over from an older generation are never read, and a frame whose records redb already holds
//! is skipped by position, so replay is idempotent.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The segment's size: how much a group commit may write before a checkpoint. It bounds the
/// replay after a crash (about 25,000 events of 300 bytes) and the disk space it holds.
pub const CAPACITY: u64 = 8 * 1024 * 1024;
const MAGIC: u32 = 0x4c41_5750;
const HEADER: usize = 24;

/// The segment's path beside the log file.
pub fn path_of(log: &Path) -> PathBuf {
    log.with_extension("wal")
}

/// The open segment, owned by the writer thread.
pub struct Wal {
    /// Shared with the syncer, which fdatasyncs it (`sync`).
    file: Arc<File>,
    /// Where the next frame goes.
    offset: u64,
    /// The generation the next frames carry: the one redb's last checkpoint named.
    generation: u64,
    frame: Vec<u8>,
}

impl Wal {
    /// Opens the segment at `path`, making it (all zeros, [`CAPACITY`] long) if it is missing or
    /// short. Frames go from the start, under `generation`.
    pub fn open(path: &Path, generation: u64) -> io::Result<Wal> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < CAPACITY {
            let zeros = vec![0u8; 1024 * 1024];
            let mut at = len;
            while at < CAPACITY {
                let n = zeros.len().min((CAPACITY - at) as usize);
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(Wal {
            file: Arc::new(file),
            offset: 0,
            generation,
            frame: Vec::new(),
        })
    }

    /// Whether a frame of `payload` bytes fits in what is left of the segment.
    pub fn fits(&self, payload: usize) -> bool {
        self.offset + (HEADER + payload) as u64 <= CAPACITY
    }

    /// Writes one frame, not yet durable (the syncer fdatasyncs the segment); returns its offset
    /// (for [`Wal::retract`]).
    pub fn append(&mut self, payload: &[u8]) -> io::Result<u64> {
        debug_assert!(self.fits(payload.len()));
        self.frame.clear();
        self.frame.extend_from_slice(&MAGIC.to_le_bytes());
        self.frame
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.frame.extend_from_slice(&self.generation.to_le_bytes());
        self.frame
            .extend_from_slice(&checksum(self.generation, payload).to_le_bytes());
        self.frame.extend_from_slice(&0u32.to_le_bytes());
        self.frame.extend_from_slice(payload);
        let at = self.offset;
        self.file.write_all_at(&self.frame, at)?;
        self.offset += self.frame.len() as u64;
        Ok(at)
    }

    /// Unwrites the frame at `offset` (the last one written), when redb refused its group: its
    /// header is zeroed and made durable, so recovery stops before it.
    pub fn retract(&mut self, offset: u64) -> io::Result<()> {
        self.file.write_all_at(&[0u8; HEADER], offset)?;
        self.file.sync_data()?;
        self.offset = offset;
        Ok(())
    }

    /// The segment's file, for the syncer.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// The generation new frames carry.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// After a checkpoint: frames start over from the beginning under `generation`.
    pub fn restart(&mut self, generation: u64) {
        self.offset = 0;
        self.generation = generation;
    }
}

fn checksum(generation: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The payloads of the segment's frames of `generation`, in order, up to the first that is not
/// one. A missing segment has none.
pub fn frames(path: &Path, generation: u64) -> io::Result<Vec<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
        let len = word(4) as usize;
        let frame_generation = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if word(0) != MAGIC || frame_generation != generation {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if checksum(generation, payload) != word(16) {
            break;
        }
        out.push(payload.to_vec());
        at += HEADER + len;
    }
    Ok(out)
}

/// Builds one frame's payload: the records a group wrote, by account.
#[derive(Default)]
pub struct Payload {
    bytes: Vec<u8>,
}

impl Payload {
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Adds one account's section: `records` as [`Records`] wrote them.
    pub fn section(&mut self, account: &str, records: &Records) {
        if records.count == 0 {
            return;
        }
        self.bytes
            .extend_from_slice(&(account.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(account.as_bytes());
        self.bytes.extend_from_slice(&records.count.to_le_bytes());
        self.bytes.extend_from_slice(&records.bytes);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The records one group wrote into one partition, in position order.
#[derive(Default)]
pub struct Records {
    count: u32,
    bytes: Vec<u8>,
}

impl Records {
    /// The bytes pushed so far: where the next record goes, for [`Records::iter_from`].
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The records pushed from byte `at` on (a [`Records::byte_len`] taken before), as
    /// (position, record).
    pub fn iter_from(&self, at: usize) -> impl Iterator<Item = (u64, &[u8])> {
        let mut rest = &self.bytes[at..];
        std::iter::from_fn(move || {
            let (position, tail) = rest.split_first_chunk::<8>()?;
            let (len, tail) = tail.split_first_chunk::<4>()?;
            let (record, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
            rest = tail;
            Some((u64::from_le_bytes(*position), record))
        })
    }

    pub fn push(&mut self, position: u64, record: &[u8]) {
        self.count += 1;
        self.bytes.extend_from_slice(&position.to_le_bytes());
        self.bytes
            .extend_from_slice(&(record.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(record);
    }
}

/// One record of a frame, for replay.
pub struct Entry<'a> {
    pub account: &'a str,
    pub position: u64,
    pub record: &'a [u8],
}

/// The records of one frame's payload, in order; `None` marks a malformed payload (which a
/// frame whose checksum held cannot have, short of a bug).
pub fn entries(payload: &[u8]) -> impl Iterator<Item = Option<Entry<'_>>> {
    let mut rest = payload;
    let mut account = "";
    let mut left = 0u32;
    std::iter::from_fn(move || {
        if left == 0 {
            if rest.is_empty() {
                return None;
            }
            let section = (|| {
                let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
                let name = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
                let count = u32::from_le_bytes(rest.get(2 + len..6 + len)?.try_into().ok()?);
                Some((name, count, 6 + len))
            })();
            let Some((name, count, used)) = section else {
                rest = &[];
                return Some(None);
            };
            (account, left, rest) = (name, count, &rest[used..]);
            if left == 0 {
                rest = &[];
                return Some(None);
            }
        }
        let entry = (|| {
            let position = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
            let len = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
            let record = rest.get(12..12 + len)?;
            Some((position, record, 12 + len))
        })();
        let Some((position, record, used)) = entry else {
            rest = &[];
            left = 0;
            return Some(None);
        };
        rest = &rest[used..];
        left -= 1;
        Some(Some(Entry {
            account,
            position,
            record,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An account and its (position, record) pairs.
    type Section<'a> = (&'a str, &'a [(u64, &'a [u8])]);

    fn payload(sections: &[Section]) -> Vec<u8> {
        let mut payload = Payload::default();
        for (account, records) in sections {
            let mut r = Records::default();
            for (p, bytes) in *records {
                r.push(*p, bytes);
            }
            payload.section(account, &r);
        }
        payload.as_bytes().to_vec()
    }

    #[test]
    fn frames_round_trip_and_stop_at_a_torn_or_foreign_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.wal");
        let mut wal = Wal::open(&path, 7).unwrap();
        let one = payload(&[("root", &[(1, b"a"), (2, b"bc")]), ("acme", &[(1, b"x")])]);
        let two = payload(&[("root", &[(3, b"d")])]);
        wal.append(&one).unwrap();
        let second = wal.append(&two).unwrap();
        assert_eq!(frames(&path, 7).unwrap(), vec![one.clone(), two.clone()]);
        assert!(frames(&path, 6).unwrap().is_empty(), "another generation");

        let entries: Vec<_> = entries(&one)
            .map(|e| e.map(|e| (e.account.to_owned(), e.position, e.record.to_vec())))
            .collect();
        assert_eq!(
            entries,
            vec![
                Some(("root".into(), 1, b"a".to_vec())),
                Some(("root".into(), 2, b"bc".to_vec())),
                Some(("acme".into(), 1, b"x".to_vec())),
            ]
        );

        // A torn frame (a byte of its payload lost) ends the segment there.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], second + HEADER as u64).unwrap();
        assert_eq!(frames(&path, 7).unwrap(), vec![one.clone()]);

        // A retracted frame, and a restart: new frames overwrite from the start; what is left
        // of the old generation beyond them is not read.
        wal.retract(second).unwrap();
        assert_eq!(frames(&path, 7).unwrap(), vec![one.clone()]);
        wal.restart(8);
        wal.append(&two).unwrap();
        assert_eq!(frames(&path, 8).unwrap(), vec![two]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), CAPACITY);
    }

    #[test]
    fn a_missing_segment_has_no_frames_and_a_full_one_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.wal");
        assert!(frames(&path, 1).unwrap().is_empty());
        let wal = Wal::open(&path, 1).unwrap();
        assert!(wal.fits(CAPACITY as usize - HEADER));
        assert!(!wal.fits(CAPACITY as usize - HEADER + 1));
    }

    #[test]
    fn a_malformed_payload_is_reported() {
        let mut bad = payload(&[("root", &[(1, b"abc")])]);
        bad.truncate(bad.len() - 1);
        let entries: Vec<_> = entries(&bad).map(|e| e.is_some()).collect();
        assert_eq!(entries, vec![false]);
    }
}
