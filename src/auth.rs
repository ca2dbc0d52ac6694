//! Logins: the users file and argon2id verification. The thread pool that keeps verification
//! off the loop is the reactor's (`reactor::logins`).
//!
//! Verifying one argon2id hash takes tens of milliseconds and about 19 MiB of memory with the
//! default parameters; that is deliberate, it is what makes a stolen users file expensive to
//! crack. On the reactor's single thread it would stall every connection for as long, so the
//! loop never calls [`Users::verify`] itself: its worker threads do.
//!
//! The users file holds one `name:hash` per line, made by `tcp-reactor passwd NAME`:
//!
//! ```text
//! # lines starting with '#' and blank lines are ignored; a trailing \r is tolerated
//! alice:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//! ```
//!
//! Invariants:
//! - Only argon2id PHC strings are accepted, and each is fully checked (algorithm, version,
//!   parameters, salt, output) when the file is read, so a verification can fail only by the
//!   password being wrong.
//! - [`Users::verify`] does the same work whether or not the user exists (see there).
//! - No `Debug` output shows a password; [`wipe`] overwrites one in place.
//!
//! What it refuses to do: it keeps no per-user state (no lockout, no rate limit) and never logs
//! a password. It wipes only its own copy of a password; copies elsewhere (the connection's
//! input buffer) are their owner's business.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::path::Path;

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

use zeroize::Zeroize;

/// Longest user name in bytes. Names travel in `LOGIN` lines and Login frames and are shown
/// in logs; 64 bytes is room for any real name without letting a name be a payload.
pub const MAX_NAME_BYTES: usize = 64;

/// What is wrong with a user name, in the users file or given to `tcp-reactor passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong {
        len: usize,
    },
    /// A space, tab or `:`: the line protocol splits `LOGIN name password` at spaces, and the
    /// file and the Login frame split `name:...` at the first `:`.
    Separator,
    /// Another ASCII control character: nobody can type it, and it would garble logs.
    Control,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "empty user name"),
            NameError::TooLong { len } => {
                write!(f, "user name is {len} bytes, the limit is {MAX_NAME_BYTES}")
            }
            NameError::Separator => write!(f, "user name may not contain spaces, tabs or ':'"),
            NameError::Control => write!(f, "user name may not contain control characters"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks a user name by the rules of the users file.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name.bytes().any(|b| matches!(b, b' ' | b'\t' | b':')) {
        return Err(NameError::Separator);
    }
    if name.bytes().any(|b| b.is_ascii_control()) {
        return Err(NameError::Control);
    }
    Ok(())
}

/// What is wrong with one line of the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// No `:` on the line.
    NoColon,
    Name(NameError),
    Duplicate {
        name: String,
        first_line: usize,
    },
    /// Not a PHC string, not argon2id, or parameters argon2 refuses; the text says which.
    NotArgon2id(String),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::NoColon => write!(f, "expected name:hash"),
            LineError::Name(e) => write!(f, "{e}"),
            LineError::Duplicate { name, first_line } => {
                write!(f, "user {name:?} already on line {first_line}")
            }
            LineError::NotArgon2id(why) => write!(f, "not an argon2id PHC hash ({why})"),
        }
    }
}

/// A malformed users file: the first bad line (1-based) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersFileError {
    pub line: usize,
    pub error: LineError,
}

impl fmt::Display for UsersFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

impl std::error::Error for UsersFileError {}

/// The users file, parsed: each name with its argon2id hash, plus a dummy hash for names that
/// are not there.
#[derive(Clone)]
pub struct Users {
    hashes: HashMap<String, PasswordHash>,
    /// Verified against when the name is unknown; see [`Users::verify`].
    dummy: PasswordHash,
}

impl fmt::Debug for Users {
    /// Names only: a hash is not a password, but there is no reason to print material for an
    /// offline guessing attack either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.hashes.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

impl Users {
    /// Parses the text of a users file; the first malformed line is the error.
    pub fn parse(text: &str) -> Result<Users, UsersFileError> {
        let mut hashes = HashMap::new();
        let mut lines_of: HashMap<&str, usize> = HashMap::new();
        let mut first: Option<PasswordHash> = None;
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let content = raw.strip_suffix('\r').unwrap_or(raw);
            if content.trim().is_empty() || content.starts_with('#') {
                continue;
            }
            let fail = |error| UsersFileError { line, error };
            let (name, hash) = content
                .split_once(':')
                .ok_or_else(|| fail(LineError::NoColon))?;
            check_name(name).map_err(|e| fail(LineError::Name(e)))?;
            let hash = parse_hash(hash).map_err(|why| fail(LineError::NotArgon2id(why)))?;
            match lines_of.entry(name) {
                Entry::Occupied(seen) => {
                    return Err(fail(LineError::Duplicate {
                        name: name.to_string(),
                        first_line: *seen.get(),
                    }));
                }
                Entry::Vacant(slot) => {
                    slot.insert(line);
                }
            }
            if first.is_none() {
                first = Some(hash.clone());
            }
            hashes.insert(name.to_string(), hash);
        }
        let dummy = match first {
            Some(hash) => dummy_like(&hash),
            None => default_dummy(),
        };
        Ok(Users { hashes, dummy })
    }

