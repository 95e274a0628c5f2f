//! Hostile and exhausted inputs (issue #10), with real processes: malformed IPC from a worker.

mod common;

use common::{Testbed, SOON};
use serde_json::Value;

/// An empty packet reads like a close, and an oversized one is cut off by the kernel: both are
/// protocol errors that get the worker killed and replaced, never a silent "channel closed"
/// that leaves a live worker out of service.
#[test]
fn an_empty_or_oversized_packet_is_a_protocol_error_and_the_worker_is_replaced() {
    for behavior in ["empty-packet", "oversize-packet"] {
        let mut tb = Testbed::start(&[("TB_WORKERS", "2"), ("TB_BEHAVIOR_1", behavior)]);
        let error = tb.wait_event("worker-error", Some(1));
        let text = error["error"].as_str().unwrap();
        assert!(text.contains("bad packet"), "{behavior}: {error}");
        let exit = tb.wait_event("exit", Some(1));
        assert_eq!(exit["signal"], 9, "{behavior}: killed, {exit}");
        assert_eq!(exit["exited_after_disconnect"], false);
        tb.wait_for("replacement", SOON, |e| {
            e["event"] == "fork" && e["id"] == 1
        });
        tb.command("send 0 {\"still\":\"here\"}");
        let reply = tb.wait_for("echo", SOON, |e| e["event"] == "message" && e["id"] == 0);
        assert_eq!(reply["payload"]["echo"]["still"], Value::from("here"));
    }
}
