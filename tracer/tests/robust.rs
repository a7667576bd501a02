//! Privileged end-to-end tests of flowtrace's lifecycle: every way out leaves the host as it
//! found it, instances do not disturb each other, and non-Docker targets work. Run through
//! `cargo xtask test`.

mod common;

use std::process::Command;

use common::{leftovers, packets, tcp, Flowtrace, From, Lab};
use serde_json::Value;

fn cron() -> From {
    From::Container("ens_monitor_cron".into())
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn sigterm_flushes_summarises_and_detaches() {
    let lab = Lab::get();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("tcp");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ok, out, err) = ft.signal_and_wait(libc::SIGTERM);
    assert!(ok, "SIGTERM is an orderly exit: {err}");
    let last: Value = serde_json::from_str(out.last().expect("output")).expect("json");
    assert_eq!(last["type"], "summary");
    assert!(last["packets"].as_u64().unwrap_or(0) > 0, "{last}");
    assert_eq!(leftovers(&lab.s("host_veth")), "");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn an_error_after_attaching_says_one_sentence_and_detaches() {
    let lab = Lab::get();
    let out = Command::new(env!("CARGO_BIN_EXE_flowtrace"))
        .args([
            "-c",
            "ens_monitor_cron",
            "--write",
            "/nonexistent-dir/trace.pcapng",
        ])
        .output()
        .expect("flowtrace");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flowtrace: cannot write /nonexistent-dir/trace.pcapng"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(leftovers(&lab.s("host_veth")), "");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn two_instances_on_one_container_both_work_and_do_not_disturb_each_other() {
    let lab = Lab::get();
    let a = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let b = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let s1 = tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("tcp");
    let first = a.stop();
    // b keeps working after a detached.
    let s2 = tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("tcp");
    let second = b.stop();
    let has = |lines: &[Value], sport: u16| {
        let src = format!("{}:{sport}", lab.s("container_ip"));
        packets(lines).iter().any(|p| p["src"] == src.as_str())
    };
    assert!(has(&first, s1), "instance a saw its traffic");
    assert!(
        has(&second, s1) && has(&second, s2),
        "instance b saw traffic before and after a left"
    );
    assert_eq!(leftovers(&lab.s("host_veth")), "");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_bare_network_namespace_is_traced_without_docker() {
    let lab = Lab::get();
    let ns = format!("/run/netns/{}", lab.s("inet_netns"));
    let ft = Flowtrace::start(&["--netns", &ns, "--json"]);
    let sport = tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("tcp");
    let lines = ft.stop();
    let outside = format!("{}:{sport}", lab.s("uplink_ip"));
    let syn = packets(&lines)
        .into_iter()
        .find(|p| p["src"] == outside.as_str() && p["tcp_flags"] == "S")
        .unwrap_or_else(|| panic!("the SYN into the namespace: {lines:?}"));
    assert_eq!(syn["container"], lab.s("inet_netns").as_str());
    assert_eq!(
        syn["way"], "in",
        "from the namespace's point of view the SYN comes in"
    );
}
