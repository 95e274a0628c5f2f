//! The only module with `unsafe`: fd passing over SOCK_SEQPACKET, child-process setup that runs
//! between fork and exec, and a few raw syscalls. Everything else in forkline calls these safe
//! wrappers, through the names re-exported here:
//! - `fd_passing`: packets with SCM_RIGHTS descriptors over SOCK_SEQPACKET sockets;
//! - `fds`: duplicating, adopting (inherited by number) and registering (with tokio) an fd;
//! - `child`: a spawned child's setup between fork and exec;
//! - `signals`: signals to a process or a process group;
//! - `epoll`: the accept threads' exclusive epoll instances;
//! - `bpf`: eBPF instructions, maps and program loading (reuseport steering and migration);
//! - `keeper`: the keeper process, forked without exec, and its raw syscalls;
//! - `pidfd`: process fds, and copying another process's fd (a proxied worker's listener);
//! - `seccomp`: trapping a worker's `bind` and answering it with forkline's socket.

mod bpf;
mod child;
mod epoll;
mod fd_passing;
mod fds;
mod keeper;
mod pidfd;
pub(crate) mod seccomp;
mod signals;

pub(crate) use bpf::{
    attach_reuseport_prog, attach_to_netns, bpf_prog_load, BpfInsn, BpfMap, MappedWords, BPF_ANY,
    BPF_F_MMAPABLE,
};
pub(crate) use child::{allowed_cpus, pin_to_cpu, place_fds, prepare_child};
pub(crate) use epoll::ExclusiveEpoll;
pub(crate) use fd_passing::{
    peek_packet, peer_hung_up, recv_packet, send_packet, seqpacket_pair, MAX_FDS_PER_PACKET,
};
pub(crate) use fds::{adopt_inherited_fd, async_fd, dup_cloexec};
pub(crate) use keeper::fork_keeper;
pub(crate) use pidfd::{pidfd_getfd, pidfd_open};
// Only the keeper's tests read these.
#[cfg(test)]
pub(crate) use keeper::{KEEPER_IGNORED_SIGNALS, KEEPER_NAME};
pub(crate) use signals::{signal_group, signal_pid};
