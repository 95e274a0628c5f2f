//! Property tests of the wire decoder with a fixed seed: whatever bytes a worker sends, the
//! primary's decoding of them returns a message or an error, never panics; and every message a
//! well-behaved peer sends survives the trip.

use forkline::protocol::channel::{encode, Packet};
use forkline::protocol::{FromWorker, ToWorker};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A runner with a fixed seed, so a failure reproduces.
fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, forkline::Error> {
    Packet {
        data: bytes.to_vec(),
        fds: Vec::new(),
        fds_cut: false,
    }
    .decode()
}

/// Bytes that look like the protocol's JSON often enough to get past the first character.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let fragments = prop::sample::select(vec![
        &b"{\"type\":\"hello\",\"version\":1,\"pid\":"[..],
        b"{\"type\":\"listen\",\"req\":",
        b"{\"type\":\"ack\",\"seqs\":[",
        b"{\"type\":\"returned\",\"listener\":",
        b"{\"type\":\"message\",\"data\":",
        b"\"kind\":\"tcp\"",
        b"\"address\":\"",
        b"18446744073709551616",
        b"-1",
        b"[[[[[[[[",
        b"}",
        b"]",
        b",",
        b"\"",
        b"\\u0000",
        b"null",
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(fragments, 0..40).prop_map(|parts| parts.concat()),
    ]
}

#[test]
fn decoding_hostile_bytes_never_panics() {
    runner(5000)
        .run(&hostile_bytes(), |bytes| {
            let _ = decode::<FromWorker>(&bytes);
            let _ = decode::<ToWorker>(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn well_formed_messages_survive_the_trip() {
    let message = (
        any::<u64>(),
        prop::collection::vec(any::<u64>(), 0..64),
        ".{0,64}",
    )
        .prop_map(|(req, seqs, text)| {
            vec![
                FromWorker::Listen {
                    req,
                    kind: forkline::SocketKind::Tcp,
                    address: text.clone(),
                    mode: None,
                    index: (req % 3) as u32,
                },
                FromWorker::Ack {
                    seqs: seqs.clone(),
                    open: Some(req),
                    dropped: None,
                },
                FromWorker::Returned {
                    listener: req,
                    seqs,
                },
                FromWorker::Message {
                    data: serde_json::Value::String(text),
                },
            ]
        });
    runner(500)
        .run(&message, |messages| {
            for message in messages {
                let bytes = encode(&message).unwrap();
                prop_assert_eq!(decode::<FromWorker>(&bytes).unwrap(), message);
            }
            Ok(())
        })
        .unwrap();
}
