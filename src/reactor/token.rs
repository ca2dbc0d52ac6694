//! What a `mio::Token` means in this loop.
//!
//! A few fixed tokens at the top of the `usize` range name the listeners, the signal pipe and
//! the waker. Every other token names a connection: its slab key in the low 32 bits and a
//! generation in the next 31.
//!
//! Why the generation: one `poll` returns a batch of events. Handling an early event in the
//! batch can close a connection that has a later event in the same batch (a chat push that
//! drops a slow reader, say), and an accept in between can hand the freed slab key to a new
//! connection. Without a generation that later event would be delivered to the newcomer: a
//! read on the wrong socket at best, a close of the wrong client at worst. With it, the stale
//! event's token no longer matches the slot's generation and is ignored. The same check
//! protects the reactor's own lists of tokens to revisit or flush.
//!
//! Connection tokens never collide with the fixed ones: bit 63 is never set in them. Just
//! below the fixed tokens are those of the metrics clients ([`metrics_client`]).

use mio::Token;

pub const LINE_LISTENER: Token = Token(usize::MAX);
pub const FRAME_LISTENER: Token = Token(usize::MAX - 1);
pub const SIGNALS: Token = Token(usize::MAX - 2);
pub const WAKER: Token = Token(usize::MAX - 3);
pub const LINE_TLS_LISTENER: Token = Token(usize::MAX - 4);
pub const FRAME_TLS_LISTENER: Token = Token(usize::MAX - 5);
pub const METRICS_LISTENER: Token = Token(usize::MAX - 6);

/// Metrics clients open at once (`reactor::metrics`); their tokens are the ones just below
/// the fixed ones, `METRICS_CLIENT_TOP - key`.
pub const METRICS_CLIENTS: usize = 64;
const METRICS_CLIENT_TOP: usize = usize::MAX - 7;

const KEY_BITS: u32 = 32;
const KEY_MASK: u64 = (1 << KEY_BITS) - 1;
/// Generations wrap at 2^31 so a connection token never reaches the fixed tokens.
const GENERATION_MASK: u32 = (1 << 31) - 1;

/// The token of the connection in slab slot `key` with generation `generation`.
pub fn connection(key: usize, generation: u32) -> Token {
    debug_assert!((key as u64) <= KEY_MASK, "slab key {key} beyond 32 bits");
    let generation = u64::from(generation & GENERATION_MASK);
    Token(((generation << KEY_BITS) | (key as u64 & KEY_MASK)) as usize)
}

/// The slab key and generation a connection token carries.
pub fn split(token: Token) -> (usize, u32) {
    let value = token.0 as u64;
    (
        (value & KEY_MASK) as usize,
        ((value >> KEY_BITS) as u32) & GENERATION_MASK,
    )
}

/// The token of metrics client `key` (below [`METRICS_CLIENTS`]). Metrics clients are few
/// and short-lived, and a stale event for one only makes its successor try a read that finds
/// nothing, so their tokens carry no generation.
pub fn metrics_client(key: usize) -> Token {
    debug_assert!(key < METRICS_CLIENTS, "metrics client key {key}");
    Token(METRICS_CLIENT_TOP - key)
}

/// The key of the metrics client a token names, if it names one.
pub fn metrics_client_key(token: Token) -> Option<usize> {
    METRICS_CLIENT_TOP
        .checked_sub(token.0)
        .filter(|&key| key < METRICS_CLIENTS)
}

/// Whether a token is the metrics listener's or a metrics client's.
#[inline]
pub fn is_metrics(token: Token) -> bool {
    token == METRICS_LISTENER || metrics_client_key(token).is_some()
}

/// The generation after `generation`, wrapping within the bits a token has for it.
pub fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1) & GENERATION_MASK
}

/// A token as people read it in logs: `line-listener`, `signals`, or `KEY.GENERATION` for a
/// connection (`conn=7.1` is the first connection ever in slot 7, `conn=7.9` a later one).
pub fn show(token: Token) -> impl std::fmt::Display {
    struct Show(Token);
    impl std::fmt::Display for Show {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                LINE_LISTENER => f.write_str("line-listener"),
                FRAME_LISTENER => f.write_str("frame-listener"),
                SIGNALS => f.write_str("signals"),
                WAKER => f.write_str("waker"),
                LINE_TLS_LISTENER => f.write_str("line-tls-listener"),
                FRAME_TLS_LISTENER => f.write_str("frame-tls-listener"),
                METRICS_LISTENER => f.write_str("metrics-listener"),
                token if let Some(key) = metrics_client_key(token) => write!(f, "metrics.{key}"),
                token => {
                    let (key, generation) = split(token);
                    write!(f, "{key}.{generation}")
                }
            }
        }
    }
    Show(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_generation_round_trip() {
        for (key, generation) in [
            (0, 0),
            (1, 7),
            (9_999, GENERATION_MASK),
            (u32::MAX as usize, 1),
        ] {
            assert_eq!(split(connection(key, generation)), (key, generation));
        }
    }

    #[test]
    fn tokens_read_well_in_logs() {
        assert_eq!(show(connection(7, 1)).to_string(), "7.1");
        assert_eq!(show(LINE_LISTENER).to_string(), "line-listener");
    }

    #[test]
    fn a_reused_key_gets_a_different_token() {
        assert_ne!(connection(5, 1), connection(5, 2));
    }

    #[test]
    fn connection_tokens_never_reach_the_fixed_tokens() {
        let highest = connection(u32::MAX as usize, GENERATION_MASK);
        let lowest_metrics = metrics_client(METRICS_CLIENTS - 1);
        assert!(highest.0 < lowest_metrics.0);
        for fixed in [
            LINE_LISTENER,
            FRAME_LISTENER,
            SIGNALS,
            WAKER,
            LINE_TLS_LISTENER,
            FRAME_TLS_LISTENER,
            METRICS_LISTENER,
        ] {
            assert!(highest.0 < fixed.0);
            assert_eq!(metrics_client_key(fixed), None);
        }
        for key in [0, METRICS_CLIENTS - 1] {
            assert_eq!(metrics_client_key(metrics_client(key)), Some(key));
        }
        assert_eq!(
            metrics_client_key(Token(METRICS_CLIENT_TOP - METRICS_CLIENTS)),
            None
        );
        assert_eq!(metrics_client_key(highest), None);
        assert_eq!(show(metrics_client(3)).to_string(), "metrics.3");
        assert_eq!(next_generation(GENERATION_MASK), 0);
    }
}
