//! Privileged end-to-end tests of flowtrace's lifecycle: every way out leaves the host as it
//! found it, instances do not disturb each other, and non-Docker targets work. Run through
//! `cargo xtask test`.

mod common;

use std::process::Command;

use common::{
    counted, is_on_the_uplink, leftovers, line, packets, show, tcp, the_summary, Flowtrace, From,
    Lab, Line, Packet,
};

fn cron() -> From {
    From::Container("ens_monitor_cron".into())
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn sigterm_flushes_summarises_and_detaches() {
    let lab = Lab::get();
    // SIGHUP (a dropped ssh session) and SIGQUIT end the run as SIGTERM does.
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
    ] {
        let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
        tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (ok, out, err) = ft.signal_and_wait(sig);
        assert!(ok, "{name} is an orderly exit: {err}");
        // The kernel's tracepoint has the caller's address (since 6.3): the full program
        // loads (a verifier refusal would fall back to the older form's without a word).
        if kernel_at_least(6, 3) && std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            assert!(
                err.lines().any(|l| l == "attached consume_skb via tp_btf"),
                "{err}"
            );
        }
        let last = line(out.last().expect("output"));
        let Line::Summary(s) = &last else {
            panic!("{name}: the last line is not the summary: {last:?}")
        };
        assert!(s.packets > 0, "{name}: {s:?}");
        assert_eq!(leftovers(&lab.host_veth()), "", "{name}");
    }
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
    assert_eq!(leftovers(&lab.host_veth()), "");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn two_instances_on_one_container_both_work_and_do_not_disturb_each_other() {
    let lab = Lab::get();
    let a = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let b = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let s1 = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    let first = a.stop();
    // b keeps working after a detached.
    let s2 = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    let second = b.stop();
    let has = |lines: &[Line], sport: u16| {
        let src = format!("{}:{sport}", lab.container_ip());
        packets(lines)
            .iter()
            .any(|p| p.src.as_deref() == Some(src.as_str()))
    };
    assert!(has(&first, s1), "instance a saw its traffic");
    assert!(
        has(&second, s1) && has(&second, s2),
        "instance b saw traffic before and after a left"
    );
    assert_eq!(leftovers(&lab.host_veth()), "");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_bare_network_namespace_is_traced_without_docker() {
    let lab = Lab::get();
    let ns = format!("/run/netns/{}", lab.inet_netns());
    let ft = Flowtrace::start(&["--netns", &ns, "--json"]);
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    let lines = ft.stop();
    // MASQUERADE's port is the container's unless conntrack held that one: the SYN is the
    // one from the uplink's address whose port is `sport` or, failing that, any port.
    let server = format!("{}:8080", lab.inet_ip());
    let syns: Vec<&Packet> = packets(&lines)
        .into_iter()
        .filter(|p| {
            p.src.as_deref().is_some_and(|s| is_on_the_uplink(&lab, s))
                && p.dst.as_deref() == Some(server.as_str())
                && p.tcp_flags.as_deref() == Some("S")
        })
        .collect();
    let outside = format!("{}:{sport}", lab.uplink_ip());
    let syn = syns
        .iter()
        .find(|p| p.src.as_deref() == Some(outside.as_str()))
        .or(syns.first())
        .unwrap_or_else(|| panic!("the SYN into the namespace: {lines:?}"));
    assert_eq!(
        syn.container.as_deref(),
        Some(lab.inet_netns().as_str()),
        "{}",
        show(syn)
    );
    assert_eq!(
        syn.way.as_deref(),
        Some("in"),
        "from the namespace's point of view the SYN comes in"
    );
}

/// Arguments, environment, and what the error must say.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowtrace"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("flowtrace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn every_bad_input_is_one_sentence_a_hint_and_a_non_zero_exit() {
    let lab = Lab::get();
    let junk = std::env::temp_dir().join(format!("flowtrace-junk-{}.pcapng", std::process::id()));
    std::fs::write(&junk, b"this is not a capture file at all").expect("junk file");
    let junk = junk.to_str().expect("utf8").to_owned();
    // A log file that is a link to a file root owns: refused, the target untouched.
    let link = std::env::temp_dir().join(format!("flowtrace-log-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&junk, &link).expect("symlink");
    let link = link.to_str().expect("utf8").to_owned();
    let cases: Vec<Case> = vec![
        (
            vec!["-i", "lo", "--log-file", &link],
            vec![],
            "is a symbolic link",
        ),
        (
            vec!["-c", "ens_monitr_cron"],
            vec![],
            "did you mean ens_monitor_cron?",
        ),
        (
            vec!["-c", "x"],
            vec![("DOCKER_HOST", "unix:///nonexistent.sock")],
            "cannot reach the Docker daemon",
        ),
        (
            vec!["-i", "nosuch0"],
            vec![],
            "no interface named `nosuch0`",
        ),
        (vec!["read", &junk], vec![], "cannot read"),
        (vec![], vec![], "nothing to trace"),
    ];
    for (args, env, want) in cases {
        let (code, err) = run(&args, &env);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(err.contains("hint:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 2, "one sentence and a hint: {err}");
    }
    // Bad values are refused by the argument parser, before anything happens.
    for (args, want) in [
        (
            vec!["-c", "x", "--duration", "soon"],
            "invalid duration `soon`",
        ),
        (
            vec!["-c", "x", "-d", "99999999999999999999"],
            "invalid duration `99999999999999999999`",
        ),
        (
            vec!["-c", ""],
            "`` is not a Docker container or network name",
        ),
        (
            vec!["-n", "../x"],
            "`../x` is not a Docker container or network name",
        ),
        (vec!["-c", "x", "--count", "0"], "0 is not in 1.."),
        (
            vec![
                "-c",
                "x",
                "-w",
                "/tmp/x",
                "--rotate",
                "1M",
                "--max-files",
                "0",
            ],
            "0 is not in 1..",
        ),
        (vec!["-c", "x", "--snaplen", "99999999999"], "is not in 0.."),
    ] {
        let (code, err) = run(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Not root: say so and name the capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_flowtrace"),
            "-i",
            "lo",
        ])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("root is needed") && err.contains("CAP_BPF"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&junk).expect("the link's target"),
        b"this is not a capture file at all"
    );
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&junk);
    assert_eq!(leftovers(&lab.host_veth()), "");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_flood_reports_lost_events_while_the_counters_stay_exact() {
    let lab = Lab::get();
    let dst = lab.inet_ip();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "--snaplen", "0"]);
    const SENT: u64 = 30_000;
    common::udp_burst(&lab, "ens_monitor_cron", dst, 9999, SENT, &[0x5a; 1400]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let lines = ft.stop();
    let summary = the_summary(&lines);
    let lost = summary.lost;
    assert!(
        lost > 0,
        "the flood overflowed the ring buffer: {summary:?}"
    );
    assert!(
        lines.iter().any(|l| matches!(l, Line::Lost(_))),
        "loss reported as it happened"
    );
    // Every kind of kernel record lost is counted, and they add up to the total.
    let by = summary.lost_by;
    assert_eq!(by.tc + by.netfilter + by.end, lost, "{summary:?}");
    assert!(
        by.tc > 0 && by.netfilter > 0 && by.end > 0,
        "each kind of record was lost and counted: {by:?}"
    );
    let veth_in = counted(summary, &lab.host_veth(), "ingress");
    // Every datagram, counted by the kernel, however many events were lost (a few ARP/TCP
    // packets of the container may add to it).
    assert!(
        (SENT..SENT + 50).contains(&veth_in),
        "sent {SENT}, counted {veth_in}, lost {lost}"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn what_the_kernel_evicts_from_its_full_tables_is_reported() {
    let lab = Lab::get();
    let dst = lab.inet_ip();
    const PORT: u16 = 9997;
    lab.assert_safe(&cron(), dst);
    // A socket in the lab's internet that never reads: every datagram stays alive in its
    // queue, so each one keeps its TRACKED entry until the kernel evicts it.
    let inet = format!("/run/netns/{}", lab.inet_netns());
    let sink = common::in_netns(&inet, || {
        std::net::UdpSocket::bind(("0.0.0.0", PORT)).expect("bind in the lab's internet")
    });
    // Tables of 16 entries (a debug-build-only knob), filled by 120 datagrams, each from a
    // port of its own: a flow MASQUERADE maps each.
    const SENT: usize = 120;
    let ft = Flowtrace::start_with_env(
        &["-c", "ens_monitor_cron", "--json"],
        &[
            ("FLOWTRACE_TEST_TRACKED_MAX", "16"),
            ("FLOWTRACE_TEST_FLOWS_MAX", "16"),
        ],
    );
    let pid = lab.container_pid("ens_monitor_cron");
    common::in_netns(&format!("/proc/{pid}/ns/net"), || {
        for _ in 0..SENT {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.send_to(b"kept", (dst, PORT)).expect("send");
        }
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    let lines = ft.stop();
    drop(sink);
    let summary = the_summary(&lines);
    let evicted = summary.kernel_evicted;
    // At most 16 of each can still be there.
    assert!(
        evicted.tracked >= (SENT - 40) as u64 && evicted.tracked <= SENT as u64 + 10,
        "packets the kernel stopped following: {summary:?}"
    );
    assert!(
        evicted.flows >= (SENT - 40) as u64 && evicted.flows <= SENT as u64 + 10,
        "NAT'd flows the kernel forgot: {summary:?}"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn counters_only_mode_counts_exactly_without_per_packet_events() {
    let lab = Lab::get();
    let dst = lab.inet_ip();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--counters", "--json"]);
    const SENT: u64 = 500;
    common::udp_burst(&lab, "ens_monitor_cron", dst, 9999, SENT, b"count me");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let lines = ft.stop();
    assert!(
        packets(&lines).is_empty(),
        "no per-packet output in --counters mode"
    );
    assert!(
        lines.iter().any(|l| matches!(l, Line::Counters(_))),
        "periodic counters: {lines:?}"
    );
    let summary = the_summary(&lines);
    assert_eq!(summary.lost, 0, "nothing to lose without events");
    let veth_in = counted(summary, &lab.host_veth(), "ingress");
    assert!(
        (SENT..SENT + 20).contains(&veth_in),
        "sent {SENT}, counted {veth_in}"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_panic_after_attaching_leaves_nothing_behind() {
    // The hook that panics is compiled into debug builds alone (`session::trace`); a release
    // flowtrace, built with these tests by `cargo test --release`, would trace until its
    // duration ends and prove nothing.
    if !cfg!(debug_assertions) {
        eprintln!("skipped: a release flowtrace has no test panic");
        return;
    }
    let lab = Lab::get();
    // Bounded: were the hook ever missing, the run ends (and the test fails) instead of hanging.
    let out = Command::new(env!("CARGO_BIN_EXE_flowtrace"))
        .args(["-c", "ens_monitor_cron", "--json", "--duration", "30s"])
        .env("FLOWTRACE_TEST_PANIC_AFTER_ATTACH", "1")
        .output()
        .expect("flowtrace");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("panicked") && err.contains("FLOWTRACE_TEST_PANIC_AFTER_ATTACH"),
        "{err}"
    );
    assert_eq!(
        leftovers(&lab.host_veth()),
        "",
        "links and programs outlived a panic"
    );
}

/// The capabilities kept after start-up: CAP_NET_ADMIN (12), CAP_NET_RAW (13),
/// CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21), CAP_PERFMON (38), CAP_BPF (39).
const KEPT_CAPS: u64 = (1 << 12) | (1 << 13) | (1 << 19) | (1 << 21) | (1 << 38) | (1 << 39);

/// `CapEff`, `CapBnd` and `NoNewPrivs` of every thread of a process.
fn thread_privileges(pid: u32) -> Vec<(String, u64, u64, u32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let hex = |k: &str| u64::from_str_radix(&field(k), 16).unwrap_or(u64::MAX);
        out.push((
            field("Name:"),
            hex("CapEff:"),
            hex("CapBnd:"),
            field("NoNewPrivs:").parse().unwrap_or(0),
        ));
    }
    out
}

/// Least privilege: once attached, every thread of flowtrace keeps only the capabilities it
/// still uses, in its effective and bounding sets, with no_new_privs; and it still follows
/// the container (a restart re-attaches, a drop is still named).
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn after_start_up_every_thread_keeps_only_the_capabilities_it_uses() {
    let lab = Lab::get();
    // With a recording: its writing thread was started before the lowering.
    let rec = std::env::temp_dir().join(format!("flowtrace-privs-{}.pcapng", std::process::id()));
    let rec_s = rec.display().to_string();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "--write", &rec_s]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let threads = thread_privileges(ft.pid());
    assert!(threads.len() >= 3, "{threads:?}");
    assert!(threads.iter().any(|t| t.0 == "recording"), "{threads:?}");
    for (name, eff, bnd, nnp) in &threads {
        assert_eq!(*eff, KEPT_CAPS, "thread {name}: CapEff {eff:016x}");
        assert_eq!(*bnd, KEPT_CAPS, "thread {name}: CapBnd {bnd:016x}");
        assert_eq!(*nnp, 1, "thread {name}: NoNewPrivs");
    }
    assert!(
        ft.stderr_text().contains("privileges: dropped"),
        "{}",
        ft.stderr_text()
    );
    // Still working with only those: a drop named (the ruleset read again), an echo traced.
    let _ = tcp(&lab, &cron(), lab.inet_ip(), lab.drop_port());
    tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    let lines = ft.stop();
    let want = format!("{}:{}", lab.inet_ip(), lab.drop_port());
    let dropped = common::packets(&lines)
        .into_iter()
        .find(|p| p.dst.as_deref() == Some(want.as_str()) && p.drop.is_some())
        .expect("the drop");
    assert_eq!(
        dropped.drop.as_ref().and_then(|d| d.rule.clone()),
        Some(lab.drop_rule())
    );
    let _ = std::fs::remove_file(rec);
}

/// A user who is not root but holds the capabilities flowtrace needs may run it.
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_non_root_user_with_the_capabilities_may_trace() {
    let caps = "+bpf,+perfmon,+net_admin,+sys_admin,+net_raw,+sys_ptrace";
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            env!("CARGO_BIN_EXE_flowtrace"),
            "-i",
            "lo",
            "--json",
            "-d",
            "2s",
        ])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("tracing"), "{err}");
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(line)
        .expect("a summary");
    assert!(matches!(last, Line::Summary(_)), "{last:?}");
}

/// Ctrl-C while start-up waits on a Docker that does not answer is honoured at once.
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn ctrl_c_during_start_up_is_honoured_at_once() {
    let sock = std::env::temp_dir().join(format!("ft-mute-docker-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    // A "Docker" that accepts connections and never answers.
    let py = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_UNIX); s.bind('{}'); s.listen(8)\n\
         conns = []\n\
         while True:\n\
         \x20   c, _ = s.accept(); conns.append(c)\n",
        sock.display()
    );
    let mut mute = Command::new("python3")
        .args(["-c", &py])
        .spawn()
        .expect("python3");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut ft = Command::new(env!("CARGO_BIN_EXE_flowtrace"))
        .args(["-c", "ens_monitor_cron", "--json"])
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("flowtrace");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        ft.try_wait().expect("wait").is_none(),
        "still waiting for Docker"
    );
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(ft.id() as i32, libc::SIGINT) };
    let asked = std::time::Instant::now();
    let status = loop {
        if let Some(s) = ft.try_wait().expect("wait") {
            break s;
        }
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(3),
            "SIGINT during start-up was not honoured at once"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = (mute.kill(), mute.wait());
    let _ = std::fs::remove_file(&sock);
    let mut err = String::new();
    if let Some(mut e) = ft.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("SIGINT during start-up"), "{err}");
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}
