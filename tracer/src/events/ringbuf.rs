//! Reading the `EVENTS` ring buffer asynchronously (epoll through tokio's `AsyncFd`), a
//! bounded number of records at a time.

use std::os::fd::AsRawFd;

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use tokio::io::{unix::AsyncFd, Interest};

use super::decode::{decode, Observation};
use crate::error::{Error, Result};

pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
    reader: Reader<Positions>,
    /// The last batch was small: wait a little before the next, so that records gather.
    trickle: bool,
    /// The last read stopped before the ring was empty: read on without waiting (the kernel
    /// wakes a reader only for a record committed to an empty ring).
    behind: bool,
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
/// Most records read and decoded before they are handled. A reader behind under a flood
/// found the whole ring at once (up to ~80,000 observations, tens of MiB, decoded before the
/// first was handled): its pages, handed back to the kernel a second later, were faulted in
/// again at the next backlog (2,000–9,000 page faults a second under the lab's UDP flood,
/// about a quarter with this bound), and the loop's ticks and signals waited for all of it.
const BATCH: usize = 4096;

impl EventStream {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map("EVENTS")
            .ok_or_else(|| Error::Load("map EVENTS missing from the eBPF object".into()))?;
        let ring = RingBuf::try_from(map).map_err(|e| Error::Load(e.to_string()))?;
        let positions = Positions::map(ring.as_raw_fd());
        if positions.is_none() {
            log::debug!("the ring buffer's positions could not be mapped: reads are unbounded");
        }
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
            reader: Reader {
                positions,
                pass: None,
                read_at: 0,
                malformed: 0,
            },
            trickle: false,
            behind: false,
        })
    }

    /// The CLOCK_MONOTONIC time before which every committed record has been read (see
    /// [`Reader::read_at`]).
    pub fn read_at(&self) -> u64 {
        self.reader.read_at
    }

    /// Records that could not be decoded.
    pub fn malformed(&self) -> u64 {
        self.reader.malformed
    }

    /// Waits for records (not when the last read left some), then appends up to a batch of
    /// them to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<Observation>) -> Result<()> {
        if self.trickle {
            tokio::time::sleep(GATHER).await;
        }
        let before = out.len();
        if self.behind {
            self.read_now(out);
        } else {
            let mut guard = self
                .fd
                .readable_mut()
                .await
                .map_err(|e| Error::io("waiting on the ring buffer", e))?;
            self.behind = self.reader.read(guard.get_inner_mut(), out);
            if !self.behind {
                guard.clear_ready();
            }
        }
        self.trickle = !self.behind && out.len() - before < BEHIND;
        Ok(())
    }

    /// Appends up to a batch of the records the ring holds now to `out`, without waiting (see
    /// `read_at`).
    pub fn read_now(&mut self, out: &mut Vec<Observation>) {
        self.behind = self.reader.read(self.fd.get_mut(), out);
    }
}

/// Where records come from: the ring, or a test's list.
trait Records {
    /// Decodes the next record into `out` (or counts it malformed); false if there is none.
    fn next_into(&mut self, out: &mut Vec<Observation>, malformed: &mut u64) -> bool;
}

impl Records for RingBuf<MapData> {
    fn next_into(&mut self, out: &mut Vec<Observation>, malformed: &mut u64) -> bool {
        let Some(record) = self.next() else {
            return false;
        };
        match decode(&record) {
            Ok(obs) => out.push(obs),
            Err(e) => {
                *malformed += 1;
                log::debug!("dropping a malformed record: {e}");
            }
        }
        true
    }
}

/// The consumer's and the producer's positions in the ring (bytes since its creation).
trait Bookmarks {
    fn consumer(&self) -> u64;
    fn producer(&self) -> u64;
}

impl<T: Bookmarks> Bookmarks for &T {
    fn consumer(&self) -> u64 {
        (**self).consumer()
    }
    fn producer(&self) -> u64 {
        (**self).producer()
    }
}

/// What reads keep between them, the ring apart (the readiness guard lends it).
struct Reader<P> {
    /// The ring's positions (None if they could not be mapped: then every read empties it).
    positions: Option<P>,
    /// A pass over what the ring held: when it began, and the producer's position then.
    pass: Option<(u64, u64)>,
    /// The CLOCK_MONOTONIC time before which every committed record has been read (0: none
    /// yet): the start of the last read that emptied the ring, or of the last pass that read
    /// up to where the producer was when it began.
    read_at: u64,
    /// Records that could not be decoded (a version skew between the two sides).
    malformed: u64,
}

impl<P: Bookmarks> Reader<P> {
    /// Reads and decodes up to `BATCH` records (all of them without `positions`); true if it
    /// stopped before the ring was empty. `read_at` moves on when the ring is found empty, or
    /// when the consumer has passed where the producer was at the start of the pass (so that
    /// a reader that never empties the ring under a flood still completes packets).
    fn read(&mut self, ring: &mut impl Records, out: &mut Vec<Observation>) -> bool {
        self.read_as_of(crate::events::clock::monotonic_ns(), ring, out)
    }

    /// `read`, at `now`.
    fn read_as_of(
        &mut self,
        now: u64,
        ring: &mut impl Records,
        out: &mut Vec<Observation>,
    ) -> bool {
        let limit = if self.positions.is_some() {
            BATCH
        } else {
            usize::MAX
        };
        let producer = || self.positions.as_ref().map_or(u64::MAX, |p| p.producer());
        let (began, target) = *self.pass.get_or_insert_with(|| (now, producer()));
        for _ in 0..limit {
            if !ring.next_into(out, &mut self.malformed) {
                self.read_at = now;
                self.pass = None;
                return false;
            }
        }
        if self
            .positions
            .as_ref()
            .is_some_and(|p| passed(p.consumer(), target))
        {
            self.read_at = began;
            self.pass = None;
        }
        true
    }
}

