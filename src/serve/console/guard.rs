//! The console's safety checks, as pure functions of a request's parts: which Host names
//! this server ([`host_allowed`]), whether a request carries the secret ([`basic_secret`],
//! [`cookie_value`], [`same_secret`]), whether a POST comes from the console's own pages
//! ([`same_origin`]), and the small parsers they need (forms, queries).
//!
//! Why each exists (SPEC.md, "The web console"): the Host check stops a DNS-rebinding page
//! (an attacker's name resolved to 127.0.0.1) from reading the console; the origin checks and
//! the per-start token stop another site's page from posting an action through the user's
//! browser; the secret keeps the pages of a console that listens beyond loopback to those
//! who have it. Secrets and tokens are compared in constant time.

use std::net::{IpAddr, SocketAddr};

/// Whether the Host header `host` names this server: a loopback name or address with the
/// server's port, the address the connection arrived on (`local`) with its port, or a name
/// of `allowed` (`--allow-host`, with any port: a reverse proxy in front may pass it on
/// without one). A missing Host names nothing.
pub(crate) fn host_allowed(
    host: Option<&str>,
    port: u16,
    local: Option<SocketAddr>,
    allowed: &[String],
) -> bool {
    let Some((name, host_port)) = host.and_then(split_host) else {
        return false;
    };
    let name = name.to_ascii_lowercase();
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(&name)) {
        return true;
    }
    // Without a port, the browser meant port 80.
    let port_ok = |want: u16| host_port.unwrap_or(80) == want;
    let ip: Option<IpAddr> = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(&name)
        .parse()
        .ok();
    if name == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
        return port_ok(port);
    }
    match (ip, local) {
        (Some(ip), Some(local)) => ip == local.ip() && port_ok(local.port()),
        _ => false,
    }
}

/// A Host header's name and port: `name`, `name:port`, `[v6]`, `[v6]:port`. None when it
/// is malformed (an empty name, a bad port, a space).
fn split_host(h: &str) -> Option<(&str, Option<u16>)> {
    let h = h.trim();
    if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
        return None;
    }
    let (name, port) = if h.starts_with('[') {
        let end = h.find(']')?;
        let (n, rest) = h.split_at(end + 1);
        match rest {
            "" => (n, None),
            r => (n, Some(r.strip_prefix(':')?)),
        }
    } else {
        match h.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') => (n, Some(p)),
            Some(_) => return None,
            None => (h, None),
        }
    };
    if name.is_empty() || name == "[]" {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((name, port))
}

/// Whether a POST may act, by the headers a browser sets: `Sec-Fetch-Site` absent or
/// `same-origin`, and `Origin` absent or this server's own (`http://` and the Host the
/// request named; `null`, sent by sandboxed and privacy-minded contexts, is refused).
pub(crate) fn same_origin(
    sec_fetch_site: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
) -> Result<(), &'static str> {
    if let Some(s) = sec_fetch_site {
        if !s.trim().eq_ignore_ascii_case("same-origin") {
            return Err("the request does not come from this console (Sec-Fetch-Site)");
        }
    }
    if let Some(o) = origin {
        let o = o.trim();
        let Some(host) = host else {
            return Err("the request has an Origin but no Host");
        };
        if o != format!("http://{}", host.trim()) && o != format!("https://{}", host.trim()) {
            return Err("the request comes from another origin (Origin)");
        }
    }
    Ok(())
}

/// Whether `a` and `b` are the same, taking as long for any two strings of a length.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    // Keep the compiler from ending the loop at the first difference.
    std::hint::black_box(diff) == 0
}

/// The password of an `Authorization: Basic` header (any user name).
pub(crate) fn basic_secret(authorization: &str) -> Option<Vec<u8>> {
    let (scheme, b64) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64_decode(b64.trim())?;
    let colon = raw.iter().position(|&c| c == b':')?;
    Some(raw[colon + 1..].to_vec())
}

/// Standard base64, padded or not; None when it is not base64.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The value of cookie `name` in a `Cookie` header.
pub(crate) fn cookie_value<'a>(cookie: &'a str, name: &str) -> Option<&'a str> {
    cookie.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The value of field `name` in an `application/x-www-form-urlencoded` body or a query.
pub(crate) fn form_value(form: &str, name: &str) -> Option<String> {
    form.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k)? == name).then(|| percent_decode(v))?
    })
}

/// `%XX` and `+` decoded; None when the result is not UTF-8 or an escape is bad.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(host: &str) -> bool {
        host_allowed(
            Some(host),
            9464,
            Some("192.0.2.7:9464".parse().unwrap()),
            &["console.example".to_string()],
        )
    }

    #[test]
    fn the_hosts_that_name_this_server() {
        for h in [
            "localhost:9464",
            "LOCALHOST:9464",
            "127.0.0.1:9464",
            "127.1.2.3:9464",
            "[::1]:9464",
            "192.0.2.7:9464",
            "console.example",
            "Console.Example:443",
        ] {
            assert!(ok(h), "{h}");
        }
        for h in [
            "",
            "localhost",
            "localhost:80",
            "localhost:9465",
            "127.0.0.1",
            "evil.example:9464",
            "localhost.evil.example:9464",
            "192.0.2.8:9464",
            "192.0.2.7:9465",
            "[::1]",
            "::1:9464",
            "localhost:9464 x",
            "user@localhost:9464",
            "localhost:x",
            ":9464",
        ] {
            assert!(!ok(h), "{h}");
        }
        assert!(!host_allowed(None, 9464, None, &[]));
        assert!(host_allowed(Some("localhost"), 80, None, &[]));
    }

    #[test]
    fn only_the_consoles_own_pages_may_post() {
        let h = Some("127.0.0.1:9464");
        assert!(same_origin(None, None, h).is_ok());
        assert!(same_origin(Some("same-origin"), Some("http://127.0.0.1:9464"), h).is_ok());
        assert!(same_origin(Some("cross-site"), None, h).is_err());
        assert!(same_origin(Some("same-site"), None, h).is_err());
        assert!(same_origin(Some("none"), None, h).is_err());
        assert!(same_origin(None, Some("null"), h).is_err());
        assert!(same_origin(None, Some("http://evil.example"), h).is_err());
        assert!(same_origin(None, Some("http://127.0.0.1:9465"), h).is_err());
        assert!(same_origin(None, Some("http://127.0.0.1:9464"), None).is_err());
    }

    #[test]
    fn secrets_from_basic_auth_and_cookies() {
        // "user:s3cr:et" and ":pw"
        assert_eq!(
            basic_secret("Basic dXNlcjpzM2NyOmV0"),
            Some(b"s3cr:et".to_vec())
        );
        assert_eq!(basic_secret("basic OnB3"), Some(b"pw".to_vec()));
        assert_eq!(basic_secret("Bearer OnB3"), None);
        assert_eq!(basic_secret("Basic !!"), None);
        assert_eq!(basic_secret("Basic dXNlcg=="), None); // no colon
        assert_eq!(cookie_value("a=1; rc=xyz; b=2", "rc"), Some("xyz"));
        assert_eq!(cookie_value("arc=1", "rc"), None);
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn form_fields() {
        assert_eq!(
            form_value("token=a%2Bb+c&now=1", "token").as_deref(),
            Some("a+b c")
        );
        assert_eq!(form_value("token=a&now=1", "now").as_deref(), Some("1"));
        assert_eq!(form_value("now", "now").as_deref(), Some(""));
        assert_eq!(form_value("token=%zz", "token"), None);
        assert_eq!(form_value("x=1", "token"), None);
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
