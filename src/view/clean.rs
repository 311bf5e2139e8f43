//! Task output made fit to show: what a task prints is hostile data (dkron#921 was an XSS
//! through a job's output). [`clean`] turns bytes into plain text: invalid UTF-8 becomes
//! U+FFFD, terminal escape sequences (ANSI CSI colours, OSC titles and OSC-8 links, DCS and
//! the other strings, two-byte escapes) are removed, and so are control characters other
//! than newline and tab (NUL, CR, BEL, backspace, DEL, the C1 range) and the bidirectional
//! overrides that make a line read otherwise than it is. What is left is text: the HTML
//! templates escape it, and the console's script inserts it with `textContent`.
//!
//! [`clean_prefix`] does the same for a piece of a growing output (the live tail): it stops
//! before an escape sequence or a UTF-8 character cut at the end of what was written so far,
//! and says how many bytes it used, so that the next piece starts there.

/// The longest escape string (OSC, DCS, ...) waited for; a longer one is shown as text
/// after its introducer, so that a stray `ESC ]` cannot hide the rest of the output.
const MAX_STRING: usize = 4096;

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;

/// `bytes` as plain text (see the module's doc).
#[cfg(test)]
pub(crate) fn clean(bytes: &[u8]) -> String {
    clean_prefix(bytes, true).0
}

/// `bytes` as plain text, and how many of them were used: all, when `complete`; else up to
/// an escape sequence or a UTF-8 character that is cut at the end (to be read again with
/// what follows).
pub(crate) fn clean_prefix(bytes: &[u8], complete: bool) -> (String, usize) {
    let mut kept: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut used = bytes.len();
    while i < bytes.len() {
        let b = bytes[i];
        if b == ESC {
            match escape_len(&bytes[i..]) {
                Esc::Len(n) => {
                    i += n;
                    continue;
                }
                Esc::Cut if !complete => {
                    used = i;
                    break;
                }
                // Cut at the end of a complete output: a string's introducer goes (what
                // follows it is shown: it may be long), any other sequence goes whole.
                Esc::Cut => {
                    i = match bytes.get(i + 1) {
                        Some(b']' | b'P' | b'X' | b'^' | b'_') => i + 2,
                        _ => bytes.len(),
                    };
                    continue;
                }
                // Not a sequence: the ESC alone goes.
                Esc::Bare => {
                    i += 1;
                    continue;
                }
            }
        }
        if b < 0x20 && b != b'\n' && b != b'\t' || b == 0x7f {
            i += 1;
            continue;
        }
        kept.push(b);
        i += 1;
    }
    if !complete && used == bytes.len() {
        // A UTF-8 character cut at the end waits for its rest.
        let cut = cut_utf8_tail(&kept);
        used -= cut;
        kept.truncate(kept.len() - cut);
    }
    let text: String = String::from_utf8_lossy(&kept)
        .chars()
        .filter(|&c| !is_hidden(c))
        .collect();
    (text, used)
}

