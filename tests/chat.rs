//! Chat over the line protocol: HELLO, SAY fan-out, names, and dropping a slow reader.

mod common;

use common::{LineClient, TestServer, after, show, wait_until};
use std::io::{self, Read};
use std::time::Duration;

fn hello(server: &TestServer, name: &str) -> LineClient {
    let mut c = server.line_client();
    let reply = c.request(format!("HELLO {name}").as_bytes());
    assert_eq!(show(&reply), show(format!("WELCOME {name}\n").as_bytes()));
    c
}

/// Proves `c` has nothing queued before the reply to a fresh PING (so no stray MSG).
fn assert_nothing_queued(c: &mut LineClient, who: &str) {
    assert_eq!(
        show(&c.request(b"PING sync")),
        show(b"PONG sync\n"),
        "{who} had a stray line"
    );
}

over_workers! {
    fn say_is_delivered_to_every_other_identified_session(workers) {
        let server = workers.start(&[]);
        let mut alice = hello(&server, "alice");
        let mut bob = hello(&server, "bob");
        let mut lurker = server.line_client();
        assert_eq!(lurker.request(b"PING"), b"PONG\n");

        assert_eq!(alice.request(b"SAY hi there"), b"OK\n");
        assert_eq!(bob.read_line(), b"MSG alice hi there\n");
        // The sender does not hear itself; an unidentified session hears nothing.
        assert_nothing_queued(&mut alice, "alice");
        assert_nothing_queued(&mut lurker, "lurker");

        assert_eq!(bob.request(b"say  spaced   text "), b"OK\n");
        assert_eq!(alice.read_line(), b"MSG bob  spaced   text \n");
        assert_nothing_queued(&mut bob, "bob");
        assert_nothing_queued(&mut lurker, "lurker");
    }
}

over_workers! {
    fn messages_arrive_in_order_with_other_replies(workers) {
        let server = workers.start(&[]);
        let mut alice = hello(&server, "alice");
        let mut bob = hello(&server, "bob");
        let mut burst = Vec::new();
        for i in 0..100 {
            burst.extend_from_slice(format!("SAY m{i}\n").as_bytes());
        }
        alice.send(&burst);
        for i in 0..100 {
            assert_eq!(alice.read_line(), b"OK\n", "OK {i}");
        }
        for i in 0..100 {
            assert_eq!(
                show(&bob.read_line()),
                show(format!("MSG alice m{i}\n").as_bytes())
            );
        }
        assert_nothing_queued(&mut bob, "bob");
    }
}

over_workers! {
    fn say_before_hello_is_refused_and_the_session_stays_open(workers) {
        let server = workers.start(&[]);
        let mut bob = hello(&server, "bob");
        let mut anon = server.line_client();
        assert_eq!(
            anon.request(b"SAY hello?"),
            b"ERR identify first with HELLO <name>\n"
        );
        assert_eq!(anon.request(b"PING"), b"PONG\n");
        assert_nothing_queued(&mut bob, "bob");
        assert_eq!(anon.request(b"HELLO anon"), b"WELCOME anon\n");
        assert_eq!(anon.request(b"SAY now"), b"OK\n");
        assert_eq!(bob.read_line(), b"MSG anon now\n");
    }
}

over_workers! {
    fn a_name_is_taken_while_its_owner_lives_and_free_after(workers) {
        let server = workers.start(&[]);
        let alice = hello(&server, "alice");
        let mut other = server.line_client();
        assert_eq!(other.request(b"HELLO alice"), b"ERR name taken\n");
        // Still unidentified.
        assert_eq!(
            other.request(b"SAY x"),
            b"ERR identify first with HELLO <name>\n"
        );

        drop(alice);
        // The disconnect is processed asynchronously: retry until the name is free.
        let mut last = Vec::new();
        let freed = wait_until(after(Duration::from_secs(5)), || {
            last = other.request(b"HELLO alice");
            if last == b"WELCOME alice\n" {
                return true;
            }
            assert_eq!(show(&last), show(b"ERR name taken\n"));
            false
        });
        assert!(freed, "name never freed, last reply {}", show(&last));
    }
}

over_workers! {
    fn quit_frees_the_name(workers) {
        let server = workers.start(&[]);
        let mut alice = hello(&server, "alice");
        assert_eq!(alice.request(b"QUIT"), b"BYE\n");
        alice.expect_eof();
        // alice keeps her socket open on purpose: after BYE her session is over, whether or not
        // the server is still waiting for her FIN.
        let mut again = server.line_client();
        // Well under the server's 5 s linger, so a name freed only by the final close fails.
        let freed = wait_until(after(Duration::from_secs(2)), || {
            again.request(b"HELLO alice") == b"WELCOME alice\n"
        });
        assert!(
            freed,
            "name still taken 2 s after alice's QUIT was answered"
        );
        drop(alice);
    }
}

over_workers! {
    fn a_session_that_said_quit_gets_no_more_messages(workers) {
        let server = workers.start(&[]);
        let mut alice = hello(&server, "alice");
        let mut bob = hello(&server, "bob");
        assert_eq!(alice.request(b"QUIT"), b"BYE\n");
        assert_eq!(bob.request(b"SAY anyone?"), b"OK\n");
        alice.expect_eof();
    }
}

over_workers! {
    fn second_hello_is_refused(workers) {
        let server = workers.start(&[]);
        let mut alice = hello(&server, "alice");
        assert_eq!(
            alice.request(b"HELLO bob"),
            b"ERR already identified as alice\n"
        );
        assert_eq!(
            alice.request(b"HELLO alice"),
            b"ERR already identified as alice\n"
        );
        // bob is still free.
        let _bob = hello(&server, "bob");
    }
}

