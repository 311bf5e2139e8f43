//! The control channel of a running chain: a Unix stream socket in RUN_ROOT, for
//! `run-now`, `kick` and `stop` (the request goes to the chain with who asked, the chain
//! answers).
//!
//! Why a socket: the request carries data (the task, who asked) and needs an answer (the
//! run id reserved, or why not), which a signal cannot carry; a FIFO has no per-client
//! reply. The listening socket is one more descriptor in the driver's one `ppoll` (no
//! thread, no polling); it is created close-on-exec (so no task inherits it), by the lock
//! holder only, after it has taken the lock; its file is made mode 0600 and every peer's
//! uid is checked (SO_PEERCRED) against ours.
//!
//! Where: `RUN_ROOT/CHAIN.ctl`. A Unix socket's path is limited to 108 bytes
//! (`sun_path`), which a long RUN_ROOT passes easily, so both sides reach it through an
//! `O_PATH` descriptor of RUN_ROOT, as `/proc/self/fd/N/NAME`: the kernel resolves the
//! directory through the descriptor, and the path stays short whatever RUN_ROOT is. (A
//! `chdir` would do too, but it is process-wide, and the chain has other threads.) A
//! chain name is up to 100 bytes, so a long one is shortened to its first 48 bytes, `~`
//! and a 64-bit hash of the whole name ([`socket_name`]).
//!
//! The protocol is one line each way: `run-now TASK BY`, `kick BY`, `stop BY` or
//! `stop-now BY` (tab-separated), and `accepted RUN_ID now|after` (run-now), `accepted`
//! (kick, stop) or `refused CODE MESSAGE`. (An older chain refuses `kick` and `stop` as
//! `bad-request`: the client then signals it, as before.) The chain reads the request with a short
//! receive timeout (a same-user client that connects and says nothing holds the loop for
//! at most [`READ_TIMEOUT`]) and answers only after CHAIN.state holds the request (so an
//! accepted request survives the chain's death and an upgrade).
//!
//! Races. A stale socket file (the holder crashed) is removed by the next holder before
//! it binds; until a holder has bound, a client gets ENOENT or ECONNREFUSED and tries
//! again until its deadline. During a hand-over the old holder is stopping and refuses
//! (`stopping`); the client says that a newer launch is taking over. A chain that exits
//! with a request in flight closes the connection: the client reads EOF and says so.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the chain waits for a connected client's request line.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// The longest request or answer line read.
const MAX_LINE: usize = 4096;

/// The socket's file name in RUN_ROOT for `chain`.
pub(crate) fn socket_name(chain: &str) -> String {
    if chain.len() <= 64 {
        return format!("{chain}.ctl");
    }
    // FNV-1a, 64 bits: stable across builds and hosts.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in chain.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Chain names are ASCII: any byte index is a char boundary.
    format!("{}~{h:016x}.ctl", &chain[..48])
}

/// The socket's path, for messages.
pub(crate) fn socket_path(run_root: &Path, chain: &str) -> PathBuf {
    run_root.join(socket_name(chain))
}

/// RUN_ROOT as an `O_PATH` descriptor, and the short path of `name` through it.
fn via_fd(run_root: &Path, name: &str) -> std::io::Result<(OwnedFd, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(run_root)?;
    let fd = OwnedFd::from(dir);
    let p = PathBuf::from(format!("/proc/self/fd/{}/{name}", fd.as_raw_fd()));
    Ok((fd, p))
}

/// The chain's listening end (the lock holder's).
#[derive(Debug)]
pub(crate) struct Listener {
    sock: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Listen on `RUN_ROOT/CHAIN.ctl`, removing a stale one first. Only the lock holder
    /// calls this.
    pub(crate) fn bind(run_root: &Path, chain: &str) -> std::io::Result<Listener> {
        let name = socket_name(chain);
        let (_dir, short) = via_fd(run_root, &name)?;
        match std::fs::remove_file(&short) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // std creates it close-on-exec.
        let sock = UnixListener::bind(&short)?;
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600))?;
        sock.set_nonblocking(true)?;
        Ok(Listener {
            sock,
            path: run_root.join(name),
        })
    }

    pub(crate) fn fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// A client that has connected, with its request read (None: nobody, or a request
    /// that could not be read, which is dropped).
    pub(crate) fn accept(&self) -> Option<(UnixStream, Request)> {
        let (mut conn, _) = self.sock.accept().ok()?;
        // The accepted socket is close-on-exec too (std uses accept4 with SOCK_CLOEXEC).
        if peer_uid(&conn) != Some(unsafe { libc::geteuid() }) {
            let _ = conn.write_all(b"refused denied not the chain's user\n");
            return None;
        }
        conn.set_nonblocking(false).ok()?;
        conn.set_read_timeout(Some(READ_TIMEOUT)).ok()?;
        conn.set_write_timeout(Some(READ_TIMEOUT)).ok()?;
        let line = read_line(&mut conn)?;
        match parse_request(&line) {
            Some(r) => Some((conn, r)),
            None => {
                let _ = conn.write_all(
                    b"refused bad-request expected: run-now TASK BY, kick BY or stop BY\n",
                );
                None
            }
        }
    }
}

