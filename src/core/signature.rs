//! The signature of a failure: what makes two failures "the same error".
//!
//! It is the outcome (exit code, signal, timeout, spawn error) plus the last non-empty
//! line of output, normalised so that what varies between two runs of the same error
//! (numbers, hex ids, UUIDs, timestamps, temp file paths) does not make every failure
//! new. Pure string code, tested below.

/// Normalise one line of output.
pub(crate) fn normalise(line: &str) -> String {
    let mut words = Vec::new();
    for word in line.split_whitespace() {
        let bare = word.trim_matches(|c: char| "\"'()[]{}<>,;".contains(c));
        if bare.starts_with("/tmp/")
            || bare.starts_with("/var/tmp/")
            || bare.starts_with("/dev/shm/")
        {
            words.push(word.replace(bare, "<tmp>"));
            continue;
        }
        words.push(normalise_word(word));
    }
    words.join(" ")
}

/// Replace every run of letters and digits that holds a digit and is a number or a hex
/// string (a UUID's parts, a pointer, a commit id) by `<n>`; in other words keep the
/// letters and replace the digits.
fn normalise_word(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let chars: Vec<char> = word.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_alphanumeric() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let run: String = chars[start..i].iter().collect();
            let has_digit = run.chars().any(|c| c.is_ascii_digit());
            let hexish = run.chars().all(|c| c.is_ascii_hexdigit());
            let hex_prefixed = run.len() > 2
                && (run.starts_with("0x") || run.starts_with("0X"))
                && run[2..].chars().all(|c| c.is_ascii_hexdigit());
            if has_digit && (hexish || hex_prefixed) {
                out.push_str("<n>");
            } else if has_digit {
                // Letters with digits ("line42", "T02"): keep the letters.
                let mut in_digits = false;
                for c in run.chars() {
                    if c.is_ascii_digit() {
                        if !in_digits {
                            out.push_str("<n>");
                            in_digits = true;
                        }
                    } else {
                        in_digits = false;
                        out.push(c);
                    }
                }
            } else {
                out.push_str(&run);
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The signature of a failure: `outcome` (e.g. "failed (exit code 1)") and the last
/// non-empty line of output.
pub(crate) fn signature(outcome: &str, last_line: Option<&str>) -> String {
    let line = last_line.map(normalise).unwrap_or_default();
    let line: String = line.chars().take(300).collect();
    format!("{outcome}: {line}")
}

/// The outcome's part of a failure's signature: "exit code 3", "killed by SIGSEGV",
/// "could not start", else the outcome's label ("timeout", ...).
pub(crate) fn outcome_key(outcome: &crate::core::outcome::Outcome) -> String {
    use crate::core::outcome::{signal_name, Outcome};
    match outcome {
        Outcome::Failed(c) => format!("exit code {c}"),
        Outcome::Signal(s) => format!("killed by {}", signal_name(*s)),
        Outcome::SpawnError(_) => "could not start".to_string(),
        other => other.label().to_string(),
    }
}

/// The signature of a failed run: its outcome and its last line of output.
pub(crate) fn of_failure(outcome: &crate::core::outcome::Outcome, line: Option<&str>) -> String {
    signature(&outcome_key(outcome), line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outcome::Outcome;

    #[test]
    fn the_outcome_key_names_the_code_the_signal_or_the_label() {
        assert_eq!(outcome_key(&Outcome::Failed(3)), "exit code 3");
        assert_eq!(outcome_key(&Outcome::Signal(11)), "killed by SIGSEGV");
        assert_eq!(
            outcome_key(&Outcome::SpawnError("no such file".into())),
            "could not start"
        );
        assert_eq!(outcome_key(&Outcome::Timeout), Outcome::Timeout.label());
    }

    #[test]
    fn same_outcome_and_line_up_to_numbers_is_the_same_signature() {
        let a = of_failure(&Outcome::Failed(1), Some("job 17 failed"));
        let b = of_failure(&Outcome::Failed(1), Some("job 4711 failed"));
        let c = of_failure(&Outcome::Failed(2), Some("job 17 failed"));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn varying_parts_do_not_make_a_new_signature() {
        let a = normalise("2026-11-24T02:58:01.123Z ERROR job 4711 failed: id 550e8400-e29b-41d4-a716-446655440000 at 0x7ffd1234 in /tmp/tmpab12cd/x.py");
        let b = normalise("2026-11-25T13:07:44.999Z ERROR job 99 failed: id 123e4567-e89b-12d3-a456-426614174000 at 0x55aa00ff in /tmp/tmpzz99qq/x.py");
        assert_eq!(a, b);
        assert_eq!(
            normalise("ZeroDivisionError: division by zero"),
            "ZeroDivisionError: division by zero"
        );
        assert_ne!(
            normalise("ConnectionError: refused"),
            normalise("ZeroDivisionError: division by zero")
        );
        assert_eq!(normalise("retry 3 of 5"), normalise("retry 4 of 5"));
        assert_eq!(
            normalise("commit deadbeef12"),
            normalise("commit 0badc0de99")
        );
    }

    #[test]
    fn signature_includes_outcome() {
        assert_ne!(
            signature("failed (exit code 1)", Some("boom 1")),
            signature("failed (exit code 2)", Some("boom 1"))
        );
        assert_eq!(
            signature("failed (exit code 1)", Some("boom 1")),
            signature("failed (exit code 1)", Some("boom 2"))
        );
        assert_eq!(signature("timeout", None), "timeout: ");
    }
}