over_workers! {
    fn invalid_names_are_refused(workers) {
        let server = workers.start(&[]);
        let mut c = server.line_client();
        let invalid = b"ERR invalid name: use 1-32 of A-Z a-z 0-9 _ -\n";
        let cases: Vec<Vec<u8>> = vec![
            b"HELLO bad name".to_vec(),
            b"HELLO a.b".to_vec(),
            b"HELLO al!ce".to_vec(),
            b"HELLO \xc3\xa9".to_vec(),
            b"HELLO \xff".to_vec(),
            b"HELLO  alice".to_vec(),
            format!("HELLO {}", "a".repeat(33)).into_bytes(),
        ];
        for req in &cases {
            assert_eq!(
                show(&c.request(req)),
                show(invalid),
                "request {}",
                show(req)
            );
        }
        // Boundary: 32 characters of every allowed class is fine.
        let max_name = format!("Az09_-{}", "x".repeat(26));
        assert_eq!(max_name.len(), 32);
        assert_eq!(
            show(&c.request(format!("HELLO {max_name}").as_bytes())),
            show(format!("WELCOME {max_name}\n").as_bytes())
        );
    }
}

/// The text of SAY number `i` in the slow-reader test: 60,000 bytes, numbered.
fn big_text(i: usize) -> Vec<u8> {
    let mut text = format!("{i:05}:").into_bytes();
    text.resize(60_000, b'a' + (i % 26) as u8);
    text
}

over_workers! {
    fn slow_reader_is_dropped_and_the_sender_is_not_blocked(workers) {
        const SAYS: usize = 400;
        let server = workers.start(&[]);
        let mut carol = hello(&server, "carol");
        let mut dave = hello(&server, "dave");

        // carol never reads from here on. dave sends 400 x 60 kB, reading each OK.
        for i in 0..SAYS {
            let mut req = b"SAY ".to_vec();
            req.extend(big_text(i));
            assert_eq!(dave.request(&req), b"OK\n", "SAY {i}");
        }
        assert_eq!(dave.request(b"PING"), b"PONG\n");

        // carol gets some prefix of the messages, then EOF (or a reset after buffered data).
        let mut received = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let end = loop {
            match carol.stream.read(&mut buf) {
                Ok(0) => break "EOF",
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset",
                Err(e) => panic!(
                    "carol was never disconnected ({e}) after {} bytes",
                    received.len()
                ),
            }
        };
        let mut whole = 0;
        for (i, line) in received.split_inclusive(|&b| b == b'\n').enumerate() {
            if !line.ends_with(b"\n") {
                break; // a truncated last message is fine
            }
            let mut want = b"MSG dave ".to_vec();
            want.extend(big_text(i));
            want.push(b'\n');
            assert!(line == want, "carol's line {i} is wrong: {}", show(line));
            whole += 1;
        }
        assert!(
            whole < SAYS,
            "carol got all {SAYS} messages: she was not a slow reader"
        );
        eprintln!(
            "carol got {whole} whole messages ({} bytes), then {end}",
            received.len()
        );

        let stats = common::stats_when(&mut dave, |s| s["slow_reader_drops"] >= 1);
        assert_eq!(stats["slow_reader_drops"], 1, "{stats:?}");
        // dave is still identified and served.
        assert_eq!(dave.request(b"SAY still here"), b"OK\n");
    }
}

over_workers! {
    /// Six sessions (spread over the workers, when there are several) each pipeline 50 SAYs
    /// before anyone reads: every other session gets every message exactly once, each
    /// sender's in the order sent.
    fn every_message_reaches_every_other_session_once_and_in_order(workers) {
        const SAYS: usize = 50;
        let server = workers.start(&[]);
        let names = ["s0", "s1", "s2", "s3", "s4", "s5"];
        let mut sessions: Vec<LineClient> = names.iter().map(|n| hello(&server, n)).collect();
        if workers == common::Workers::TwoLeastConn {
            let deadline = after(Duration::from_secs(5));
            let spread = || common::active_by_worker(&server.line_client().request(b"STATS"));
            // The STATS client itself is the seventh connection.
            assert!(
                wait_until(deadline, || {
                    let s = spread();
                    s.len() == 2 && s.iter().sum::<u64>() == 7 && s.iter().all(|&n| n >= 3)
                }),
                "sessions not on both workers: {:?}",
                spread()
            );
        }
        for c in &mut sessions {
            let burst: Vec<u8> = (0..SAYS)
                .flat_map(|k| format!("SAY {k}\n").into_bytes())
                .collect();
            c.send(&burst);
        }
        for (me, c) in sessions.iter_mut().enumerate() {
            let mut next = [0usize; 6];
            let mut oks = 0;
            while oks < SAYS || (0..6).any(|j| j != me && next[j] < SAYS) {
                let line = c.read_line();
                if line == b"OK\n" {
                    oks += 1;
                    continue;
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                let mut words = text.trim_end().split(' ');
                assert_eq!(words.next(), Some("MSG"), "{me}: {text:?}");
                let sender = words.next().and_then(|n| n.strip_prefix('s'));
                let sender: usize = sender.and_then(|n| n.parse().ok()).expect(&text);
                let seq: usize = words.next().and_then(|k| k.parse().ok()).expect(&text);
                assert_ne!(sender, me, "{me} heard itself: {text:?}");
                assert_eq!(seq, next[sender], "{me} from s{sender}: {text:?}");
                next[sender] += 1;
            }
            assert_nothing_queued(c, names[me]);
        }
    }
}