impl Drop for Listener {
    /// The file goes with the holder (a stale one is removed by the next anyway).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn peer_uid(conn: &UnixStream) -> Option<u32> {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a ucred of the right size.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// One line (without its newline), at most MAX_LINE bytes; None on EOF first, an error
/// or a timeout.
fn read_line(conn: &mut UnixStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_LINE {
            return None;
        }
    }
    let end = buf.iter().position(|b| *b == b'\n')?;
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// A request to the chain, with who asked (`by`: "alice on pts/3", "web PEER").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `run-now TASK`.
    RunNow { task: String, by: String },
    /// `kick`: end the cooldown.
    Kick { by: String },
    /// `stop` (`now`: `stop --now`).
    Stop { now: bool, by: String },
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub(crate) fn request_line(r: &Request) -> String {
    match r {
        Request::RunNow { task, by } => format!("run-now\t{}\t{}\n", clean(task), clean(by)),
        Request::Kick { by } => format!("kick\t{}\n", clean(by)),
        Request::Stop { now, by } => format!(
            "{}\t{}\n",
            if *now { "stop-now" } else { "stop" },
            clean(by)
        ),
    }
}

pub(crate) fn parse_request(line: &str) -> Option<Request> {
    let mut it = line.splitn(3, '\t');
    match it.next()? {
        "run-now" => {
            let task = it.next()?.to_string();
            let by = it.next()?.to_string();
            (!task.is_empty()).then_some(Request::RunNow { task, by })
        }
        "kick" => Some(Request::Kick {
            by: it.next()?.to_string(),
        }),
        verb @ ("stop" | "stop-now") => Some(Request::Stop {
            now: verb == "stop-now",
            by: it.next()?.to_string(),
        }),
        _ => None,
    }
}

/// The chain's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A kick or a stop taken (`accepted`).
    Taken,
    Accepted {
        run_id: u64,
        at_once: bool,
    },
    /// (code, message): code is running, pending, stopping, once, unknown-task, ...
    Refused(String, String),
}

pub(crate) fn answer_line(a: &Answer) -> String {
    match a {
        Answer::Taken => "accepted\n".to_string(),
        Answer::Accepted { run_id, at_once } => format!(
            "accepted {run_id} {}\n",
            if *at_once { "now" } else { "after" }
        ),
        Answer::Refused(code, msg) => format!("refused {} {}\n", clean(code), clean(msg)),
    }
}

pub(crate) fn parse_answer(line: &str) -> Option<Answer> {
    let mut it = line.splitn(3, ' ');
    match it.next()? {
        "accepted" => {
            let Some(id) = it.next() else {
                return Some(Answer::Taken);
            };
            let run_id = id.parse().ok()?;
            let at_once = match it.next()? {
                "now" => true,
                "after" => false,
                _ => return None,
            };
            Some(Answer::Accepted { run_id, at_once })
        }
        "refused" => Some(Answer::Refused(
            it.next()?.to_string(),
            it.next().unwrap_or_default().to_string(),
        )),
        _ => None,
    }
}

/// What the client got.
#[derive(Debug)]
pub(crate) enum Asked {
    Answer(Answer),
    /// Nobody listens (yet): no socket file, or it refuses connections.
    NotListening(std::io::Error),
    /// The chain closed the connection without an answer (it exited).
    Closed,
    /// No answer within the deadline.
    TimedOut,
    /// Any other failure.
    Failed(std::io::Error),
}

