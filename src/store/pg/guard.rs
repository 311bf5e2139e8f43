//! `AuthGuard`: SCRAM only, unless the server is authenticated by verified TLS.
//!
//! tokio-postgres answers whatever authentication the server asks for, including
//! `AuthenticationCleartextPassword` (R, code 3) and `AuthenticationMD5Password` (R, code
//! 5): over a connection whose server is not authenticated, a man in the middle (or a
//! misconfigured pg_hba) would then receive the password, or a hash good enough to log in
//! with. libpq's `require_auth` refuses these; tokio-postgres 0.7.18 has no such setting. So
//! the stream under tokio-postgres is wrapped: the guard parses the backend's messages on
//! the read side (type byte, length, and for `R` the 4-byte code) and, on code 3 or 5,
//! returns an error *before* tokio-postgres sees the request, so that not one byte of
//! the password is ever written. Bytes of a message are handed on only once the guard has
//! seen enough of it to decide (a header is held back until it is complete: the server
//! may send it in pieces). After `AuthenticationOk` (R, code 0) the guard is a plain
//! pass-through: one flag test per read.
//!
//! SCRAM-SHA-256 (R, code 10, 11, 12) passes: it never discloses the password, and the
//! server proves that it knows the verifier. ErrorResponse, NegotiateProtocolVersion and
//! the rest pass unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The error payload of a refusal, found again by `conn` in tokio-postgres' error chain.
#[derive(Debug)]
pub(crate) struct Refusal(pub(crate) &'static str);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Refusal {}

/// The parser's state: what it knows of the message being read.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting a header: type + length, and for `R` the code (9 bytes).
    Header { buf: [u8; 9], have: usize },
    /// Inside a message's body: this many bytes to hand on; then, if `then_open`, the
    /// guard is done (the message was AuthenticationOk).
    Body { left: usize, then_open: bool },
    /// Authenticated: everything passes.
    Open,
    /// Refused: every later read fails again.
    Refused(&'static str),
}

/// The decision logic, on bytes: feed what was read, get what may be handed on.
#[derive(Debug)]
pub(crate) struct Parser {
    state: State,
}

const CLEARTEXT: &str = "the server asked for the password in clear text (AuthenticationCleartextPassword); without verified TLS run-chain answers only SCRAM-SHA-256 (set the role's password with password_encryption = 'scram-sha-256' and use scram-sha-256 in pg_hba.conf, or use tls = \"required\")";
const MD5: &str = "the server asked for an MD5 password hash (AuthenticationMD5Password); without verified TLS run-chain answers only SCRAM-SHA-256 (set the role's password with password_encryption = 'scram-sha-256' and use scram-sha-256 in pg_hba.conf, or use tls = \"required\")";

impl Parser {
    pub(crate) fn new() -> Parser {
        Parser {
            state: State::Header {
                buf: [0; 9],
                have: 0,
            },
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Feed `input`; append to `out` what may be handed on. An error: the server asked
    /// for something we refuse (nothing of that message is handed on).
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        while !input.is_empty() {
            match &mut self.state {
                State::Refused(why) => return Err(why),
                State::Open => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Body { left, then_open } => {
                    let n = (*left).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n;
                    if *left == 0 {
                        self.state = if *then_open {
                            State::Open
                        } else {
                            State::Header {
                                buf: [0; 9],
                                have: 0,
                            }
                        };
                    }
                }
                State::Header { buf, have } => {
                    buf[*have] = input[0];
                    *have += 1;
                    input = &input[1..];
                    if *have < 5 {
                        continue;
                    }
                    let ty = buf[0];
                    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                    let len = usize::try_from(len).unwrap_or(0);
                    if ty == b'R' && len >= 8 {
                        if *have < 9 {
                            continue;
                        }
                        let code = i32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
                        match code {
                            3 => {
                                self.state = State::Refused(CLEARTEXT);
                                return Err(CLEARTEXT);
                            }
                            5 => {
                                self.state = State::Refused(MD5);
                                return Err(MD5);
                            }
                            _ => {}
                        }
                        out.extend_from_slice(&buf[..9]);
                        let left = len - 8;
                        let then_open = code == 0;
                        self.state = if left == 0 {
                            if then_open {
                                State::Open
                            } else {
                                State::Header {
                                    buf: [0; 9],
                                    have: 0,
                                }
                            }
                        } else {
                            State::Body { left, then_open }
                        };
                    } else if len < 4 {
                        // Not the protocol: hand everything on, tokio-postgres reports it.
                        out.extend_from_slice(&buf[..5]);
                        self.state = State::Open;
                    } else {
                        out.extend_from_slice(&buf[..5]);
                        let left = len - 4;
                        self.state = if left == 0 {
                            State::Header {
                                buf: [0; 9],
                                have: 0,
                            }
                        } else {
                            State::Body {
                                left,
                                then_open: false,
                            }
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

/// A stream whose read side is checked by a [`Parser`] until authentication is done
/// (or not at all: `active = false`, with verified TLS).
pub(crate) struct AuthGuard<S> {
    inner: S,
    parser: Parser,
    /// Bytes read and cleared, not yet handed on.
    ready: Vec<u8>,
    pos: usize,
}

impl<S> AuthGuard<S> {
    pub(crate) fn new(inner: S, active: bool) -> AuthGuard<S> {
        let mut parser = Parser::new();
        if !active {
            parser.state = State::Open;
        }
        AuthGuard {
            inner,
            parser,
            ready: Vec::new(),
            pos: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.pos);
                buf.put_slice(&this.ready[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.ready.len() {
                    this.ready.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.parser.is_open() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if let State::Refused(why) = this.parser.state {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    Refusal(why),
                )));
            }
            let mut tmp = [0u8; 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let got = rb.filled();
            if got.is_empty() {
                // EOF: hand on a partial header (tokio-postgres reports the cut).
                if let State::Header { buf: h, have } = this.parser.state {
                    if have > 0 {
                        this.ready.extend_from_slice(&h[..have]);
                        this.parser.state = State::Open;
                        continue;
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if let Err(why) = this.parser.feed(got, &mut this.ready) {
                this.ready.clear();
                this.pos = 0;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    Refusal(why),
                )));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }
    fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(extra);
        msg(b'R', &b)
    }

    /// Feed `bytes` in pieces of `step`: what is handed on, and the first refusal.
    fn run(bytes: &[u8], step: usize) -> (Vec<u8>, Option<&'static str>) {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in bytes.chunks(step) {
            if let Err(e) = p.feed(c, &mut out) {
                return (out, Some(e));
            }
        }
        (out, None)
    }

    #[test]
    fn cleartext_and_md5_are_refused_before_anything_is_handed_on() {
        for step in [1, 2, 3, 5, 8, 9, 1000] {
            let (out, e) = run(&auth(3, b""), step);
            assert!(out.is_empty(), "step {step}");
            assert!(e.unwrap().contains("clear text"));
            let (out, e) = run(&auth(5, b"salt"), step);
            assert!(out.is_empty(), "step {step}");
            assert!(e.unwrap().contains("MD5"));
            // After a NoticeResponse: the notice passes, the request does not.
            let notice = msg(b'N', b"SNOTICE\0\0");
            let mut both = notice.clone();
            both.extend(auth(5, b"salt"));
            let (out, e) = run(&both, step);
            assert!(e.is_some());
            assert_eq!(out, notice, "step {step}");
        }
    }

    #[test]
    fn scram_then_ok_then_everything_passes() {
        let mut s = auth(10, b"SCRAM-SHA-256\0\0");
        s.extend(auth(11, b"r=abc,s=def,i=4096"));
        s.extend(auth(12, b"v=xyz"));
        s.extend(auth(0, b""));
        // After Ok, bytes that would look like a cleartext request pass (they are data).
        s.extend(auth(3, b""));
        s.extend(msg(b'Z', b"I"));
        for step in [1, 2, 4, 7, 9, 64, 10_000] {
            let (out, e) = run(&s, step);
            assert_eq!(e, None, "step {step}");
            assert_eq!(out, s, "step {step}");
        }
    }

    #[test]
    fn error_response_passes_through() {
        let e = msg(b'E', b"SFATAL\0C28P01\0Mpassword authentication failed\0\0");
        for step in [1, 3, 1000] {
            assert_eq!(run(&e, step), (e.clone(), None));
        }
        let v = msg(b'v', &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(run(&v, 1), (v.clone(), None));
    }

    /// The stream adapter: a reader that hands out one byte per read, and a writer that
    /// records everything: a refusal is an error with nothing read, and nothing written.
    #[test]
    fn guard_stream_refuses_with_one_byte_reads() {
        use tokio::io::AsyncReadExt as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        for (code, active, refused) in [(5, true, true), (3, true, true), (5, false, false)] {
            let bytes = auth(code, b"salt");
            let inner = tokio_test_reader(bytes.clone());
            let mut g = AuthGuard::new(inner, active);
            let mut got = Vec::new();
            let r = rt.block_on(g.read_to_end(&mut got));
            if refused {
                let e = r.expect_err("refused");
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
                assert!(e
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<Refusal>())
                    .is_some());
                assert!(got.is_empty());
            } else {
                r.expect("passes");
                assert_eq!(got, bytes);
            }
        }
    }

    /// tokio-postgres itself over the guard, against a peer that asks for a cleartext or
    /// MD5 password one byte at a time: with the guard active the client writes its startup
    /// message and nothing more (no PasswordMessage 'p'); inactive (the control), it answers
    /// with the password.
    #[test]
    fn tokio_postgres_over_the_guard_sends_no_password() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for (code, active) in [(3, true), (5, true), (3, false), (5, false)] {
            let (client, mut server) = tokio::io::duplex(64);
            let written = rt.block_on(async move {
                let peer = async move {
                    // The startup message: length, then that many bytes less 4.
                    let mut len = [0u8; 4];
                    server.read_exact(&mut len).await.expect("startup length");
                    let mut rest = vec![0u8; i32::from_be_bytes(len) as usize - 4];
                    server.read_exact(&mut rest).await.expect("startup");
                    for b in auth(code, if code == 5 { b"salt" } else { b"" }) {
                        if server.write_all(&[b]).await.is_err() {
                            break;
                        }
                    }
                    // What comes next: EOF (the client gave up), or its answer.
                    let mut after = vec![0u8; 256];
                    let n = server.read(&mut after).await.unwrap_or(0);
                    after.truncate(n);
                    after
                };
                let client = async move {
                    let mut cfg = tokio_postgres::Config::new();
                    cfg.user("u").dbname("d").password("hunter2");
                    let r = cfg
                        .connect_raw(AuthGuard::new(client, active), tokio_postgres::NoTls)
                        .await;
                    // Dropping the connection closes our half: the peer's read ends.
                    r.map(|_| ()).map_err(|e| e.to_string())
                };
                let peer = tokio::spawn(peer);
                let r = client.await;
                (peer.await.expect("peer"), r)
            });
            let (after, r) = written;
            assert!(r.is_err(), "code {code} active {active}: {r:?}");
            if active {
                assert!(after.is_empty(), "code {code}: the client wrote {after:?}");
            } else {
                assert_eq!(
                    after.first(),
                    Some(&b'p'),
                    "code {code}: control: {after:?}"
                );
            }
        }
    }

    /// One byte per read.
    fn tokio_test_reader(bytes: Vec<u8>) -> OneByte {
        OneByte { bytes, pos: 0 }
    }
    struct OneByte {
        bytes: Vec<u8>,
        pos: usize,
    }
    impl AsyncRead for OneByte {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.pos < this.bytes.len() {
                buf.put_slice(&this.bytes[this.pos..this.pos + 1]);
                this.pos += 1;
            }
            Poll::Ready(Ok(()))
        }
    }
}
