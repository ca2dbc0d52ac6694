//! The request head of an HTTP/1.x request, for the metrics endpoint (`reactor::metrics`):
//! the request line and the headers, up to the blank line that ends them.
//!
//! ```text
//! GET /metrics HTTP/1.1\r\n
//! Host: 127.0.0.1:9100\r\n
//! \r\n
//! ```
//!
//! The parsing itself is httparse's (the parser hyper uses: zero-copy over `&[u8]`, strict
//! about tokens, and its `Status::{Complete, Partial}` is where this crate's [`Decoded`]
//! comes from); this module only gives it the codecs' shape and the one limit the endpoint
//! needs: a head is at most [`MAX_HEAD_BYTES`], so a client can make the loop hold no more
//! than that for it. A head is decided from at most that many bytes: past it without the
//! blank line, it is too large.
//!
//! What it refuses to do: read bodies, keep a connection alive, or know any path. The
//! endpoint answers one request and closes, so the bytes after the head are never looked at.

use std::fmt;

use super::Decoded;

/// The largest request head accepted, blank line included. Prometheus sends about 250 bytes
/// (its `Accept` and `User-Agent` headers are the long ones); 8 KiB is the limit of most
/// servers (nginx's `large_client_header_buffers`, Apache's `LimitRequestLine`).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Headers accepted in one head; more is a bad request. Prometheus sends five.
const MAX_HEADERS: usize = 32;

/// The parts of a request head the endpoint routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'a> {
    /// `GET`, as sent (methods are case-sensitive).
    pub method: &'a str,
    /// The target without its query string: `/metrics?x=1` is `/metrics`.
    pub path: &'a str,
}

/// Why a request head was refused; each is answered `400 Bad Request` and a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Not an HTTP/1.x request head (bad request line, a header without a colon, ...).
    Malformed,
    /// No blank line within `MAX_HEAD_BYTES`, or more than `MAX_HEADERS` headers.
    TooLarge,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Malformed => f.write_str("malformed request"),
            HttpError::TooLarge => write!(f, "request head over {MAX_HEAD_BYTES} bytes"),
        }
    }
}

/// Decodes the request head at the start of `buf`; `consumed` is the head's length, blank
/// line included.
pub fn decode(buf: &[u8]) -> Result<Decoded<RequestHead<'_>>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(consumed)) if consumed > MAX_HEAD_BYTES => {
            Err(HttpError::TooLarge)
        }
        Ok(httparse::Status::Complete(consumed)) => {
            let (Some(method), Some(target)) = (request.method, request.path) else {
                return Err(HttpError::Malformed);
            };
            let path = target.split_once('?').map_or(target, |(path, _)| path);
            Ok(Decoded::Complete {
                request: RequestHead { method, path },
                consumed,
            })
        }
        // A complete head would be longer than the limit: no need to wait for it.
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Err(HttpError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(Decoded::Incomplete),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooLarge),
        Err(_) => Err(HttpError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: localhost:9100\r\n\
        User-Agent: Prometheus/2.42.0\r\nAccept: text/plain;version=0.0.4\r\n\r\n";

    #[test]
    fn a_scrape_at_every_split_point() {
        for split in 0..SCRAPE.len() {
            assert_eq!(
                decode(&SCRAPE[..split]),
                Ok(Decoded::Incomplete),
                "at {split}"
            );
        }
        let head = RequestHead {
            method: "GET",
            path: "/metrics",
        };
        assert_eq!(
            decode(SCRAPE),
            Ok(Decoded::Complete {
                request: head,
                consumed: SCRAPE.len()
            })
        );
        // What follows the head is not its business.
        let mut more = SCRAPE.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            decode(&more),
            Ok(Decoded::Complete {
                request: head,
                consumed: SCRAPE.len()
            })
        );
    }

    #[test]
    fn paths_methods_and_versions() {
        for (text, method, path) in [
            (
                &b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n"[..],
                "GET",
                "/metrics",
            ),
            (b"GET / HTTP/1.0\r\n\r\n", "GET", "/"),
            (
                b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "POST",
                "/metrics",
            ),
            (b"GET /metrics HTTP/1.1\n\n", "GET", "/metrics"),
        ] {
            match decode(text) {
                Ok(Decoded::Complete { request, .. }) => {
                    assert_eq!((request.method, request.path), (method, path));
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(text)),
            }
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for text in [
            &b"PING\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET  HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                decode(text),
                Err(HttpError::Malformed),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    /// A head of `len` bytes: the request line, one `X:` header padded to fit, the blank line.
    fn head_of(len: usize) -> Vec<u8> {
        let start = b"GET /metrics HTTP/1.1\r\nX: ";
        let end = b"\r\n\r\n";
        let mut head = start.to_vec();
        head.resize(len - end.len(), b'a');
        head.extend_from_slice(end);
        head
    }

    #[test]
    fn the_head_limit_at_max_and_max_plus_one() {
        let max = head_of(MAX_HEAD_BYTES);
        assert!(matches!(
            decode(&max),
            Ok(Decoded::Complete { consumed, .. }) if consumed == MAX_HEAD_BYTES
        ));
        assert_eq!(
            decode(&head_of(MAX_HEAD_BYTES + 1)),
            Err(HttpError::TooLarge)
        );
        // Known too large before the blank line arrives.
        let over = &head_of(MAX_HEAD_BYTES + 100)[..MAX_HEAD_BYTES];
        assert_eq!(decode(over), Err(HttpError::TooLarge));
        assert_eq!(decode(&max[..MAX_HEAD_BYTES - 1]), Ok(Decoded::Incomplete));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(decode(&many), Err(HttpError::TooLarge));
    }
}
