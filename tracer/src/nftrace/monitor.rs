//! A listener of nftables trace events (multicast group NFNLGRP_NFTRACE), read on a
//! std thread.

use super::trace::{parse, TraceEvent};
use super::wants::{self, Wants};
use super::wire::{set_sock_int, NFNLGRP_NFTRACE};
use super::NftraceError;
use crate::events::clock::monotonic_ns;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Receive buffer asked for: trace events come in bursts (several per packet and hook).
const RCVBUF: libc::c_int = 8 * 1024 * 1024;
/// While a packet waits for the reader ([`Wants`]): how long it waits for a datagram before it
/// says the socket is empty (so the packet learns that none is coming).
const IDLE_MS: i32 = 10;
/// While nothing waits: how long it waits before it checks that its receiver is still there.
const ALIVE_MS: i32 = 1000;
/// One datagram holds one event of at most a page or so; this is ample.
const RECV_BUF: usize = 64 * 1024;
/// How long the events after a first one are left to gather before they are read.
const GATHER: Duration = Duration::from_millis(4);
/// Datagrams read into one batch at most (the rest wait for the next).
const MAX_DATAGRAMS_PER_BATCH: usize = 4096;

/// Trace events read together, and how far the socket was read.
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<TraceEvent>,
    /// The CLOCK_MONOTONIC time (ns) at which the socket was found empty after these events:
    /// the kernel queues a packet's trace events while its tables run, so every packet that
    /// left netfilter before then has its events in this batch or an earlier one. None when
    /// the batch ended before the socket was empty.
    pub drained_at: Option<u64>,
}

/// A netlink socket subscribed to the nftables trace events of this network namespace.
pub struct Monitor {
    sock: Socket,
    overruns: Arc<AtomicU64>,
    wants: Arc<Wants>,
}

impl Monitor {
    /// Subscribes to NFNLGRP_NFTRACE with a large receive buffer (SO_RCVBUFFORCE, or
    /// SO_RCVBUF capped by net.core.rmem_max when that is refused).
    pub fn new() -> Result<Monitor, NftraceError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NftraceError::Socket)?;
        sock.bind_auto().map_err(NftraceError::Socket)?;
        let fd = sock.as_raw_fd();
        if set_sock_int(fd, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            set_sock_int(fd, libc::SO_RCVBUF, RCVBUF).map_err(NftraceError::Socket)?;
        }
        sock.add_membership(NFNLGRP_NFTRACE)
            .map_err(NftraceError::Socket)?;
        Ok(Monitor {
            sock,
            overruns: Arc::new(AtomicU64::new(0)),
            wants: Arc::new(Wants::new().map_err(NftraceError::Socket)?),
        })
    }

    /// Where the pipeline says how far it wants the socket read (see [`Wants`]).
    pub fn wants(&self) -> Arc<Wants> {
        Arc::clone(&self.wants)
    }

    /// The count of receive-buffer overruns (ENOBUFS: events the kernel had to drop).
    /// It stays valid after `spawn`.
    pub fn overruns(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.overruns)
    }

    /// Reads events on a thread named "nftrace" and sends the events of each burst of
    /// datagrams to `tx`, in one batch.
    /// While a packet waits for it ([`Wants`]) and no datagram came for 10 ms, the thread
    /// sends an empty batch that says how far the socket was read; while nothing waits, it
    /// sends one a second (and so learns whether the receiver is still there). It ends once
    /// the receiver is dropped (or on an unexpected socket error).
    pub fn spawn(self, tx: Sender<Batch>) -> Result<JoinHandle<()>, NftraceError> {
        std::thread::Builder::new()
            .name("nftrace".into())
            .spawn(move || self.run(tx))
            .map_err(NftraceError::Thread)
    }

    /// The datagrams already waiting, into the same batch: one hand-over (one wake-up of the
    /// receiving thread) for a burst, not one per datagram. Returns when the socket was
    /// found empty (see `Batch::drained_at`).
    fn more(&self, buf: &mut Vec<u8>, events: &mut Vec<TraceEvent>) -> Option<u64> {
        for _ in 0..MAX_DATAGRAMS_PER_BATCH {
            // Taken before the read: what the kernel queued before this time, this read or
            // an earlier one takes.
            let before = monotonic_ns();
            buf.clear();
            match self.sock.recv(buf, libc::MSG_DONTWAIT) {
                Ok(_) => events.extend(parse(buf)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.overruns.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(before),
                Err(_) => return None,
            }
        }
        None
    }

    fn run(self, tx: Sender<Batch>) {
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
        let mut drained = 0;
        loop {
            crate::probe::privilege::apply_pending();
            let timeout = if self.wants.waiting(drained) {
                IDLE_MS
            } else {
                ALIVE_MS
            };
            let ready = match wants::poll(self.sock.as_fd(), &self.wants, timeout) {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("stopped reading nftables trace events: {e}");
                    return;
                }
            };
            if ready.woken {
                self.wants.clear();
            }
            buf.clear();
            let read = match ready.socket {
                true => self.sock.recv(&mut buf, libc::MSG_DONTWAIT),
                false => Err(io::ErrorKind::WouldBlock.into()),
            };
            let mut events = match read {
                Ok(_) => {
                    // A packet's events come over a few microseconds, a burst's over longer:
                    // let them gather.
                    std::thread::sleep(GATHER);
                    parse(&buf)
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.overruns.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Idle: what came since the wait ended, and the time the socket was empty.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
                Err(e) => {
                    log::warn!("stopped reading nftables trace events: {e}");
                    return;
                }
            };
            let drained_at = self.more(&mut buf, &mut events);
            if let Some(t) = drained_at {
                drained = t;
                self.wants.drained(t);
            }
            if tx.send(Batch { events, drained_at }).is_err() {
                return;
            }
        }
    }
}