    /// Reads and parses a users file; the message names the path and, for a bad line, its
    /// number.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("users file {}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("users file {}: {e}", path.display()))
    }

    /// How many users the file names.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `password` is right for `name`. Blocks for one argon2id computation (tens of
    /// milliseconds): call it from a login worker thread, never from the event loop.
    ///
    /// An unknown name, or one that is not UTF-8, is verified against a dummy hash with the
    /// same parameters as the file's (those of its first entry), and the answer is `false`
    /// whatever that computes. Answering an unknown name at once would make "no such user"
    /// answer in microseconds and "wrong password" in tens of milliseconds, and anyone could
    /// tell which names exist by timing LOGIN. The dummy's output is all zeros, which no
    /// password is expected to produce, and its result is ignored anyway.
    pub fn verify(&self, name: &[u8], password: &[u8]) -> bool {
        let known = std::str::from_utf8(name)
            .ok()
            .and_then(|name| self.hashes.get(name));
        let argon2 = Argon2::default();
        match known {
            Some(hash) => argon2.verify_password(password, hash).is_ok(),
            None => {
                let wasted = argon2.verify_password(password, &self.dummy);
                std::hint::black_box(wasted).ok();
                false
            }
        }
    }
}

/// Parses one PHC string and checks everything verification will need, so that a hash that
/// passes here can only fail to verify by the password being wrong.
fn parse_hash(text: &str) -> Result<PasswordHash, String> {
    let hash = PasswordHash::new(text).map_err(|e| e.to_string())?;
    if hash.algorithm != Algorithm::Argon2id.ident() {
        return Err(format!("algorithm is {}", hash.algorithm));
    }
    if let Some(version) = hash.version {
        Version::try_from(version).map_err(|_| format!("unsupported version {version}"))?;
    }
    Params::try_from(&hash).map_err(|e| e.to_string())?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("no salt or no hash".to_string());
    }
    Ok(hash)
}

/// A hash with the parameters, version and salt of `model` and an all-zero output of the
/// same length: verifying against it costs exactly what verifying against `model` costs.
fn dummy_like(model: &PasswordHash) -> PasswordHash {
    let mut dummy = model.clone();
    if let Some(output) = &model.hash
        && let Ok(zeros) = Output::new(&vec![0; output.len()])
    {
        dummy.hash = Some(zeros);
    }
    dummy
}

/// The dummy for an empty users file: argon2id with the crate's default parameters, which
/// are also what `tcp-reactor passwd` uses.
fn default_dummy() -> PasswordHash {
    let params = Params::default();
    PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).expect("argon2's default parameters encode"),
        salt: Some(Salt::new(&[0; Salt::RECOMMENDED_LENGTH]).expect("16 bytes is a valid salt")),
        hash: Some(
            Output::new(&[0; Params::DEFAULT_OUTPUT_LEN]).expect("32 bytes is a valid output"),
        ),
    }
}

/// Splits a Login frame body, `user:password`, at the first `:`: the name cannot contain one,
/// the password may. `None` when there is no `:` or the user is empty.
pub fn split_login_body(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = memchr::memchr(b':', body)?;
    let (user, password) = (&body[..colon], &body[colon + 1..]);
    (!user.is_empty()).then_some((user, password))
}

/// One users file line, `name:$argon2id$...`, for `name` and `password`: argon2id with the
/// crate's default parameters and a random salt from the OS. Refuses a name the file would
/// refuse and an empty password.
pub fn hash_line(name: &str, password: &[u8]) -> Result<String, String> {
    check_name(name).map_err(|e| e.to_string())?;
    if password.is_empty() {
        return Err("empty password".to_string());
    }
    let hash = Argon2::default()
        .hash_password(password)
        .map_err(|e| format!("hashing failed: {e}"))?;
    Ok(format!("{name}:{hash}"))
}

/// Overwrites a buffer with zeros, its spare capacity included, keeping its length. The
/// writes are volatile, so the compiler cannot drop them as dead stores.
pub fn wipe(buf: &mut Vec<u8>) {
    buf.as_mut_slice().zeroize();
    buf.spare_capacity_mut().zeroize();
}