/// Has the consumer reached `target`? The positions only grow (by bytes, from 0 at the map's
/// creation), so a plain comparison; `u64::MAX` (no position known) is never reached.
fn passed(consumer: u64, target: u64) -> bool {
    target != u64::MAX && consumer >= target
}

/// The ring's consumer and producer positions, from its first two pages mapped read-only
/// (as libbpf maps the producer's). aya's `RingBuf` reads and moves them but does not give
/// them out, and a bounded read needs both: no crate offers them, hence this mapping.
struct Positions {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and only read through atomic loads.
unsafe impl Send for Positions {}
unsafe impl Sync for Positions {}

impl Positions {
    fn map(fd: std::os::fd::RawFd) -> Option<Self> {
        // SAFETY: sysconf takes no pointers.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        let len = 2 * page;
        // SAFETY: a new read-only shared mapping of the ring's first two pages (the
        // consumer's and the producer's positions); the kernel checks the fd and the range.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        (base != libc::MAP_FAILED).then_some(Self { base, len })
    }

    fn at(&self, page: usize) -> u64 {
        // SAFETY: the first word of one of the two mapped pages, which the kernel (and aya,
        // for the consumer's) write atomically; read as such.
        unsafe {
            let p = self.base.cast::<u8>().add(page * (self.len / 2));
            (*p.cast::<std::sync::atomic::AtomicU64>()).load(std::sync::atomic::Ordering::Acquire)
        }
    }
}

impl Bookmarks for Positions {
    fn consumer(&self) -> u64 {
        self.at(0)
    }

    fn producer(&self) -> u64 {
        self.at(1)
    }
}

impl Drop for Positions {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use tracer_common::Direction;

    use super::*;
    use crate::events::decode::tc_record;

    /// The positions a fake ring moves.
    #[derive(Default)]
    struct Pos {
        consumed: Cell<u64>,
        produced: Cell<u64>,
    }

    impl Bookmarks for Pos {
        fn consumer(&self) -> u64 {
            self.consumed.get()
        }
        fn producer(&self) -> u64 {
            self.produced.get()
        }
    }

    /// A ring of `left` records of 100 bytes each.
    struct Fake<'a> {
        left: usize,
        pos: &'a Pos,
    }

    impl Records for Fake<'_> {
        fn next_into(&mut self, out: &mut Vec<Observation>, malformed: &mut u64) -> bool {
            if self.left == 0 {
                return false;
            }
            self.left -= 1;
            self.pos.consumed.set(self.pos.consumed.get() + 100);
            let bytes = tc_record(&[0; 14], 1, 1, Direction::Ingress);
            match decode(&bytes) {
                Ok(o) => out.push(o),
                Err(_) => *malformed += 1,
            }
            true
        }
    }

    /// Reads of a backlog: at most a batch each; `read_at` moves to the start of a pass once
    /// the consumer has passed where the producer was then (though records keep coming), and
    /// to the read's own start when it empties the ring.
    #[test]
    fn reads_are_bounded_and_passes_complete() {
        let pos = Pos::default();
        // The producer is 10 records past a batch.
        pos.produced.set((BATCH as u64 + 10) * 100);
        let mut ring = Fake {
            left: 3 * BATCH + 10,
            pos: &pos,
        };
        let mut r = Reader {
            positions: Some(&pos),
            pass: None,
            read_at: 0,
            malformed: 0,
        };
        let mut out = Vec::new();
        let mut read = |now: u64, out: &mut Vec<Observation>| {
            let behind = r.read_as_of(now, &mut ring, out);
            (behind, r.read_at)
        };
        assert_eq!(read(1_000, &mut out), (true, 0));
        assert_eq!(out.len(), BATCH);
        pos.produced.set(pos.produced.get() + 5_000);
        // The consumer passes the pass's target: read_at is the pass's start.
        assert_eq!(read(2_000, &mut out), (true, 1_000));
        assert_eq!(out.len(), 2 * BATCH);
        // A new pass, whose target lies beyond what the next batch reaches: no change.
        pos.produced.set(pos.produced.get() + 1_000_000);
        assert_eq!(read(3_000, &mut out), (true, 1_000));
        // The rest empties the ring: read_at is this read's start, not its pass's.
        assert_eq!(read(4_000, &mut out), (false, 4_000));
        assert_eq!(out.len(), 3 * BATCH + 10);
        assert_eq!(r.malformed, 0);
    }

    /// Without the ring's positions a read takes everything, as before there were batches.
    #[test]
    fn without_positions_a_read_empties_the_ring() {
        let pos = Pos::default();
        let mut ring = Fake {
            left: 3 * BATCH,
            pos: &pos,
        };
        let mut out = Vec::new();
        let mut r: Reader<&Pos> = Reader {
            positions: None,
            pass: None,
            read_at: 0,
            malformed: 0,
        };
        assert!(!r.read_as_of(7, &mut ring, &mut out));
        assert_eq!((out.len(), r.read_at), (3 * BATCH, 7));
    }

    #[test]
    fn a_pass_ends_where_the_producer_was() {
        assert!(passed(100, 100));
        assert!(passed(101, 100));
        assert!(!passed(99, 100));
        assert!(!passed(u64::MAX, u64::MAX), "no position known: never");
    }
}
