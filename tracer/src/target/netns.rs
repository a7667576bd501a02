//! Network namespaces: identify them and run code inside one.
//!
//! `setns(2)` changes the namespace of the calling thread only, so work inside another
//! namespace runs on a short-lived thread of its own and the caller's thread never moves.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// A network namespace, by the path of a handle to it (`/proc/PID/ns/net`, `/run/netns/X`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    pub path: PathBuf,
    /// The namespace's inode number (what `ip netns identify` and `lsns` show).
    pub inode: u64,
}

impl Netns {
    pub fn of_pid(pid: u32) -> Result<Self> {
        Self::open(Path::new(&format!("/proc/{pid}/ns/net")))
    }

    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|source| Error::Netns {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            inode: meta.ino(),
        })
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send,
        T: Send,
    {
        let file = File::open(&self.path).map_err(|source| Error::Netns {
            path: self.path.clone(),
            source,
        })?;
        let path = self.path.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: plain syscall on a valid fd; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(Error::Netns {
                        path,
                        source: std::io::Error::last_os_error(),
                    });
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Netlink("namespace worker thread panicked".into())))
        })
    }
}