/// The cheapest parameters argon2 accepts: 8 KiB, one pass. Tests verify dozens of hashes;
/// the default 19 MiB and two passes would make them slow for nothing.
#[cfg(test)]
fn cheap() -> Argon2<'static> {
    let params = Params::new(Params::MIN_M_COST, 1, 1, None).expect("minimum parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A users file line hashed with [`cheap`] parameters, for tests.
#[cfg(test)]
pub(crate) fn cheap_line(name: &str, password: &[u8]) -> String {
    let hash = cheap()
        .hash_password_with_salt(password, b"saltsaltsaltsalt")
        .expect("hash");
    format!("{name}:{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_files_name_the_line_and_the_fault() {
        let good = cheap_line("alice", b"pw");
        let argon2i = good.replace("$argon2id$", "$argon2i$");
        let table: Vec<(String, &str)> = vec![
            ("nocolon".into(), "line 1: expected name:hash"),
            (format!("{good}\n\n# c\nbob"), "line 4: expected name:hash"),
            (":$argon2id$".into(), "line 1: empty user name"),
            (
                format!("# c\n\nal ice:{}", &good[6..]),
                "line 3: user name may not contain spaces, tabs or ':'",
            ),
            (
                "al\tice:x".into(),
                "line 1: user name may not contain spaces, tabs or ':'",
            ),
            (
                "al\x07ice:x".into(),
                "line 1: user name may not contain control characters",
            ),
            (
                format!("{}:x", "n".repeat(65)),
                "line 1: user name is 65 bytes, the limit is 64",
            ),
            (
                format!("bob:{}\n{good}\n{}", &good[6..], cheap_line("bob", b"x")),
                "line 3: user \"bob\" already on line 1",
            ),
            (
                format!("\n\n\n\n{argon2i}"),
                "line 5: not an argon2id PHC hash (algorithm is argon2i)",
            ),
            (
                "alice:".into(),
                "line 1: not an argon2id PHC hash (password hash string missing field)",
            ),
            (
                "alice:secret".into(),
                "line 1: not an argon2id PHC hash (password hash string missing field)",
            ),
            (
                good.replace("m=8,", "m=1,"),
                "line 1: not an argon2id PHC hash (invalid parameter: \"m\")",
            ),
            (
                good.replace("v=19", "v=18"),
                "line 1: not an argon2id PHC hash (unsupported version 18)",
            ),
            (
                format!("{good} "),
                "line 1: not an argon2id PHC hash (invalid Base64 encoding)",
            ),
        ];
        for (text, expected) in &table {
            let err = Users::parse(text).expect_err(text);
            assert_eq!(err.to_string(), *expected, "{text:?}");
        }
    }

    #[test]
    fn load_names_the_path_and_the_line() {
        let dir = std::env::temp_dir().join(format!("tcp-reactor-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("good.txt");
        let bad = dir.join("bad.txt");
        let missing = dir.join("missing.txt");
        std::fs::write(&good, format!("# ok\n{}\n", cheap_line("alice", b"pw"))).expect("write");
        std::fs::write(&bad, "# header\nalice\n").expect("write");

        let users = Users::load(&good).expect("load");
        assert!(users.verify(b"alice", b"pw"));
        assert_eq!(
            Users::load(&bad).expect_err("bad line"),
            format!("users file {}: line 2: expected name:hash", bad.display())
        );
        let err = Users::load(&missing).expect_err("missing");
        assert!(
            err.starts_with(&format!("users file {}: ", missing.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_name_of_64_bytes_is_accepted() {
        let name = "n".repeat(MAX_NAME_BYTES);
        let users = Users::parse(&cheap_line(&name, b"pw")).expect("parse");
        assert_eq!(users.len(), 1);
        assert!(users.verify(name.as_bytes(), b"pw"));
    }

    #[test]
    fn blank_lines_comments_and_crlf_are_skipped() {
        let text = format!(
            "# users\r\n\r\n{}\r\n   \n\t\n#bob:nothing\n{}\n",
            cheap_line("alice", b"a-pw"),
            cheap_line("carol", b"c-pw"),
        );
        let users = Users::parse(&text).expect("parse");
        assert_eq!(users.len(), 2);
        assert!(users.verify(b"alice", b"a-pw"));
        assert!(users.verify(b"carol", b"c-pw"));
        assert!(!users.verify(b"bob", b"nothing"));
        assert_eq!(
            format!("{users:?}"),
            r#"Users { names: ["alice", "carol"] }"#
        );
    }

    #[test]
    fn empty_and_comment_only_files_have_no_users() {
        for text in ["", "\n", "# nobody\n\n"] {
            let users = Users::parse(text).expect(text);
            assert!(users.is_empty());
            assert_eq!(users.len(), 0);
            assert!(!users.verify(b"alice", b"pw"));
        }
    }

    #[test]
    fn duplicate_users_are_refused_even_with_other_lines_between() {
        let text = format!(
            "{}\n{}\n# again:\n{}",
            cheap_line("bob", b"1"),
            cheap_line("ann", b"2"),
            cheap_line("bob", b"3"),
        );
        let err = Users::parse(&text).expect_err("duplicate");
        assert_eq!(
            err,
            UsersFileError {
                line: 4,
                error: LineError::Duplicate {
                    name: "bob".into(),
                    first_line: 1
                }
            }
        );
    }

    #[test]
    fn verify_right_wrong_unknown_and_non_utf8() {
        let users = Users::parse(&cheap_line("alice", b"s3cret:with colon")).expect("parse");
        assert!(users.verify(b"alice", b"s3cret:with colon"));
        assert!(!users.verify(b"alice", b"s3cret"));
        assert!(!users.verify(b"alice", b""));
        assert!(!users.verify(b"Alice", b"s3cret:with colon"));
        assert!(!users.verify(b"mallory", b"s3cret:with colon"));
        assert!(!users.verify(b"\xff\xfe", b"s3cret:with colon"));
        assert!(!users.verify(b"", b""));
    }

    #[test]
    fn the_dummy_hash_costs_what_the_first_entry_costs() {
        let users = Users::parse(&cheap_line("alice", b"pw")).expect("parse");
        let alice = &users.hashes["alice"];
        assert_eq!(users.dummy.algorithm, alice.algorithm);
        assert_eq!(users.dummy.version, alice.version);
        assert_eq!(users.dummy.params, alice.params);
        assert_eq!(users.dummy.salt, alice.salt);
        let dummy_len = users.dummy.hash.as_ref().map(Output::len);
        assert_eq!(dummy_len, alice.hash.as_ref().map(Output::len));
        assert_ne!(users.dummy.hash, alice.hash);

        let empty = Users::parse("").expect("parse");
        let defaults = Params::try_from(&empty.dummy).expect("params");
        assert_eq!(defaults.m_cost(), Params::DEFAULT_M_COST);
        assert_eq!(defaults.t_cost(), Params::DEFAULT_T_COST);
        assert_eq!(defaults.p_cost(), Params::DEFAULT_P_COST);
        assert_eq!(empty.dummy.algorithm, Algorithm::Argon2id.ident());
    }

    #[test]
    fn login_bodies_split_at_the_first_colon() {
        type Split = Option<(&'static [u8], &'static [u8])>;
        let table: [(&[u8], Split); 7] = [
            (b"a:b", Some((b"a", b"b"))),
            (b"a:b:c", Some((b"a", b"b:c"))),
            (b"a:", Some((b"a", b""))),
            (b":x", None),
            (b":", None),
            (b"nocolon", None),
            (b"", None),
        ];
        for (body, expected) in table {
            assert_eq!(split_login_body(body), expected, "{body:?}");
        }
    }

    #[test]
    fn hash_line_round_trips_with_default_parameters() {
        let line = hash_line("alice", b"correct horse").expect("hash");
        assert!(
            line.starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"),
            "{line}"
        );
        let users = Users::parse(&line).expect("parse");
        assert!(users.verify(b"alice", b"correct horse"));
        assert!(!users.verify(b"alice", b"correct horsE"));
        // A fresh salt each time.
        assert_ne!(hash_line("alice", b"correct horse"), Ok(line));
    }

    #[test]
    fn hash_line_refuses_what_the_file_refuses() {
        let table: [(&str, &[u8], &str); 5] = [
            ("", b"pw", "empty user name"),
            (
                "a b",
                b"pw",
                "user name may not contain spaces, tabs or ':'",
            ),
            (
                "a:b",
                b"pw",
                "user name may not contain spaces, tabs or ':'",
            ),
            (
                &"x".repeat(65),
                b"pw",
                "user name is 65 bytes, the limit is 64",
            ),
            ("alice", b"", "empty password"),
        ];
        for (name, password, expected) in table {
            assert_eq!(
                hash_line(name, password),
                Err(expected.to_string()),
                "{name}"
            );
        }
    }

    #[test]
    fn wipe_zeroes_the_buffer_and_keeps_its_length() {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"hunter2");
        wipe(&mut buf);
        assert_eq!(buf, [0; 7]);
        assert_eq!(buf.capacity(), 64);
    }
}
