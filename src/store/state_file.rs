//! `RUN_ROOT/CHAIN.state`, the file: where it is, its format, reading and writing it.
//! The state it holds, and what resuming from it means, are [`crate::core::resume`]'s.
//!
//! It is written after every run, so it is written in place rather than replaced: a
//! rename per run costs a new inode, a forced writeback of the new file and the freeing
//! (and, on a filesystem mounted with `discard`, the trimming) of the old one, which
//! together took more time than the run of a short task. The file holds two slots; each
//! save overwrites the older one with the state in JSON (TOML took milliseconds to
//! write for a chain of a thousand tasks), behind a line with a sequence number, the
//! length and a checksum:
//!
//! ```text
//! run-chain-state 2 slot 4096            (header, padded to 64 bytes)
//! seq 41 len 380 fnv 9c2a…               (slot 0, at byte 64)
//! {"version":1,"tasks":["a","b"],…}
//! seq 42 len 381 fnv 01fe…               (slot 1, at byte 64 + 4096)
//! …
//! ```
//!
//! A reader (`status`, or the next instance) takes the valid slot with the higher
//! sequence number, so it sees the newest whole state, or the one before it if the
//! newest is torn (a crash or a power cut in the middle of a write), never a mix. When
//! the state outgrows its slots, or the file is missing, foreign or was replaced, a new
//! file is written whole and renamed into place, as a plain TOML state file (the first
//! format, still read) used to be at every save.
//!

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::core::resume::State;
use crate::sys;

/// Where the state of `chain` lives.
pub fn path(run_root: &Path, chain: &str) -> PathBuf {
    run_root.join(format!("{chain}.state"))
}

