//! Privileged end-to-end test of the dashboard: the real binary in a real terminal (tmux)
//! against the lab. Run through `cargo xtask test`.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::Command,
    time::{Duration, Instant},
};

use common::{leftovers, tcp, From, Lab};

/// A tmux session, killed on drop even when the test fails.
struct Tmux(String);

impl Tmux {
    fn start(cmd: &str) -> Self {
        let name = format!("flowtrace-e2e-{}", std::process::id());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "120",
                "-y",
                "40",
                cmd,
            ])
            .status()
            .expect("tmux (run `cargo xtask setup`)")
            .success();
        assert!(ok, "tmux new-session failed");
        Self(name)
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, text: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            assert!(Instant::now() < deadline, "`{text}` never appeared:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn keys(&self, keys: &str) {
        Command::new("tmux")
            .args(["send-keys", "-t", &self.0, keys])
            .status()
            .expect("send-keys");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn the_dashboard_shows_counters_and_the_drop_and_q_leaves_nothing_behind() {
    let lab = Lab::get();
    let veth = lab.host_veth();
    let cmd = format!(
        "{} -c ens_monitor_cron; echo EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_flowtrace")
    );
    let tmux = Tmux::start(&cmd);
    tmux.wait_for(" LIVE ", 30);
    let cron = From::Container("ens_monitor_cron".into());
    tcp(&lab, &cron, lab.inet_ip(), 8080).expect("tcp echo");
    let _ = tcp(&lab, &cron, lab.inet_ip(), lab.drop_port());
    let screen = tmux.wait_for("NETFILTER_DROP", 10);

    // Per-hop counters: the veth's outgoing packet count is not zero.
    let row = screen
        .lines()
        .find(|l| l.trim_start().starts_with(&veth))
        .unwrap_or_else(|| panic!("no row for {veth}:\n{screen}"));
    let out_pkts: u64 = row
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in `{row}`"));
    assert!(out_pkts > 0, "{row}");
    assert!(
        screen.contains("FORWARD/filter"),
        "the drop's hook and table:\n{screen}"
    );
    assert!(
        screen.contains("-A DOCKER-USER"),
        "the drop's rule:\n{screen}"
    );
    assert!(
        screen.contains("PREROUTING") && screen.contains("POSTROUTING"),
        "netfilter hooks:\n{screen}"
    );

    // The help overlay, then q: the terminal comes back and flowtrace exits cleanly.
    tmux.keys("?");
    tmux.wait_for("quit", 5);
    tmux.keys("Escape");
    tmux.keys("q");
    let after = tmux.wait_for("EXIT=", 15);
    assert!(after.contains("EXIT=0"), "{after}");
    assert!(
        after.contains("packets,"),
        "the summary after the dashboard:\n{after}"
    );
    assert_eq!(
        leftovers(&veth),
        "",
        "a tc attachment outlived the dashboard"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn nothing_scribbles_over_the_dashboard_and_the_log_file_keeps_it_all() {
    let lab = Lab::get();
    let log = std::env::temp_dir().join(format!("flowtrace-e2e-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    // -vv: the Docker client and the re-attachment log as they work, while the dashboard is up.
    let cmd = format!(
        "{} -c ens_monitor_cron -vv --log-file {}; echo EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_flowtrace"),
        log.display()
    );
    let tmux = Tmux::start(&cmd);
    tmux.wait_for(" LIVE ", 30);
    // A restart: the container's notes and the logs of following it arrive with the
    // dashboard up.
    let ok = Command::new("docker")
        .args(["restart", "-t", "1", "ens_monitor_cron"])
        .status()
        .expect("docker restart")
        .success();
    assert!(ok, "docker restart");
    let screen = tmux.wait_for("(re)started", 20);
    std::thread::sleep(Duration::from_secs(1));
    let screen = {
        let later = tmux.screen();
        if later.trim().is_empty() {
            screen
        } else {
            later
        }
    };
    let rows: Vec<&str> = screen.lines().collect();
    // Every row above the status line is the dashboard's own: no log line, no note.
    let last = rows.iter().rposition(|r| !r.trim().is_empty()).unwrap_or(0);
    for (i, row) in rows.iter().enumerate().take(last) {
        for raw in [
            "debug",
            "unix://",
            "Decoding",
            "(re)started",
            "waiting for it",
        ] {
            assert!(
                !row.contains(raw),
                "row {i} has `{raw}` written over the dashboard:\n{screen}"
            );
        }
    }
    assert!(
        rows.iter().any(|r| r.contains(" pkts │")),
        "the status line is drawn:\n{screen}"
    );
    tmux.keys("q");
    let after = tmux.wait_for("EXIT=", 15);
    assert!(after.contains("EXIT=0"), "{after}");
    // The log file has what the status line showed only for a moment, with times, mode 0600.
    let text = std::fs::read_to_string(&log).expect("the log file");
    let mode = std::fs::metadata(&log).map(|m| m.permissions().mode() & 0o777);
    let _ = std::fs::remove_file(&log);
    assert_eq!(mode.ok(), Some(0o600), "the log file's mode");
    for want in [
        "note attached tc ingress+egress",
        "note container ens_monitor_cron stopped; waiting for it to start again",
        "note container ens_monitor_cron (re)started",
        "debug Decoding JSON line from stream",
    ] {
        assert!(text.contains(want), "the log file lacks `{want}`:\n{text}");
    }
    assert_eq!(leftovers(&lab.host_veth()), "");
}
