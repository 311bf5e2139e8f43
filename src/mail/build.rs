//! An alert as a message: RFC 5322 bytes with a Message-ID fixed when the alert was
//! decided (so that a mail sent twice is one mail to its reader). The wording is
//! [`crate::core::alert_mail`]'s.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::{Address, Message};

use crate::config::Email;
use crate::core::alert_mail::AlertMail;

fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// A Message-ID for an alert decided now.
pub(crate) fn message_id(a: &AlertMail) -> String {
    let mut rnd = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut rnd);
    }
    let r: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    let host: String = clean(&a.host)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .collect();
    let host = if host.is_empty() {
        "localhost".into()
    } else {
        host
    };
    format!("<{}.{}.{}.{}.{r}@{host}>", a.at_ms, a.chain, a.task, a.kind)
}

fn header(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), clean(value))
}

/// The sender and recipients of `email`.
pub(super) fn mailboxes(email: &Email, host: &str) -> Result<(Mailbox, Vec<Mailbox>), String> {
    let from_s = email
        .from
        .clone()
        .unwrap_or_else(|| format!("run-chain@{}", clean(host)));
    let from: Mailbox = from_s
        .parse::<Address>()
        .map(|a| Mailbox::new(Some("run-chain".into()), a))
        .map_err(|e| format!("email.from {from_s:?}: {e}"))?;
    let to = email
        .to
        .iter()
        .map(|t| {
            t.parse::<Address>()
                .map(|a| Mailbox::new(None, a))
                .map_err(|e| format!("email.to {t:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((from, to))
}

/// Build the mail of an alert. Task output only ever reaches the body, and lettre
/// encodes the body (quoted-printable or base64), so output cannot forge a header;
/// invalid UTF-8 is replaced, never passed on raw.
pub(crate) fn build(email: &Email, a: &AlertMail, message_id: &str) -> Result<Vec<u8>, String> {
    let (from, to) = mailboxes(email, &a.host)?;
    let subject = clean(&crate::core::alert_mail::subject(a));
    let body = crate::core::alert_mail::body(a);
    let mut b = Message::builder()
        .message_id(Some(message_id.to_string()))
        .from(from)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .raw_header(header("X-Run-Chain-Alert", &a.kind))
        .raw_header(header("X-Run-Chain-Task", &a.task))
        .raw_header(header("X-Run-Chain-Chain", &a.chain));
    for t in to {
        b = b.to(t);
    }
    b.body(body)
        .map(|m| m.formatted())
        .map_err(|e| format!("cannot build the alert mail: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsMode;

    fn email() -> Email {
        Email {
            to: vec!["admin@example.com".into()],
            from: Some("rc@example.com".into()),
            smtp: None,
            tls: TlsMode::Opportunistic,
            ca_file: None,
            password_file: None,
            password_env: None,
            sendmail: None,
            max_alerts_per_hour: 10,
        }
    }

    fn alert(output: &[u8]) -> AlertMail {
        AlertMail {
            kind: "first-failure".into(),
            chain: "c".into(),
            task: "t".into(),
            host: "h".into(),
            command: "python x.py".into(),
            run_id: Some(7),
            outcome: "failed (exit code 1)".into(),
            brief: "exit 1".into(),
            // As the driver takes it: the last non-empty line, hostile bytes and all.
            last_line: "oops\r\nBcc: victim@evil.example\r\n".into(),
            started: "2026-11-24T00:00:00Z".into(),
            duration: "1.0s".into(),
            streak_start: "2026-11-24T00:00:00Z".into(),
            streak_length: "1m".into(),
            streak_ms: 60_000,
            failures: 1,
            next_attempt: "in 30m".into(),
            output: output.to_vec(),
            output_bytes: output.len() as u64,
            at_ms: 1,
            ..Default::default()
        }
    }

    #[test]
    fn output_never_reaches_a_header() {
        let a = alert(b"oops\r\nBcc: victim@evil.example\r\n\r\nbad \xff\xfe bytes\n");
        let id = message_id(&a);
        let bytes = build(&email(), &a, &id).expect("build");
        let text = String::from_utf8(bytes).expect("the mail is ASCII/UTF-8");
        let (head, _body) = text.split_once("\r\n\r\n").expect("head and body");
        // Unfolded (RFC 5322 2.2.3): a folded line goes on the same header.
        let head = head.replace("\r\n ", " ");
        let names: Vec<String> = head
            .split("\r\n")
            .map(|l| l.split(':').next().unwrap_or("").to_ascii_lowercase())
            .collect();
        assert!(!names.iter().any(|n| n == "bcc"), "{head}");
        assert_eq!(
            names.iter().filter(|n| *n == "subject").count(),
            1,
            "{head}"
        );
        assert!(head.contains("X-Run-Chain-Alert: first-failure"), "{head}");
        assert!(head.contains("X-Run-Chain-Task: t"));
        assert!(head.contains("X-Run-Chain-Chain: c"));
        assert!(head.contains(&format!("Message-ID: {id}")), "{head}");
        assert!(
            head.contains(
                "Subject: [run-chain] h: t in chain c failed (exit 1: oops Bcc: victim@evil.example)"
            ),
            "{head}"
        );
    }
}
