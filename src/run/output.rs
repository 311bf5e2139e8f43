//! A run's output: passed through to run-chain's own stdout and stderr chunk by chunk,
//! while the last `keep_output` bytes are kept in a bounded tail.
//!
//! The task writes into two pipes; the driver reads them in its one loop. A chunk read
//! is written straight on to run-chain's matching stream. When that stream would block
//! (a full pipe, a stopped terminal), the chunk waits in the sink and the task's pipe
//! is not read again until the sink has drained: the task then feels exactly the
//! back-pressure it would have felt writing there itself, and run-chain adds none of
//! its own and never buffers more than one pipe's worth. Regular files and /dev/null
//! never block, so they are written at once in bigger chunks.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::core::supervisor::RunOutput;
use crate::sys;

/// The last `cap` bytes of a run's output (both streams, in the order read).
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    total: u64,
}

impl Tail {
    pub(crate) fn new(cap: usize) -> Tail {
        Tail {
            buf: VecDeque::with_capacity(cap.min(64 * 1024)),
            cap,
            total: 0,
        }
    }

    /// Empty, for a new run that keeps `cap` bytes (the buffer is kept: a new one per
    /// run was a large allocation and free per run).
    pub(crate) fn reset(&mut self, cap: usize) {
        self.buf.clear();
        if self.buf.capacity() > cap.min(64 * 1024) * 2 {
            self.buf.shrink_to(cap.min(64 * 1024));
        }
        self.cap = cap;
        self.total = 0;
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if self.cap == 0 {
            return;
        }
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend(&data[data.len() - self.cap..]);
            return;
        }
        let over = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..over);
        self.buf.extend(data);
    }

    /// The kept bytes.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }

    /// All bytes ever pushed.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// True if older output was dropped.
    pub(crate) fn cut(&self) -> bool {
        self.total > self.buf.len() as u64
    }

    /// The last non-empty line of the kept output, lossily decoded.
    pub(crate) fn last_line(&self) -> Option<String> {
        let bytes = self.bytes();
        let text = String::from_utf8_lossy(&bytes);
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    }
}

/// One of run-chain's own output streams (fd 1 or 2).
#[derive(Debug)]
pub(crate) struct Sink {
    fd: RawFd,
    /// Writes to it never block (a regular file, /dev/null).
    never_blocks: bool,
    /// Waiting to be written.
    pending: Vec<u8>,
    /// The stream is gone (EPIPE, EBADF): output is only kept, not passed on.
    dead: bool,
}

/// The run's output, as the supervisor reads it when a run fails (and the store, at
/// its end).
impl RunOutput for Tail {
    fn last_line(&self) -> Option<String> {
        Tail::last_line(self)
    }
    fn bytes(&self) -> Vec<u8> {
        Tail::bytes(self)
    }
    fn total(&self) -> u64 {
        Tail::total(self)
    }
    fn cut(&self) -> bool {
        Tail::cut(self)
    }
}

/// How much to read from a task at a time when the sink may block: what one POLLOUT
/// on a pipe guarantees can be written without blocking.
const SMALL_CHUNK: usize = 4096;
const BIG_CHUNK: usize = 64 * 1024;

impl Sink {
    pub(crate) fn new(fd: RawFd) -> Sink {
        let st = nix::sys::stat::fstat(fd);
        let ok = st.is_ok();
        let kind = st.map_or(0, |st| st.st_mode & libc::S_IFMT);
        let tty = matches!(nix::unistd::isatty(fd), Ok(true));
        let never_blocks = ok && (kind == libc::S_IFREG || (kind == libc::S_IFCHR && !tty));
        Sink {
            fd,
            never_blocks,
            pending: Vec::new(),
            dead: !ok,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    fn chunk(&self) -> usize {
        if self.never_blocks || self.dead {
            BIG_CHUNK
        } else {
            SMALL_CHUNK
        }
    }

    /// True if a source may read more for this sink now.
    pub(crate) fn ready(&self) -> bool {
        self.pending.is_empty()
    }

    /// True if the driver must poll this sink for POLLOUT.
    pub(crate) fn wants_pollout(&self) -> bool {
        !self.pending.is_empty() && !self.dead
    }

    fn writable_now(&self) -> bool {
        if self.never_blocks {
            return true;
        }
        let mut p = [sys::pollfd(self.fd, libc::POLLOUT)];
        matches!(sys::ppoll(&mut p, Some(std::time::Duration::ZERO)), Ok(1))
            && p[0].revents & libc::POLLOUT != 0
    }

    /// Pass `data` on, or keep it pending if the stream would block.
    pub(crate) fn offer(&mut self, data: &[u8]) {
        if self.dead {
            return;
        }
        self.pending.extend_from_slice(data);
        self.flush();
    }

    /// Write what is pending, as far as the stream takes it without blocking.
    pub(crate) fn flush(&mut self) {
        while !self.pending.is_empty() && !self.dead {
            if !self.writable_now() {
                return;
            }
            let n = self.pending.len().min(if self.never_blocks {
                usize::MAX
            } else {
                SMALL_CHUNK
            });
            match sys::write(self.fd, &self.pending[..n]) {
                Ok(0) => return,
                Ok(w) => {
                    self.pending.drain(..w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.dead = true;
                    self.pending.clear();
                }
            }
        }
        if self.dead {
            self.pending.clear();
        }
    }
}

/// One of the task's output pipes.
#[derive(Debug)]
pub(crate) struct Source {
    fd: Option<OwnedFd>,
    /// 0: stdout, 1: stderr.
    pub(crate) sink: usize,
}

impl Source {
    /// A source whose descriptor is already non-blocking.
    pub(crate) fn nonblocking(fd: OwnedFd, sink: usize) -> Source {
        Source { fd: Some(fd), sink }
    }

    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The descriptor, if still open (the source is closed then).
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    /// Read what is there (one chunk, or everything with `all`) into the tail and the
    /// sink. Closes the source at end of file.
    pub(crate) fn pump(&mut self, sinks: &mut [Sink; 2], tail: &mut Tail, all: bool) {
        let Some(fd) = self.fd() else { return };
        let sink = &mut sinks[self.sink];
        thread_local! {
            // One read buffer, kept: allocating (and zeroing) 64 KiB per read showed in
            // the loop rate of a chain of short tasks.
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < BIG_CHUNK {
                b.resize(BIG_CHUNK, 0);
            }
            self.pump_with(fd, sink, tail, all, &mut b[..sink.chunk()]);
        });
    }

    fn pump_with(
        &mut self,
        fd: RawFd,
        sink: &mut Sink,
        tail: &mut Tail,
        all: bool,
        buf: &mut [u8],
    ) {
        loop {
            if !all && !sink.ready() {
                return;
            }
            match sys::read(fd, buf) {
                Ok(0) => {
                    self.fd = None;
                    return;
                }
                Ok(n) => {
                    tail.push(&buf[..n]);
                    sink.offer(&buf[..n]);
                    if !all {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.fd = None;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(8);
        t.push(b"hello ");
        t.push(b"world\n");
        assert_eq!(t.bytes(), b"o world\n".to_vec());
        assert!(t.cut());
        assert_eq!(t.total(), 12);
        t.push(&[b'x'; 100]);
        assert_eq!(t.bytes(), vec![b'x'; 8]);
        let mut t = Tail::new(100);
        t.push(b"first\nlast line  \n\n");
        assert_eq!(t.last_line().as_deref(), Some("last line"));
        assert!(!t.cut());
    }
}
