//! `auth::Users::parse`, the `--users` file parser, over arbitrary text.
//!
//! The file is written by an operator, not a peer, but it is parsed at start and a malformed
//! one must stop the server with a message, never a panic. Checks:
//! - an error names a line that exists (1-based), and its message starts `line N: `;
//! - a file that parses holds at most one user per non-blank, non-comment line, and parsing
//!   it again gives the same count (the parser is deterministic).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_reactor::auth::Users;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.split('\n').count();
    match Users::parse(&text) {
        Err(error) => {
            assert!(
                (1..=lines).contains(&error.line),
                "line {} of {lines}",
                error.line
            );
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("line {}: ", error.line)),
                "{message}"
            );
        }
        Ok(users) => {
            let entries = text
                .split('\n')
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .count();
            assert!(
                users.len() <= entries,
                "{} users from {entries} lines",
                users.len()
            );
            let again = Users::parse(&text).expect("parsed once, parses again");
            assert_eq!(again.len(), users.len());
        }
    }
});
