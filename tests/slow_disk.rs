//! A chain stopped while its store copies the WAL back (a checkpoint) leaves at once when
//! every record is written: the copy is cut off, which SQLite survives by design (the WAL
//! stays whole until a checkpoint has finished, and the next one copies it again).
//!
//! The slow disk is injected with a tiny LD_PRELOAD shim (built here with the system C
//! compiler) whose `fsync` and `fdatasync` note that they were called and then take a
//! minute: only a checkpoint syncs (WAL mode, synchronous=NORMAL).

mod common;

use common::*;
use std::fs;

const SHIM: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
static void slow(void) {
    const char *mark = getenv("SLOW_FSYNC_MARK");
    if (mark) {
        int fd = open(mark, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) { (void)!write(fd, "fsync\n", 6); close(fd); }
    }
    sleep(60);
}
int fsync(int fd) { (void)fd; slow(); return 0; }
int fdatasync(int fd) { (void)fd; slow(); return 0; }
"#;

/// Earlier instances left a WAL of about 3 MB that no connection has open (as many short
/// `--once` instances, or a crash, leave it): 800 pages of a table of its own.
const FILL_THE_WAL: &str = r#"
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("PRAGMA wal_autocheckpoint=0")
con.execute("CREATE TABLE filler (x BLOB)")
con.execute("BEGIN")
for _ in range(800):
    con.execute("INSERT INTO filler VALUES (randomblob(4000))")
con.execute("COMMIT")
os._exit(0)  # no close: the last connection's close would copy the WAL back
"#;

#[test]
fn sigterm_while_the_store_copies_its_wal_back_with_every_record_written_does_not_wait_for_the_disk(
) {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "1h"
[tasks.a]
command = 'echo ran >> "$T/out"'
"#,
    );
    // A first instance runs the task once and is stopped in its cooldown: the next launch
    // carries the cooldown over and runs nothing at its start.
    let mut first = env.spawn(&["a"]);
    env.wait_lines_while(&mut first, "out", 1);
    env.wait_history("a", &[], "the first run is recorded ok", |runs| {
        runs.len() == 1 && runs[0]["outcome"] == "ok"
    });
    first.signal(libc::SIGTERM);
    first.assert_exit(0);

    let filled = env.finish_command({
        let mut c = env.command_for("python3");
        c.arg("-c").arg(FILL_THE_WAL).arg(env.db_path());
        c
    });
    assert_eq!(filled.code(), Some(0), "{}", filled.stderr);
    let wal = fs::metadata(env.path("run/runs.db-wal")).map_or(0, |m| m.len());
    assert!(wal > 3 << 20, "the WAL left behind is {wal} bytes");

    // The next instance opens the store alone and, after its first write, copies that
    // WAL back and cuts it; on this disk the copy's first fsync takes a minute.
    let so = build_preload_shim(&env, "slowsync", SHIM);
    let mut cmd = env.run_command(&["a"]);
    cmd.env("LD_PRELOAD", &so)
        .env("SLOW_FSYNC_MARK", env.path("fsync"));
    let mut second = env.spawn_command(cmd);
    second.wait_for("the store's checkpoint is in its fsync", || {
        env.path("fsync").exists()
    });
    second.signal(libc::SIGTERM);
    // Well before the minute: waiting for the copy would take it (assert_exit waits 30 s).
    second.assert_exit(0);
    assert_eq!(
        env.lines("out"),
        ["ran"],
        "the carried cooldown ran nothing"
    );

    // Nothing was lost or damaged: the store is whole, with the run and the filler, and
    // the second instance's own record (its instance row, written before the copy).
    assert_eq!(
        env.sql("PRAGMA integrity_check"),
        vec![vec![serde_json::json!("ok")]]
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM filler"),
        vec![vec![serde_json::json!(800)]]
    );
    assert_eq!(
        env.sql(&format!(
            "SELECT count(*) FROM instances WHERE pid = {}",
            second.pid
        )),
        vec![vec![serde_json::json!(1)]],
        "the second instance's first write is in the store"
    );
    let runs = env.history("a", &[]);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "ok");
}
