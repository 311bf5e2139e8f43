//! A network namespace of the test's own, joined to the host by a veth pair: the host side is
//! 10.231.N.1/30, the inside 10.231.N.2/30 (plus the namespace's loopback). `cut()` drops all
//! traffic to and from the host side with nftables rules INSIDE the namespace (so the host's
//! own firewall is never touched); `heal()` deletes them. Names carry the test's pid
//! (`rct-PID-N` for the namespace, `rcPIDhN`/`rcPIDpN` for the veth ends); `Drop` deletes them,
//! and leftovers of a test binary that died are removed (by prefix, when their pid is gone) the
//! next time one is made. Needs root (fails, never skips, otherwise).

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip(8) (iproute2)")
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Deletes namespaces `rct-PID-N` and links `rcPID[hp]N` whose PID is not alive.
fn remove_leftovers() {
    if let Ok(rd) = fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("rct-") else {
                continue;
            };
            if let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) {
                if !pid_alive(pid) {
                    let _ = ip(&["netns", "delete", &name]);
                }
            }
        }
    }
    if let Ok(rd) = fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("rc") else {
                continue;
            };
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            let tail = &rest[digits.len()..];
            if digits.is_empty() || !(tail.starts_with('h') || tail.starts_with('p')) {
                continue;
            }
            if let Ok(pid) = digits.parse::<i32>() {
                if !pid_alive(pid) {
                    let _ = ip(&["link", "delete", &name]);
                }
            }
        }
    }
}

/// The third octet N of 10.231.N.0/30 not in use on this machine (a process-wide lock, and a
/// look at the addresses of every interface against other test binaries).
fn free_subnet() -> u8 {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = ip(&["-o", "-4", "addr", "show"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = std::process::id();
    // Start at a pid-dependent place so that parallel binaries rarely try the same N.
    for i in 0..250u32 {
        let n = ((pid + i) % 250 + 1) as u8;
        if !text.contains(&format!("10.231.{n}.")) {
            return n;
        }
    }
    panic!("no free 10.231.N.0/30 subnet");
}

pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub peer_if: String,
    pub n: u8,
    cut: Mutex<bool>,
}

impl Netns {
    /// Creates the namespace and its veth pair, addresses up, loopback up.
    pub fn new() -> Netns {
        // SAFETY: no arguments.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test needs root (network namespaces, veth pairs, nftables); it runs as uid \
             {euid}: run the suite as root"
        );
        // Until the address is up: two tests of one binary must not pick the same N.
        static NEW: Mutex<()> = Mutex::new(());
        let _g = NEW.lock().unwrap_or_else(|e| e.into_inner());
        remove_leftovers();
        let pid = std::process::id();
        let n = free_subnet();
        let ns = Netns {
            name: format!("rct-{pid}-{n}"),
            host_if: format!("rc{pid}h{n}"),
            peer_if: format!("rc{pid}p{n}"),
            n,
            cut: Mutex::new(false),
        };
        assert!(ns.host_if.len() <= 15, "interface name too long");
        ip_ok(&["netns", "add", &ns.name]);
        ip_ok(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.peer_if,
        ]);
        ip_ok(&["link", "set", &ns.peer_if, "netns", &ns.name]);
        ip_ok(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_addr()),
            "dev",
            &ns.host_if,
        ]);
        ip_ok(&["link", "set", &ns.host_if, "up"]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.inside_addr()),
            "dev",
            &ns.peer_if,
        ]);
        ns.exec_ok(&["ip", "link", "set", &ns.peer_if, "up"]);
        ns
    }

    /// The host side's address (where servers of the test listen): 10.231.N.1.
    pub fn host_addr(&self) -> String {
        format!("10.231.{}.1", self.n)
    }

    /// The address inside the namespace: 10.231.N.2.
    pub fn inside_addr(&self) -> String {
        format!("10.231.{}.2", self.n)
    }

    /// `ip netns exec NAME PROGRAM`: a command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn exec_ok(&self, argv: &[&str]) {
        let out = self
            .command(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "ip netns exec {} {} failed: {}",
            self.name,
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Drops every packet to and from the host side, inside the namespace (nftables table
    /// `inet rct`): connections hang, as across a partition.
    pub fn cut(&self) {
        let rules = format!(
            "table inet rct {{\n\
             \x20 chain o {{ type filter hook output priority 0; policy accept; ip daddr {h} drop; }}\n\
             \x20 chain i {{ type filter hook input priority 0; policy accept; ip saddr {h} drop; }}\n\
             }}\n",
            h = self.host_addr()
        );
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft inside the namespace (Debian's nftables; scripts/test installs it)");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("nft stdin");
            stdin.write_all(rules.as_bytes()).expect("write nft rules");
        }
        let out = child.wait_with_output().expect("wait for nft");
        assert!(
            out.status.success(),
            "nft -f - in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        *self.cut.lock().unwrap() = true;
    }

    /// Deletes the rules of `cut()`.
    pub fn heal(&self) {
        self.exec_ok(&["nft", "delete", "table", "inet", "rct"]);
        *self.cut.lock().unwrap() = false;
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.lock().unwrap()
    }

    /// Whether the namespace exists (for tests of Drop).
    pub fn exists(name: &str) -> bool {
        Path::new("/run/netns").join(name).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the host side.
        let _ = ip(&["netns", "delete", &self.name]);
        let _ = ip(&["link", "delete", &self.host_if]);
    }
}
