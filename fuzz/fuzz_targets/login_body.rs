//! `auth::split_login_body`, the Login frame body `user:password`, over arbitrary bytes.
//!
//! Checks: a split gives a non-empty user without `:` and a password that, joined back with
//! one `:`, is the body exactly; no split means the body has no `:` or starts with one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_reactor::auth::split_login_body;

fuzz_target!(|body: &[u8]| {
    match split_login_body(body) {
        Some((user, password)) => {
            assert!(!user.is_empty());
            assert!(!user.contains(&b':'));
            assert_eq!([user, b":", password].concat(), body);
        }
        None => assert!(!body.contains(&b':') || body[0] == b':'),
    }
});
