//! Taking back the handoffs a worker has not read: the `conns` packets still queued in the
//! primary's copy of the worker's end of its IPC socket, when it died or is stuck.

use std::os::fd::OwnedFd;
use std::time::Instant;

use super::conn::Conn;
use crate::protocol::ToWorker;

/// True when a packet is queued in the worker's end of its socket.
pub(super) fn has_unread(worker_end: &OwnedFd) -> bool {
    use std::os::fd::AsFd;
    let mut byte = [0u8; 1];
    crate::sys::peek_packet(worker_end.as_fd(), &mut byte).is_ok()
}

/// Takes the `conns` packets at the head of a live worker's queue (stopping at the first other
/// packet, a message or a reply, which the worker must still read).
pub(super) fn take_unread_connections(worker_end: &OwnedFd) -> (Vec<Conn>, Option<Stray>) {
    use std::os::fd::AsFd;
    let mut taken = Vec::new();
    let mut buf = vec![0u8; crate::protocol::MAX_PACKET + 1];
    while let Ok(n) = crate::sys::peek_packet(worker_end.as_fd(), &mut buf) {
        if !is_conns(&buf[..n]) {
            break;
        }
        // The worker may have taken it meanwhile: then this takes the next packet, whatever it
        // is, so look again at what was taken.
        let mut fds = Vec::new();
        let Ok((n, _)) = crate::sys::recv_packet(worker_end.as_fd(), &mut buf, &mut fds, true)
        else {
            break;
        };
        if !is_conns(&buf[..n]) {
            // Not a handoff after all (the worker read the one peeked): it cannot be put back
            // in place, so the caller sends it again.
            return (taken, Some((buf[..n].to_vec(), fds)));
        }
        taken.extend(conns_in(&buf[..n], fds).unwrap_or_default());
    }
    (taken, None)
}

/// A packet for a worker taken off its queue by mistake, with its fds: to be sent again.
pub(super) type Stray = (Vec<u8>, Vec<OwnedFd>);

/// True for a `conns` packet.
pub(super) fn is_conns(packet: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<ToWorker>(packet),
        Ok(ToWorker::Conns { .. })
    )
}

/// The connections a `conns` packet carries (`None` for any other packet). At the fd limit
/// only the first fds arrive: those are the connections.
pub(super) fn conns_in(packet: &[u8], fds: Vec<OwnedFd>) -> Option<Vec<Conn>> {
    let Ok(ToWorker::Conns {
        listener, peers, ..
    }) = serde_json::from_slice::<ToWorker>(packet)
    else {
        return None;
    };
    let mut peers = peers.iter().map(|p| p.parse().ok());
    let now = Instant::now();
    Some(
        fds.into_iter()
            .map(|fd| Conn {
                listener,
                fd,
                peer: peers.next().flatten(),
                accepted: now,
                refused_by: None,
            })
            .collect(),
    )
}

/// Reads back the `conns` packets a dead worker never read from its end of the IPC socket.
pub(super) fn unread_connections(worker_end: &OwnedFd) -> Vec<Conn> {
    use std::os::fd::AsFd;
    let mut orphans = Vec::new();
    let mut buf = vec![0u8; crate::protocol::MAX_PACKET + 1];
    loop {
        let mut fds = Vec::new();
        match crate::sys::recv_packet(worker_end.as_fd(), &mut buf, &mut fds, true) {
            Ok((0, _)) | Err(_) => break,
            // At the fd limit only the first fds arrive: those are re-dispatched.
            Ok((n, _)) => orphans.extend(conns_in(&buf[..n], fds).unwrap_or_default()),
        }
    }
    orphans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::channel::encode;
    use std::os::fd::{AsRawFd, RawFd};

    #[test]
    fn taking_back_stops_at_the_first_packet_that_is_not_a_handoff() {
        use std::os::fd::AsFd;
        let (primary_end, worker_end) = crate::sys::seqpacket_pair().unwrap();
        let send = |msg: &ToWorker, fds: &[RawFd]| {
            crate::sys::send_packet(primary_end.as_fd(), &encode(msg).unwrap(), fds, false).unwrap()
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let conns = ToWorker::Conns {
            listener: 7,
            seqs: vec![0, 1],
            peers: vec!["127.0.0.1:1".into(), String::new()],
        };
        send(&conns, &[a.as_raw_fd(), b.as_raw_fd()]);
        send(&ToWorker::Disconnect, &[]);
        let (taken, stray) = take_unread_connections(&worker_end);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].peer, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(taken[1].peer, None);
        assert!(taken.iter().all(|c| c.listener == 7));
        assert!(stray.is_none());
        // The `disconnect` stays for the worker.
        let mut buf = vec![0u8; 1024];
        let mut fds = Vec::new();
        let (n, _) = crate::sys::recv_packet(worker_end.as_fd(), &mut buf, &mut fds, true).unwrap();
        assert_eq!(
            serde_json::from_slice::<ToWorker>(&buf[..n]).unwrap(),
            ToWorker::Disconnect
        );
    }
}
