//! Reading the `EVENTS` ring buffer asynchronously (epoll through tokio's `AsyncFd`).

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use tokio::io::{unix::AsyncFd, Interest};

use super::decode::{decode, Observation};
use crate::error::{Error, Result};

pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
    /// Records that could not be decoded (a version skew between the two sides).
    pub malformed: u64,
    /// The last batch was small: wait a little before the next, so that records gather.
    trickle: bool,
    /// The CLOCK_MONOTONIC time taken before the last read that emptied the ring: every
    /// record committed before it has been read (0: none yet).
    pub read_at: u64,
}

/// While records trickle in, how long to let them gather between two reads. The kernel wakes
/// a waiting reader for each record that finds the ring empty: without this pause, a few
/// thousand packets a second cost tens of thousands of wake-ups (each a context switch and
/// an interrupt in the packet's path). Packets are shown 10 ms (on their way out) to 100 ms
/// after their last hop anyway, and the ring holds far more than a pause's worth at any rate
/// flowtrace keeps up with.
const GATHER: std::time::Duration = std::time::Duration::from_millis(4);
/// A batch this large means the reader is behind: read again at once.
const BEHIND: usize = 512;

impl EventStream {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map("EVENTS")
            .ok_or_else(|| Error::Load("map EVENTS missing from the eBPF object".into()))?;
        let ring = RingBuf::try_from(map).map_err(|e| Error::Load(e.to_string()))?;
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf.
        let fd =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
                Error::io(
                    "polling the ring buffer",
                    std::io::Error::other(e.to_string()),
                )
            })?;
        Ok(Self {
            fd,
            malformed: 0,
            trickle: false,
            read_at: 0,
        })
    }

    /// Waits for records, then appends every available one to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<Observation>) -> Result<()> {
        if self.trickle {
            tokio::time::sleep(GATHER).await;
        }
        let before = out.len();
        let mut guard = self
            .fd
            .readable_mut()
            .await
            .map_err(|e| Error::io("waiting on the ring buffer", e))?;
        self.read_at = read_all(guard.get_inner_mut(), out, &mut self.malformed);
        guard.clear_ready();
        self.trickle = out.len() - before < BEHIND;
        Ok(())
    }

    /// Appends every record the ring holds now to `out`, without waiting (see `read_at`).
    pub fn read_now(&mut self, out: &mut Vec<Observation>) {
        self.read_at = read_all(self.fd.get_mut(), out, &mut self.malformed);
    }
}

/// Reads the ring until it is empty; returns the time taken before the first read (what was
/// committed before it, the loop has read).
fn read_all(ring: &mut RingBuf<MapData>, out: &mut Vec<Observation>, malformed: &mut u64) -> u64 {
    let at = crate::events::clock::monotonic_ns();
    while let Some(record) = ring.next() {
        match decode(&record) {
            Ok(obs) => out.push(obs),
            Err(e) => {
                *malformed += 1;
                log::debug!("dropping a malformed record: {e}");
            }
        }
    }
    at
}
