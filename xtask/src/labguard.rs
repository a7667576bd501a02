//! A lab that is torn down when it goes out of scope: after a test failure, an error or a
//! panic. On Ctrl-C the terminal signals the whole process group: the child (cargo test,
//! flowtrace) dies of it, while this process only notes it (handlers reset to default on exec,
//! so children keep the default action) and carries on to the teardown.

use anyhow::Result;

use crate::lab::{self, DownArgs, LabCmd, UpArgs};

pub struct LabGuard;

impl LabGuard {
    /// Brings the full lab up (drop rule, peer container, published port).
    pub fn up() -> Result<Self> {
        install_signal_teardown();
        lab::run(LabCmd::Up(UpArgs {
            drop_port: lab::DROP_PORT,
            no_drop: false,
            peer: true,
            no_peer: false,
            publish: true,
            no_publish: false,
        }))?;
        Ok(Self)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::run(LabCmd::Down(DownArgs { all: false })) {
            crate::err!("lab down failed: {e:#}");
        }
    }
}

/// Survive SIGINT/SIGTERM so that the lab is torn down by the normal path.
fn install_signal_teardown() {
    extern "C" fn note(_sig: libc::c_int) {}
    let handler = note as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    // SAFETY: installing a handler that does nothing at all.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}