/// Characters removed from the text: the C1 controls and the bidirectional overrides and
/// isolates.
fn is_hidden(c: char) -> bool {
    matches!(c, '\u{80}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// How many bytes at the end of `b` are the start of a UTF-8 character whose rest is
/// missing (0 to 3).
fn cut_utf8_tail(b: &[u8]) -> usize {
    for back in 1..=b.len().min(3) {
        let c = b[b.len() - back];
        if c & 0xc0 == 0x80 {
            continue; // a continuation byte: look further back for the lead
        }
        let need = match c {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

/// What starts at an ESC.
#[derive(Debug, PartialEq, Eq)]
enum Esc {
    /// A whole sequence of this many bytes.
    Len(usize),
    /// A sequence cut by the end of the bytes.
    Cut,
    /// Not a sequence: the ESC alone.
    Bare,
}

/// The escape sequence at the start of `b` (which starts with ESC).
fn escape_len(b: &[u8]) -> Esc {
    let Some(&kind) = b.get(1) else {
        return Esc::Cut;
    };
    match kind {
        // CSI: parameters 0x30-0x3f, intermediates 0x20-0x2f, a final byte 0x40-0x7e.
        b'[' => {
            for (j, &c) in b.iter().enumerate().skip(2) {
                match c {
                    0x20..=0x3f => continue,
                    0x40..=0x7e => return Esc::Len(j + 1),
                    // Not a CSI after all: drop what was read of it.
                    _ => return Esc::Len(j),
                }
            }
            Esc::Cut
        }
        // OSC, DCS, SOS, PM, APC: a string ended by ST (ESC \) or, for OSC, BEL.
        b']' | b'P' | b'X' | b'^' | b'_' => {
            let mut j = 2;
            while j < b.len() {
                if j > MAX_STRING {
                    return Esc::Len(2);
                }
                match b[j] {
                    BEL => return Esc::Len(j + 1),
                    ESC => {
                        return match b.get(j + 1) {
                            Some(b'\\') => Esc::Len(j + 2),
                            Some(_) => Esc::Len(j),
                            None => Esc::Cut,
                        }
                    }
                    _ => j += 1,
                }
            }
            Esc::Cut
        }
        // nF: intermediates 0x20-0x2f, then a final byte 0x30-0x7e.
        0x20..=0x2f => {
            for (j, &c) in b.iter().enumerate().skip(2) {
                match c {
                    0x20..=0x2f => continue,
                    0x30..=0x7e => return Esc::Len(j + 1),
                    _ => return Esc::Len(j),
                }
            }
            Esc::Cut
        }
        // Fp, Fe, Fs: ESC and one byte (ESC 7, ESC c, ESC M, ...).
        0x30..=0x7e => Esc::Len(2),
        _ => Esc::Bare,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_links_titles_and_controls_go_text_stays() {
        let raw = b"\x1b[1;31mred\x1b[0m \x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\ \x1b]0;title\x07t\x00a\rb\x08c\x7fd\te\n";
        assert_eq!(clean(raw), "red link tabcd\te\n");
        assert_eq!(clean(b"\x1bPdcs\x1b\\x\x1b7y\x1b(Bz"), "xyz");
        assert_eq!(clean("a\u{202e}b\u{85}c\u{2066}d".as_bytes()), "abcd");
    }

    #[test]
    fn markup_is_left_as_text_for_the_templates_to_escape() {
        let raw = b"</pre><script>alert(1)</script><img src=x onerror=alert(2)>";
        assert_eq!(clean(raw).as_bytes(), raw);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(clean(b"a\xff\xfeb\xc3\xa9"), "a\u{fffd}\u{fffd}b\u{e9}");
        // A cut character at the end of a complete output is shown as one.
        assert_eq!(clean(b"x\xe2\x82"), "x\u{fffd}");
    }

    #[test]
    fn a_stray_escape_does_not_hide_the_rest() {
        assert_eq!(clean(b"a\x1b"), "a");
        assert_eq!(clean(b"a\x1b]unterminated title"), "aunterminated title");
        let mut long = b"\x1b]".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_STRING + 10));
        long.extend(b"\x07end");
        let c = clean(&long);
        assert!(c.starts_with("xxx") && c.ends_with("end"), "{}", &c[..10]);
        assert_eq!(clean(b"\x1b[12;\x01x"), "x");
    }

    #[test]
    fn a_prefix_stops_before_what_is_cut() {
        assert_eq!(clean_prefix(b"ab\x1b[3", false), ("ab".into(), 2));
        assert_eq!(clean_prefix(b"ab\x1b]8;;http", false), ("ab".into(), 2));
        assert_eq!(clean_prefix(b"ab\x1b", false), ("ab".into(), 2));
        assert_eq!(clean_prefix(b"ab\xe2\x82", false), ("ab".into(), 2));
        assert_eq!(
            clean_prefix(b"ab\xe2\x82\xac", false),
            ("ab\u{20ac}".into(), 5)
        );
        assert_eq!(clean_prefix(b"ab\x1b[3mc", false), ("abc".into(), 7));
        // The rest, read again from where the prefix stopped, joins up.
        let all = b"one\x1b[31mtwo\xe2\x82\xac\x1b]0;t\x07three";
        for cut in 0..=all.len() {
            let (a, used) = clean_prefix(&all[..cut], false);
            assert!(used <= cut);
            let (b, _) = clean_prefix(&all[used..], true);
            assert_eq!(a + &b, "onetwo\u{20ac}three", "cut at {cut}");
        }
    }
}
