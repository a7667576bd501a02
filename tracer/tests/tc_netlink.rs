//! The clsact/netlink fallback (`--tc-attach netlink`), which kernels before 6.6 take: it traces
//! like TCX, leaves nothing after an orderly exit, does not pull the qdisc from under a second
//! instance, and what a SIGKILLed run leaves is removed by the next start, which says so.

mod common;

use std::process::Command;

use common::{leftovers, packets, tcp, Flowtrace, From, Lab, Line};
use serde_json::Value;

fn cron() -> From {
    From::Container("ens_monitor_cron".into())
}

/// Our bpf filters on `iface` (ingress and egress), as `tc -j filter show` lists them.
fn bpf_filters(iface: &str) -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["ingress", "egress"] {
        let o = Command::new("tc")
            .args(["-j", "filter", "show", "dev", iface, dir])
            .output()
            .expect("tc");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        for f in v.as_array().into_iter().flatten() {
            if let Some(name) = f["options"]["bpf_name"].as_str() {
                out.push(format!("{dir} pref {} {name}", f["pref"]));
            }
        }
    }
    out
}

fn has_clsact(iface: &str) -> bool {
    let o = Command::new("tc")
        .args(["qdisc", "show", "dev", iface])
        .output()
        .expect("tc");
    String::from_utf8_lossy(&o.stdout).contains("clsact")
}

/// Removes a clsact qdisc from the lab's veth when dropped, even if the test failed, unless it
/// was there before the test (the lab never adds one).
struct ClsactGuard(String);

impl ClsactGuard {
    fn new(iface: &str) -> Self {
        assert!(!has_clsact(iface), "the lab's veth starts without clsact");
        Self(iface.to_owned())
    }
}

impl Drop for ClsactGuard {
    fn drop(&mut self) {
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", &self.0, "clsact"])
            .output();
    }
}

fn saw(lines: &[Line], lab: &Lab, sport: u16) -> bool {
    let src = format!("{}:{sport}", lab.container_ip());
    packets(lines)
        .iter()
        .any(|p| p.src.as_deref() == Some(src.as_str()))
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn netlink_mode_traces_and_leaves_nothing_on_exit() {
    let lab = Lab::get();
    let veth = lab.host_veth();
    let _clean = ClsactGuard::new(&veth);
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "--tc-attach", "netlink"]);
    let err = ft.stderr_text();
    assert!(
        err.contains(&format!("on {veth} (veth")) && err.contains("via clsact/netlink"),
        "the start-up says which mechanism was used:\n{err}"
    );
    let filters = bpf_filters(&veth);
    assert_eq!(filters.len(), 2, "one filter each way: {filters:?}");
    let ledger = format!("/run/flowtrace/tc-{}", ft.pid());
    assert!(std::path::Path::new(&ledger).exists(), "{ledger} written");
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    let lines = ft.stop();
    assert!(saw(&lines, &lab, sport), "the TCP packet was traced");
    assert_eq!(leftovers(&veth), "");
    assert!(
        !has_clsact(&veth),
        "the clsact qdisc flowtrace added is gone"
    );
    assert!(!std::path::Path::new(&ledger).exists(), "{ledger} removed");
    assert!(
        !std::path::Path::new("/run/flowtrace").exists(),
        "and its directory, now empty"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn two_netlink_instances_do_not_pull_the_qdisc_from_under_each_other() {
    let lab = Lab::get();
    let veth = lab.host_veth();
    let _clean = ClsactGuard::new(&veth);
    let a = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "--tc-attach", "netlink"]);
    let b = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "--tc-attach", "netlink"]);
    assert_eq!(bpf_filters(&veth).len(), 4, "two filters each");
    a.stop();
    // a added the qdisc; b's filters hang on it, so it must still be there.
    assert_eq!(bpf_filters(&veth).len(), 2, "b's filters survive a's exit");
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    let lines = b.stop();
    assert!(saw(&lines, &lab, sport), "b still traces after a left");
    assert_eq!(leftovers(&veth), "");
    assert!(!has_clsact(&veth), "the last one out removed the qdisc");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_killed_netlink_run_is_cleaned_up_by_the_next_start() {
    let lab = Lab::get();
    let veth = lab.host_veth();
    let _clean = ClsactGuard::new(&veth);
    let mut killed =
        Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "--tc-attach", "netlink"]);
    let pid = killed.pid();
    killed.kill();
    // SIGKILL: netlink filters are not fd-owned, so they outlive the process.
    let left = bpf_filters(&veth);
    assert_eq!(left.len(), 2, "the killed run's filters are still there");
    assert!(has_clsact(&veth));

    // The next start (TCX here) removes them and says so.
    let next = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let err = next.stderr_text();
    assert!(
        err.contains(&format!(
            "removed what a killed flowtrace (pid {pid}) left:"
        )),
        "the next start says what it cleaned up:\n{err}"
    );
    assert_eq!(
        bpf_filters(&veth),
        Vec::<String>::new(),
        "stale filters gone"
    );
    assert!(!has_clsact(&veth), "the stale clsact qdisc is gone");
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    let lines = next.stop();
    assert!(saw(&lines, &lab, sport), "the new run traces");
    assert!(!std::path::Path::new(&format!("/run/flowtrace/tc-{pid}")).exists());
    assert_eq!(leftovers(&veth), "");
}