/// Send `req` to the chain of `run_root` and wait up to `deadline` for the answer.
pub(crate) fn ask(run_root: &Path, chain: &str, req: &Request, deadline: Duration) -> Asked {
    let (_dir, short) = match via_fd(run_root, &socket_name(chain)) {
        Ok(x) => x,
        Err(e) => return Asked::Failed(e),
    };
    let mut conn = match UnixStream::connect(&short) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Asked::NotListening(e)
        }
        Err(e) => return Asked::Failed(e),
    };
    if let Err(e) = conn
        .set_read_timeout(Some(deadline))
        .and_then(|_| conn.set_write_timeout(Some(deadline)))
        .and_then(|_| conn.write_all(request_line(req).as_bytes()))
    {
        return Asked::Failed(e);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > MAX_LINE {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Asked::TimedOut
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Asked::Failed(e),
        }
    }
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return Asked::Closed;
    };
    match parse_answer(&String::from_utf8_lossy(&buf[..end])) {
        Some(a) => Asked::Answer(a),
        None => Asked::Failed(std::io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&buf[..end])
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_name_stays_short_for_long_chain_names() {
        assert_eq!(socket_name("a_b"), "a_b.ctl");
        let long = "x".repeat(100);
        let n = socket_name(&long);
        assert!(n.len() <= 70, "{n}");
        assert_ne!(n, socket_name(&"x".repeat(99)));
        // The path through the descriptor fits sun_path (108 bytes, with its NUL).
        assert!(format!("/proc/self/fd/{}/{n}", i32::MAX).len() < 108);
    }

    #[test]
    fn requests_and_answers_read_back() {
        for r in [
            Request::RunNow {
                task: "t".into(),
                by: "alice on pts/3".into(),
            },
            Request::Kick {
                by: "web 127.0.0.1:5000".into(),
            },
            Request::Stop {
                now: false,
                by: "bob (no tty)".into(),
            },
            Request::Stop {
                now: true,
                by: "bob\ton\npts/1".into(),
            },
        ] {
            let line = request_line(&r);
            let back = parse_request(line.trim_end()).expect("parsed");
            match (&r, &back) {
                (Request::Stop { now, .. }, Request::Stop { now: n, by }) => {
                    assert_eq!(now, n);
                    assert!(!by.contains(['\t', '\n']), "{by:?}");
                }
                _ => assert_eq!(back, r),
            }
        }
        for a in [
            Answer::Taken,
            Answer::Accepted {
                run_id: 7,
                at_once: true,
            },
            Answer::Accepted {
                run_id: 8,
                at_once: false,
            },
            Answer::Refused("running".into(), "task t is running now".into()),
        ] {
            assert_eq!(parse_answer(answer_line(&a).trim_end()), Some(a));
        }
        assert_eq!(parse_request("halt\tx"), None);
    }

    /// A RUN_ROOT far longer than sun_path allows: bind and connect still work.
    #[test]
    fn a_long_run_root_is_reached_through_its_descriptor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut root = dir.path().to_path_buf();
        for _ in 0..6 {
            root.push("a-rather-long-directory-name");
        }
        std::fs::create_dir_all(&root).expect("mkdir");
        assert!(root.join("c.ctl").as_os_str().len() > 108);
        let l = Listener::bind(&root, "c").expect("bind");
        let mode = std::fs::metadata(root.join("c.ctl"))
            .expect("socket file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let root2 = root.clone();
        let client = std::thread::spawn(move || {
            ask(
                &root2,
                "c",
                &Request::RunNow {
                    task: "t".into(),
                    by: "me".into(),
                },
                Duration::from_secs(10),
            )
        });
        // The listener is non-blocking: wait for the client in poll.
        let mut fds = [crate::sys::pollfd(l.fd(), libc::POLLIN)];
        crate::sys::ppoll(&mut fds, Some(Duration::from_secs(10))).expect("ppoll");
        let (mut conn, req) = l.accept().expect("a request");
        assert!(
            matches!(req, Request::RunNow { ref task, .. } if task == "t"),
            "{req:?}"
        );
        conn.write_all(
            answer_line(&Answer::Accepted {
                run_id: 3,
                at_once: true,
            })
            .as_bytes(),
        )
        .expect("answer");
        match client.join().expect("client") {
            Asked::Answer(Answer::Accepted { run_id: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        drop(l);
        assert!(!root.join("c.ctl").exists());
        match ask(
            &root,
            "c",
            &Request::RunNow {
                task: "t".into(),
                by: "me".into(),
            },
            Duration::from_secs(1),
        ) {
            Asked::NotListening(_) => {}
            other => panic!("{other:?}"),
        }
    }
}