/// Read the state; a missing file is an empty state. A file that cannot be parsed is
/// reported (the caller logs it) and treated as empty.
pub(crate) fn load(path: &Path) -> std::result::Result<State, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => {
            return Err(format!(
                "cannot read {}: {e} (starting from the first task)",
                path.display()
            ))
        }
    };
    if bytes.starts_with(MAGIC.as_bytes()) {
        let text = newest_slot(&bytes).ok_or_else(|| {
            format!(
                "cannot read {}: neither of its two slots holds a whole state (starting from the first task)",
                path.display()
            )
        })?;
        return serde_json::from_str(text).map_err(|e| {
            format!(
                "cannot parse {}: {e} (starting from the first task)",
                path.display()
            )
        });
    }
    let text = {
        std::str::from_utf8(&bytes).map_err(|_| {
            format!(
                "cannot parse {}: not UTF-8 text (starting from the first task)",
                path.display()
            )
        })?
    };
    // A plain TOML file: the format of earlier versions.
    toml::from_str(text).map_err(|e| {
        format!(
            "cannot parse {}: {} (starting from the first task)",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

const MAGIC: &str = "run-chain-state 2 slot ";
const HEADER_LEN: usize = 64;
const MIN_SLOT: usize = 4096;

/// FNV-1a, 64 bits: enough to tell a torn slot from a whole one.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The slot line and text of one slot, as written.
fn slot_bytes(seq: u64, text: &str) -> Vec<u8> {
    let mut out = format!(
        "seq {seq} len {} fnv {:016x}\n",
        text.len(),
        fnv(text.as_bytes())
    )
    .into_bytes();
    out.extend_from_slice(text.as_bytes());
    out
}

/// A slot's (sequence, text), if it is whole.
fn parse_slot(slot: &[u8]) -> Option<(u64, &str)> {
    let nl = slot.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&slot[..nl]).ok()?;
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 6 || f[0] != "seq" || f[2] != "len" || f[4] != "fnv" {
        return None;
    }
    let seq: u64 = f[1].parse().ok()?;
    let len: usize = f[3].parse().ok()?;
    let sum = u64::from_str_radix(f[5], 16).ok()?;
    let body = slot.get(nl + 1..nl + 1 + len)?;
    (fnv(body) == sum).then_some(())?;
    Some((seq, std::str::from_utf8(body).ok()?))
}

/// The slot size named in a two-slot file's header.
fn slot_size(bytes: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(bytes.get(..HEADER_LEN)?).ok()?;
    let size: usize = head.strip_prefix(MAGIC)?.trim_end().parse().ok()?;
    (size >= MIN_SLOT).then_some(size)
}

/// The text of the newest whole slot of a two-slot file.
fn newest_slot(bytes: &[u8]) -> Option<&str> {
    let size = slot_size(bytes)?;
    (0..2)
        .filter_map(|i| {
            let start = HEADER_LEN + i * size;
            let end = (start + size).min(bytes.len());
            parse_slot(bytes.get(start..end)?)
        })
        .max_by_key(|(seq, _)| *seq)
        .map(|(_, text)| text)
}

/// Write `state` as a new file, renamed into place (mode 0600); returns the open file
/// (for writes in place), its slot size and the sequence number written.
fn create(path: &Path, text: &str, seq: u64) -> std::io::Result<(std::fs::File, usize)> {
    let slot = (text.len() + 64).max(MIN_SLOT).next_power_of_two() * 2;
    let mut bytes = format!("{MAGIC}{slot}").into_bytes();
    bytes.resize(HEADER_LEN - 1, b' ');
    bytes.push(b'\n');
    bytes.extend_from_slice(&slot_bytes(seq, text));
    let tmp = path.with_extension(format!("state.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = f
        .write_all(&bytes)
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((f, slot))
}

/// Write the state file whole, once (mode 0600).
pub fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let text = serde_json::to_string(state).map_err(std::io::Error::other)?;
    create(path, &text, 1).map(|_| ())
}

/// The writer of one chain's state file: keeps it open and writes each state into the
/// older of its two slots.
#[derive(Debug)]
pub(crate) struct Writer {
    path: PathBuf,
    open: Option<Open>,
    /// The JSON text and the slot made of it, kept from save to save (serializing into
    /// new strings, grown a doubling at a time, was most of a save's own time).
    text: Vec<u8>,
    slot: Vec<u8>,
    /// The last save failed, and was reported ([`Writer::save_reported`]).
    failing: bool,
}

#[derive(Debug)]
struct Open {
    file: std::fs::File,
    /// (device, inode) of `file`: if the path no longer names it, a new file is made.
    id: (u64, u64),
    slot: usize,
    /// The sequence number last written.
    seq: u64,
    /// The slot written next (the older one).
    next: usize,
    /// When the path was last looked up (see [`Writer::save`]).
    looked: std::time::Instant,
}

/// How often a save looks the path up again; between, the open file's link count
/// tells whether it was removed or replaced by a rename (what the look-up adds: a file
/// moved away whole, or a new one linked in its place, is seen within this time). A
/// look-up walks the path: with 200 chains of 1 s cooldowns, once a second was once a run.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Writer {
    pub(crate) fn new(path: PathBuf) -> Writer {
        Writer {
            path,
            open: None,
            text: Vec::new(),
            slot: Vec::new(),
            failing: false,
        }
    }

    /// [`Writer::save`], for `chain`'s loop: a failure is logged once (the chain keeps its
    /// schedule, and the save is tried again at every run), and so is the first save that
    /// works again.
    pub(crate) fn save_reported(&mut self, chain: &str, state: &impl Serialize) {
        match self.save(state) {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    log::info!("{chain}: state saved again to {}", self.path.display());
                }
            }
            Err(e) => {
                if !self.failing {
                    log::error!(
                        "{chain}: failed to save state to {}: {e} (the chain keeps its schedule; retrying at every run)",
                        self.path.display()
                    );
                    self.failing = true;
                }
            }
        }
    }

    /// Save `state`: in place when the file is ours and the state fits its slots, else as
    /// a new file.
    pub fn save(&mut self, state: &impl Serialize) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{FileExt, MetadataExt};
        self.text.clear();
        serde_json::to_writer(&mut self.text, state).map_err(std::io::Error::other)?;
        if let Some(o) = &mut self.open {
            // The path is looked up at most every LOOK_EVERY (a lookup is the dearest part
            // of a save in a chain without cooldowns); a file removed or replaced by a
            // rename shows at once as a link count of 0.
            let still_ours = if o.looked.elapsed() >= LOOK_EVERY {
                o.looked = std::time::Instant::now();
                sys::path_identity(&self.path)
                    .is_some_and(|(dev, ino, file)| (dev, ino) == o.id && file)
            } else {
                // Asked without the times: on a file system with fine-grained timestamps
                // a stat that reads them makes the next write update them at once (an
                // inode write to the journal per save).
                sys::link_count(o.file.as_raw_fd()).is_some_and(|n| n > 0)
            };
            self.slot.clear();
            writeln!(
                self.slot,
                "seq {} len {} fnv {:016x}",
                o.seq + 1,
                self.text.len(),
                fnv(&self.text)
            )?;
            self.slot.extend_from_slice(&self.text);
            if still_ours && self.slot.len() <= o.slot {
                let at = HEADER_LEN + o.next * o.slot;
                o.file.write_all_at(&self.slot, at as u64)?;
                o.seq += 1;
                o.next = 1 - o.next;
                return Ok(());
            }
        }
        let seq = self.open.as_ref().map_or(1, |o| o.seq + 1);
        self.open = None;
        let text = std::str::from_utf8(&self.text).map_err(std::io::Error::other)?;
        let (file, slot) = create(&self.path, text, seq)?;
        let m = file.metadata()?;
        self.open = Some(Open {
            id: (m.dev(), m.ino()),
            file,
            slot,
            seq,
            // `create` wrote slot 0.
            next: 1,
            looked: std::time::Instant::now(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::resume::{TaskFailures, STATE_VERSION};

    fn saved(next: &str, due_mono_s: u64, due_wall_s: u64) -> State {
        State {
            version: STATE_VERSION,
            tasks: vec!["a".into(), "b".into(), "c".into()],
            next_task: Some(next.into()),
            due_mono_ns: Some(due_mono_s * 1_000_000_000),
            due_wall_ms: Some(due_wall_s * 1000),
            boot_id: Some("boot1".into()),
            ..State::default()
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path(), "c");
        let mut s = saved("b", 1, 2);
        s.run_ids.insert("a".into(), 7);
        s.failures.insert(
            "a".into(),
            TaskFailures {
                streak_start_ms: Some(5),
                failures: 2,
                last_success_ms: None,
            },
        );
        s.waiting_group = Some("db".into());
        save(&p, &s).expect("save");
        assert_eq!(load(&p).expect("load"), s);
        assert_eq!(
            load(&dir.path().join("none.state")).expect("empty"),
            State::default()
        );
    }

    fn numbered(n: u64) -> State {
        let mut s = saved("b", n, n);
        s.run_ids.insert("a".into(), n);
        s
    }

    #[test]
    fn the_writer_alternates_slots_and_the_newest_whole_one_is_read() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path(), "c");
        let mut w = Writer::new(p.clone());
        w.save(&numbered(1)).expect("save");
        let ino = std::fs::metadata(&p).expect("meta").ino();
        for n in 2..=5 {
            w.save(&numbered(n)).expect("save");
            assert_eq!(load(&p).expect("load"), numbered(n));
        }
        // Written in place: the same file throughout.
        assert_eq!(std::fs::metadata(&p).expect("meta").ino(), ino);

        // Tear the newest slot (5 is in slot 0: 1 went to slot 0, 2 to 1, ...): the
        // state before it is read.
        let mut bytes = std::fs::read(&p).expect("read");
        let size = slot_size(&bytes).expect("slot size");
        let (slot0, slot1) = (HEADER_LEN, HEADER_LEN + size);
        assert!(parse_slot(&bytes[slot0..slot1]).is_some_and(|(seq, _)| seq == 5));
        bytes[slot0 + 60] ^= 0x55;
        std::fs::write(&p, &bytes).expect("write");
        assert_eq!(load(&p).expect("load"), numbered(4));

        // Both torn: an error, not a half state.
        bytes[slot1 + 60] ^= 0x55;
        std::fs::write(&p, &bytes).expect("write");
        assert!(load(&p).unwrap_err().contains("neither of its two slots"));
    }

    #[test]
    fn a_plain_toml_state_of_an_earlier_version_is_read_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path(), "c");
        std::fs::write(&p, toml::to_string(&numbered(7)).expect("toml")).expect("write");
        assert_eq!(load(&p).expect("load"), numbered(7));
        let mut w = Writer::new(p.clone());
        w.save(&numbered(8)).expect("save");
        assert!(std::fs::read(&p)
            .expect("read")
            .starts_with(MAGIC.as_bytes()));
        assert_eq!(load(&p).expect("load"), numbered(8));
    }

    #[test]
    fn a_state_that_outgrows_its_slots_or_a_removed_file_gets_a_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path(), "c");
        let mut w = Writer::new(p.clone());
        w.save(&numbered(1)).expect("save");
        let mut big = numbered(2);
        for i in 0..2000 {
            big.run_ids.insert(format!("task-with-a-long-name-{i}"), i);
        }
        w.save(&big).expect("save big");
        assert_eq!(load(&p).expect("load"), big);
        w.save(&numbered(3)).expect("save");
        assert_eq!(load(&p).expect("load"), numbered(3));
        std::fs::remove_file(&p).expect("rm");
        w.save(&numbered(4)).expect("save after rm");
        assert_eq!(load(&p).expect("load"), numbered(4));
        // A symlink put in its place is replaced, never written through.
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep\n").expect("write");
        std::fs::remove_file(&p).expect("rm");
        std::os::unix::fs::symlink(&target, &p).expect("symlink");
        w.save(&numbered(5)).expect("save over symlink");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
        assert_eq!(load(&p).expect("load"), numbered(5));
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
