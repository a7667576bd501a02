//! A file written on a thread of its own: the recording's `write(2)`s (the kernel copying every
//! byte into the page cache) leave the thread that drains the ring buffer.
//!
//! Why: under a 64-byte UDP flood, `--write` puts about 2.8 KB a packet into its file, and
//! `perf` on bench-user put 55% of recording's CPU in the kernel's page-cache copy. On one
//! thread, ring draining, correlating and writing needed more than the half core the traced
//! load left it, and the ring overflowed. Here bytes are gathered into large chunks, handed
//! over a bounded queue (a full queue blocks the sender, as a slow disk blocked it before),
//! and the emptied chunks come back to be filled again.

use std::{
    fs::File,
    io::{self, Write},
    sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
    thread::JoinHandle,
    time::Duration,
};

/// Bytes gathered before a chunk is handed over. Each hand-over wakes the writing thread (a
/// futex call, several microseconds on these VMs): 1 MiB chunks instead of 256 KiB took
/// bench-user's recording from 3.08 to 2.91 µs a packet (median of five, alternating). The
/// ticks hand over what is gathered anyway, so a chunk's size adds no delay.
const CHUNK: usize = 1024 * 1024;
/// Chunks in flight at most (8 MiB): a disk slower than that pushes back on the sender.
const QUEUE: usize = 8;

enum Job {
    Bytes(Vec<u8>),
    /// Answer on `synced` once everything before has been written.
    Sync,
}

/// Written in order by its thread; [`Spool::sync`] waits for it, dropping waits for it too.
pub struct Spool {
    chunk: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    /// Emptied chunks, to be filled again.
    empty: Receiver<Vec<u8>>,
    synced: Receiver<()>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Spool {
    pub fn new(mut file: File) -> io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let (give_back, empty) = mpsc::sync_channel(QUEUE + 1);
        let (done, synced) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("recording".into())
            .spawn(move || loop {
                // Started before capabilities are lowered: it lowers its own within 200 ms of
                // the rest, or after the write it is blocked in (a slow disk) returns.
                crate::probe::privilege::apply_pending();
                match queue.recv_timeout(Duration::from_millis(200)) {
                    Ok(Job::Bytes(mut b)) => {
                        file.write_all(&b)?;
                        b.clear();
                        let _ = give_back.try_send(b);
                    }
                    Ok(Job::Sync) => {
                        let _ = done.send(());
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            })?;
        Ok(Self {
            chunk: Vec::with_capacity(CHUNK),
            jobs: Some(jobs),
            empty,
            synced,
            thread: Some(thread),
        })
    }

    /// Hands the chunk being filled to the thread.
    fn hand_over(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.chunk, next);
        self.send(Job::Bytes(full))
    }

    fn send(&mut self, job: Job) -> io::Result<()> {
        let sent = self.jobs.as_ref().map(|j| j.send(job));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: on a write error, which this returns.
            _ => Err(self.stop()),
        }
    }

    /// Ends the thread and says why it ended.
    fn stop(&mut self) -> io::Error {
        self.jobs = None;
        let ended = self.thread.take().map(JoinHandle::join);
        match ended {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the recording's writer thread panicked"),
            _ => io::Error::other("the recording's writer thread has stopped"),
        }
    }

    /// Returns once every byte written so far is in the file.
    pub fn sync(&mut self) -> io::Result<()> {
        self.hand_over()?;
        self.send(Job::Sync)?;
        match self.synced.recv() {
            Ok(()) => Ok(()),
            Err(_) => Err(self.stop()),
        }
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Handed over before it would pass `CHUNK`, so that a chunk never grows (and copies
        // itself) past its capacity; a piece as large as a chunk goes alone, at once.
        if self.chunk.len() + buf.len() > CHUNK {
            self.hand_over()?;
        }
        self.chunk.extend_from_slice(buf);
        if self.chunk.len() >= CHUNK {
            self.hand_over()?;
        }
        Ok(buf.len())
    }

    /// Hands what is gathered to the thread, without waiting for it to be written.
    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.hand_over();
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("flowtrace-spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn contents(path: &std::path::Path) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(path).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn bytes_arrive_in_order_and_sync_waits_for_them() {
        let path = scratch("order");
        let mut s = Spool::new(File::create(&path).unwrap()).unwrap();
        let mut expect = Vec::new();
        // Pieces of every size around a chunk, so chunks are handed over mid-way and reused.
        for i in 0..3000u32 {
            let piece: Vec<u8> = (0..(i * 37) % 1500).map(|b| (b ^ i) as u8).collect();
            s.write_all(&piece).unwrap();
            expect.extend_from_slice(&piece);
            if i % 700 == 0 {
                s.flush().unwrap();
            }
        }
        s.sync().unwrap();
        assert_eq!(contents(&path), expect, "after sync");
        // No chunk grew past its size (each growth a copy of the chunk on the reader's thread).
        assert_eq!(s.chunk.capacity(), CHUNK);
        s.write_all(b"tail").unwrap();
        expect.extend_from_slice(b"tail");
        drop(s);
        assert_eq!(contents(&path), expect, "after drop");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_write_error_is_returned_not_lost() {
        // /dev/full fails every write with ENOSPC.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut s = Spool::new(full).unwrap();
        s.write_all(&[7; 100]).unwrap();
        let e = s.sync().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        // And it stays failed.
        assert!(s.sync().is_err());
        assert!(s.write_all(&[7; CHUNK + 1]).is_err());
    }
}
