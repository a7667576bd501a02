//! How far the trace reader is wanted to read, and the way to wake it for that.
//!
//! The pipeline shows a packet that met netfilter once the reader has found the socket empty
//! after it (`Batch::drained_at`). A reader that looks every 10 ms whether it is empty wakes
//! 100 times a second, and the thread it hands its batch to as often, for nothing while no
//! packet waits: under a neighbour's UDP flood (nothing traced) those wake-ups alone cost the
//! neighbour 5% of its rate on these 2-vCPU machines (204 kpkt/s with the reader's idle
//! wait at 200 ms against 194 kpkt/s at 10 ms, four runs each, side by side). So the reader
//! now waits a second at a time while nothing waits for it (only to learn whether its
//! receiver is gone), and the pipeline says when a packet does ([`Wants::want`]): through an
//! eventfd the reader polls beside its socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Shared by the pipeline (which wants) and the trace reader (which reads).
#[derive(Debug)]
pub struct Wants {
    /// The CLOCK_MONOTONIC time (ns) the socket is wanted read past (0: never).
    wanted: AtomicU64,
    /// How far the reader has read (its latest `drained_at`).
    drained: AtomicU64,
    /// Written when `wanted` rises past `drained`: it wakes the reader's poll.
    event: OwnedFd,
}

impl Wants {
    pub fn new() -> io::Result<Wants> {
        // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Wants {
            wanted: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// A packet waits until the socket has been read past `t`: wakes the reader, unless it
    /// read past `t` already or was already asked for as much. One write per rise, so a
    /// caller may ask at every tick.
    pub fn want(&self, t: u64) {
        let before = self.wanted.fetch_max(t, Ordering::AcqRel);
        if t > before && t > self.drained.load(Ordering::Acquire) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer. A full counter (EAGAIN) already
            // wakes the reader, and nothing else can fail on an eventfd.
            let _ = unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }

    /// Whether a packet waits for a read past `drained`.
    pub fn waiting(&self, drained: u64) -> bool {
        self.wanted.load(Ordering::Acquire) > drained
    }

    /// The reader read up to `t`.
    pub fn drained(&self, t: u64) {
        self.drained.fetch_max(t, Ordering::AcqRel);
    }

    /// Empties the eventfd once poll said it was readable.
    pub fn clear(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer; EAGAIN (already empty) is harmless.
        let _ = unsafe { libc::read(self.event.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.event.as_fd()
    }
}

/// What [`poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub socket: bool,
    pub woken: bool,
}

/// Waits until `socket` is readable or `wants` is written, for `timeout_ms` at most (-1: no
/// limit). An interrupted wait returns as a timeout.
pub fn poll(socket: BorrowedFd<'_>, wants: &Wants, timeout_ms: i32) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wants.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: the pointer and count describe a live array of two pollfds.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Ready {
                socket: false,
                woken: false,
            });
        }
        return Err(e);
    }
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLERR) != 0;
    Ok(Ready {
        socket: ready(&fds[0]),
        woken: ready(&fds[1]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor that stays unreadable (an eventfd never written), standing in for a
    /// quiet socket.
    fn quiet() -> Wants {
        Wants::new().unwrap()
    }

    #[test]
    fn a_want_wakes_the_reader_once_until_it_rises_again() {
        let w = Wants::new().unwrap();
        let quiet = quiet();
        let sock = quiet.fd();
        let nothing = Ready {
            socket: false,
            woken: false,
        };
        // Nothing wanted: the wait times out.
        assert_eq!(poll(sock, &w, 0).unwrap(), nothing);
        assert!(!w.waiting(0));
        w.want(1_000);
        assert!(w.waiting(999) && !w.waiting(1_000));
        let woken = poll(sock, &w, 0).unwrap();
        assert!(woken.woken && !woken.socket);
        w.clear();
        assert_eq!(poll(sock, &w, 0).unwrap(), nothing);
        // Asked again for no more: no second wake-up.
        w.want(1_000);
        w.want(500);
        assert_eq!(poll(sock, &w, 0).unwrap(), nothing);
        // Read past already: wanted, but no wake-up needed.
        w.drained(5_000);
        w.want(4_000);
        assert_eq!(poll(sock, &w, 0).unwrap(), nothing);
        assert!(!w.waiting(5_000));
        // A rise past what was read wakes it again.
        w.want(6_000);
        assert!(poll(sock, &w, 0).unwrap().woken);
        assert!(w.waiting(5_000));
    }

    #[test]
    fn a_readable_socket_is_told_apart() {
        let w = Wants::new().unwrap();
        let sock = Wants::new().unwrap();
        sock.want(1);
        let r = poll(sock.fd(), &w, 0).unwrap();
        assert!(r.socket && !r.woken);
    }
}
