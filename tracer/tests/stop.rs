//! Privileged end-to-end test of what a stop shows: the records the kernel committed before
//! the stop are read and shown, not left in the ring. Run through `cargo xtask test`.

mod common;

use common::{packets, show, tc_hop, the_summary, udp_burst, Flowtrace, Lab};

/// Sends `sig` to `pid` (kill(2)).
fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a child of this test.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn what_the_ring_holds_at_a_stop_is_shown() {
    let lab = Lab::get();
    let dst = lab.inet_ip();
    const PORT: u16 = 9995;
    // Several times the reader's batch (4,096 records) of records, well within the ring:
    // a datagram out makes about eight.
    const SENT: u64 = 3_000;
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "--snaplen", "0"]);
    let pid = ft.pid();
    // flowtrace cannot read while it is stopped: the kernel keeps committing records.
    signal(pid, libc::SIGSTOP);
    udp_burst(
        &lab,
        "ens_monitor_cron",
        dst,
        PORT,
        SENT,
        b"read me at the end",
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The stop is waiting when it resumes: it finds every record in the ring at once.
    signal(pid, libc::SIGINT);
    signal(pid, libc::SIGCONT);
    // Signal 0 sends nothing: this only waits for the exit.
    let (ok, out, err) = ft.signal_and_wait(0);
    assert!(ok, "{err}");
    let lines: Vec<_> = out.iter().map(|l| common::line(l)).collect();
    let summary = the_summary(&lines);
    assert_eq!(summary.lost, 0, "the ring held them all: {summary:?}");
    let to_port = format!("{dst}:{PORT}");
    let shown: Vec<_> = packets(&lines)
        .into_iter()
        .filter(|p| p.dst.as_deref() == Some(to_port.as_str()) && p.way.as_deref() == Some("out"))
        .collect();
    assert_eq!(
        shown.len() as u64,
        SENT,
        "every datagram sent before the stop is shown: {summary:?}"
    );
    // Each with its whole path out, not cut short at the stop.
    let veth = lab.host_veth();
    for p in shown {
        tc_hop(p, &veth, "ingress");
        assert!(
            p.hops.len() >= 4,
            "the whole path, not its first hops: {}",
            show(p)
        );
    }
    assert_eq!(summary.discarded.forced, 0, "{summary:?}");
}
