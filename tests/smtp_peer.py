#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) on 127.0.0.1 for run-chain's alert tests (tests/alerts.rs).

It listens on --port (0: a free one), prints the port on stdout as one line, then serves
until it is killed. Everything it sees goes to --log as JSON lines, one per event, each
written whole with one write (a reader that keeps only complete lines never sees half an
event):

  {"event": "auth", "login": "alice", "ok": true, "t": ...}
  {"event": "rcpt", "to": "...", "reply": "550 ..."}               (only rejected RCPTs)
  {"event": "rejected", "reply": "451 ...", "message_id": ..., "alert": ..., "t": ...}
  {"event": "message", "n": 1, "t": ..., "mail_from": ..., "rcpt_tos": [...],
   "tls": true, "auth": "alice" | null, "message_id": ..., "alert": ...,
   "headers": [[name, value], ...], "body": "...", "body_utf8": true, "file": ".../1.eml"}
  {"event": "connect"} / {"event": "close"}                        (--blackhole)

Accepted messages are also stored raw in --maildir as N.eml. The password that --auth-user
must give is read from --auth-password-file and never written anywhere.

Modes:
  --blackhole                 accept connections and never answer (nor close them)
  --tls-cert/--tls-key        offer STARTTLS; with --require-starttls, nothing before it
  --auth-user/--auth-password-file   offer AUTH and require it
  --data-reply 'CODE TEXT'    answer the first DATAs with these replies (repeatable, in
                              order); every later DATA is accepted (250)
  --data-always 'CODE TEXT'   answer every DATA with this reply
  --rcpt-always 'CODE TEXT'   answer every RCPT TO with this reply
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import re
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--maildir")
    ap.add_argument("--blackhole", action="store_true")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--require-starttls", action="store_true")
    ap.add_argument("--auth-user")
    ap.add_argument("--auth-password-file")
    ap.add_argument("--data-reply", action="append", default=[])
    ap.add_argument("--data-always")
    ap.add_argument("--rcpt-always")
    args = ap.parse_args()

    log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def log(**event):
        event.setdefault("t", time.time())
        line = (json.dumps(event) + "\n").encode()
        os.write(log_fd, line)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    if args.blackhole:
        open_transports = []

        class Blackhole(asyncio.Protocol):
            def connection_made(self, transport):
                open_transports.append(transport)
                log(event="connect")

            def data_received(self, data):
                pass  # never answer

            def connection_lost(self, exc):
                log(event="close")

        factory = Blackhole
    else:
        if args.maildir:
            os.makedirs(args.maildir, exist_ok=True)
        password = None
        if args.auth_password_file:
            with open(args.auth_password_file, "rb") as f:
                password = f.read().rstrip(b"\r\n")
        data_replies = list(args.data_reply)
        count = {"n": 0}

        def authenticator(server, session, envelope, mechanism, auth_data):
            if not isinstance(auth_data, LoginPassword):
                log(event="auth", login=None, ok=False, mechanism=mechanism)
                return AuthResult(success=False, handled=False)
            login = auth_data.login.decode("utf-8", "replace")
            ok = login == args.auth_user and auth_data.password == password
            log(event="auth", login=login, ok=ok, mechanism=mechanism)
            return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

        def summary(raw):
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            payload = msg.get_payload(decode=True) or b""
            charset = msg.get_content_charset() or "utf-8"
            try:
                body = payload.decode(charset)
                body_utf8 = True
            except (UnicodeDecodeError, LookupError):
                body = payload.decode("utf-8", "replace")
                body_utf8 = False
            return {
                "message_id": msg.get("Message-ID"),
                "alert": msg.get("X-Run-Chain-Alert"),
                # Unfolded (RFC 5322 2.2.3): a folded line break is not part of the value.
                "headers": [[k, re.sub(r"\r?\n(?=[ \t])", "", str(v))] for k, v in msg.items()],
                "body": body,
                "body_utf8": body_utf8,
            }

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if args.rcpt_always:
                    log(event="rcpt", to=address, reply=args.rcpt_always)
                    return args.rcpt_always
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                raw = envelope.original_content or envelope.content
                if isinstance(raw, str):
                    raw = raw.encode("utf-8", "surrogateescape")
                info = summary(raw)
                reply = args.data_always or (data_replies.pop(0) if data_replies else None)
                if reply:
                    log(event="rejected", reply=reply, message_id=info["message_id"],
                        alert=info["alert"])
                    return reply
                count["n"] += 1
                n = count["n"]
                path = None
                if args.maildir:
                    path = os.path.join(args.maildir, "%d.eml" % n)
                    tmp = path + ".tmp"
                    with open(tmp, "wb") as f:
                        f.write(raw)
                    os.rename(tmp, path)
                log(event="message", n=n, mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos), tls=session.ssl is not None,
                    auth=session.auth_data if session.authenticated else None,
                    file=path, **info)
                return "250 2.0.0 Message accepted for delivery"

        tls_context = None
        if args.tls_cert:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_context.load_cert_chain(args.tls_cert, args.tls_key)

        def factory():
            kw = {}
            if args.auth_user:
                kw.update(authenticator=authenticator, auth_required=True,
                          auth_require_tls=tls_context is not None)
            return SMTP(Handler(), hostname="smtp-peer.test", tls_context=tls_context,
                        require_starttls=args.require_starttls, loop=loop, **kw)

    server = loop.run_until_complete(loop.create_server(factory, host="127.0.0.1",
                                                        port=args.port))
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write("%d\n" % port)
    sys.stdout.flush()
    loop.run_forever()


if __name__ == "__main__":
    main()
