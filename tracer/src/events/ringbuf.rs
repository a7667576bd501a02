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
}

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
        Ok(Self { fd, malformed: 0 })
    }

    /// Waits for records, then appends every available one to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<Observation>) -> Result<()> {
        let mut guard = self
            .fd
            .readable_mut()
            .await
            .map_err(|e| Error::io("waiting on the ring buffer", e))?;
        let ring = guard.get_inner_mut();
        while let Some(record) = ring.next() {
            match decode(&record) {
                Ok(obs) => out.push(obs),
                Err(e) => {
                    self.malformed += 1;
                    log::debug!("dropping a malformed record: {e}");
                }
            }
        }
        guard.clear_ready();
        Ok(())
    }
}
