//! Privileged end-to-end tests of recording (`--write`) and replay (`flowtrace read`), in the
//! lab. Run through `cargo xtask test`.

mod common;

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, process::Command};

use common::{leftovers, packets, tcp, tcp_sized, Flowtrace, From, Hop, Lab, Line, Packet};

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowtrace-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn tshark(file: &std::path::Path, fields: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark (run `cargo xtask setup`)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// tshark's stderr without its note about running as root.
fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("Running as user \"root\""))
        .collect()
}

/// `flowtrace read --json FILE EXPRESSION…`: its packets.
fn read_packets(file: &std::path::Path, expression: &[&str]) -> Vec<Packet> {
    let read = Command::new(env!("CARGO_BIN_EXE_flowtrace"))
        .args(["read", "--json"])
        .arg(file)
        .args(expression)
        .output()
        .expect("flowtrace read");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    String::from_utf8_lossy(&read.stdout)
        .lines()
        .filter_map(|l| Line::parse(l).ok())
        .filter_map(|l| match l {
            Line::Packet(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// Whether one of the packet's addresses (its own, a hop's, a rewrite's) has `port`.
fn has_port(p: &Packet, port: &str) -> bool {
    let suffix = format!(":{port}");
    let mut addrs = vec![p.src.as_deref(), p.dst.as_deref()];
    for h in &p.hops {
        let (src, dst) = match h {
            Hop::Tc(t) => (&t.src, &t.dst),
            Hop::Nf(n) => (&n.src, &n.dst),
        };
        addrs.extend([src.as_deref(), dst.as_deref()]);
        if let Some(n) = h.nat() {
            addrs.extend([Some(&*n.from), Some(&*n.to)]);
        }
    }
    addrs.into_iter().flatten().any(|a| a.ends_with(&suffix))
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_recording_opens_in_tshark_and_replays_exactly_as_the_live_run() {
    let lab = Lab::get();
    let dir = tmpdir("record");
    let file = dir.join("trace.pcapng");
    let cron = From::Container("ens_monitor_cron".into());
    let ft = Flowtrace::start(&[
        "-c",
        "ens_monitor_cron",
        "--json",
        "--write",
        file.to_str().expect("utf8"),
    ]);
    tcp(&lab, &cron, lab.inet_ip(), 8080).expect("tcp echo");
    let _ = tcp(&lab, &cron, lab.inet_ip(), lab.drop_port());
    let live = ft.stop();
    let live_packets: Vec<Packet> = packets(&live).into_iter().cloned().collect();
    assert!(live_packets.len() >= 4, "{live:?}");

    let mode = std::fs::metadata(&file)
        .expect("recorded")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "packet contents are sensitive");

    // tshark decodes it, without warnings, with our interface names and comments.
    let (ok, out, err) = tshark(&file, &["frame.interface_name", "frame.comment", "ip.src"]);
    assert!(ok, "tshark failed: {err}");
    assert!(warnings(&err).is_empty(), "tshark warned: {err}");
    let mut per_iface: BTreeMap<String, usize> = BTreeMap::new();
    for line in out.lines() {
        let name = line.split('|').next().unwrap_or("").to_owned();
        *per_iface.entry(name).or_default() += 1;
    }
    let veth_in = format!("{} tc-ingress", lab.host_veth());
    assert!(per_iface.contains_key(&veth_in), "{per_iface:?}");
    assert!(per_iface.contains_key("FORWARD/filter"), "{per_iface:?}");
    assert!(per_iface.contains_key("POSTROUTING/nat"), "{per_iface:?}");
    assert!(
        out.contains("NETFILTER_DROP") && out.contains(&lab.drop_rule()),
        "the drop in frame.comment"
    );
    assert!(out.contains("SNAT"), "the MASQUERADE in frame.comment");
    // Wall-clock timestamps: tshark dates the blocks today, not minutes after 1970.
    let (ok, times, err) = tshark(&file, &["frame.time_epoch"]);
    assert!(ok, "tshark failed: {err}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for t in times.lines() {
        let t: f64 = t.trim().parse().expect("an epoch time");
        assert!((now - t).abs() < 600.0, "a block dated {t}, now is {now}");
    }
    // One block per hop: per-interface counts match the hops of the live output.
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for p in packets(&live) {
        for h in &p.hops {
            let name = match h {
                Hop::Tc(t) => format!("{} tc-{}", t.iface, t.dir),
                Hop::Nf(n) => format!("{}/{}", n.hook, n.table),
            };
            *want.entry(name).or_default() += 1;
        }
    }
    assert_eq!(per_iface, want);

    // flowtrace read prints exactly what the live run printed.
    assert_eq!(read_packets(&file, &[]), live_packets);

    // With a filter expression, as `tcpdump -r FILE EXPR`: only the dropped connection.
    let port = lab.drop_port().to_string();
    let filtered = read_packets(&file, &["tcp", "port", &port]);
    let want: Vec<&Packet> = live_packets.iter().filter(|p| has_port(p, &port)).collect();
    assert!(!want.is_empty() && want.len() < live_packets.len());
    assert_eq!(filtered.iter().collect::<Vec<_>>(), want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_recorder_killed_with_sigkill_leaves_a_readable_file_and_no_attachments() {
    let lab = Lab::get();
    let dir = tmpdir("sigkill");
    let file = dir.join("killed.pcapng");
    let cron = From::Container("ens_monitor_cron".into());
    let mut ft = Flowtrace::start(&[
        "-c",
        "ens_monitor_cron",
        "--write",
        file.to_str().expect("utf8"),
    ]);
    for _ in 0..5 {
        tcp(&lab, &cron, lab.inet_ip(), 8080).expect("tcp echo");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    ft.kill();
    let (ok, out, err) = tshark(&file, &["frame.number"]);
    assert!(ok, "tshark cannot read the killed recorder's file: {err}");
    assert!(warnings(&err).is_empty(), "tshark warned: {err}");
    assert!(
        out.lines().count() >= 10,
        "blocks up to the last flush are there: {out}"
    );
    // flowtrace read reads it (read_packets asserts the exit status).
    read_packets(&file, &[]);
    // fd-owned TCX and netfilter links died with the process.
    assert_eq!(leftovers(&lab.host_veth()), "");
    let progs = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    assert!(
        !String::from_utf8_lossy(&progs.stdout).contains("nf_slot"),
        "netfilter programs outlived a SIGKILL"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// As `tcpdump -w`: a recording prints no packets unless asked (`--print`), and records the
/// same packets either way.
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_recording_prints_packets_only_with_print() {
    let lab = Lab::get();
    let dir = tmpdir("print");
    let cron = From::Container("ens_monitor_cron".into());
    for print in [false, true] {
        let file = dir.join(format!("print-{print}.pcapng"));
        let mut args = vec![
            "-c",
            "ens_monitor_cron",
            "--write",
            file.to_str().expect("utf8"),
        ];
        if print {
            args.push("--print");
        }
        let ft = Flowtrace::start(&args);
        tcp(&lab, &cron, lab.inet_ip(), 8080).expect("tcp echo");
        let out = ft.stop_text();
        let recorded = read_packets(&file, &[]);
        assert!(recorded.len() >= 4, "print {print}: {recorded:?}");
        // A packet's text names the hooks it passed.
        let shown = out.iter().filter(|l| l.contains("FORWARD")).count();
        if print {
            assert!(shown >= 4, "--print prints the packets: {out:?}");
        } else {
            assert_eq!(shown, 0, "--write alone prints no packets: {out:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn rotation_keeps_the_newest_files_each_readable() {
    let lab = Lab::get();
    let dir = tmpdir("rotate");
    let file = dir.join("r.pcapng");
    let cron = From::Container("ens_monitor_cron".into());
    let ft = Flowtrace::start(&[
        "-c",
        "ens_monitor_cron",
        "--write",
        file.to_str().expect("utf8"),
        "--rotate",
        "8K",
        "--max-files",
        "2",
    ]);
    for _ in 0..15 {
        tcp(&lab, &cron, lab.inet_ip(), 8080).expect("tcp echo");
    }
    ft.stop_text();
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        let (ok, _, err) = tshark(f, &["frame.number"]);
        assert!(ok && warnings(&err).is_empty(), "{}: {err}", f.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `(frame.len, frame.cap_len)` of every Ethernet (tc) block of a recording.
fn tc_lengths(file: &std::path::Path) -> Vec<(usize, usize)> {
    let (ok, out, err) = tshark(
        file,
        &["frame.interface_name", "frame.len", "frame.cap_len"],
    );
    assert!(ok, "{err}");
    out.lines()
        .filter(|l| l.contains(" tc-"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Some((f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?))
        })
        .collect()
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn snaplen_zero_records_whole_packets_and_the_default_keeps_headers() {
    let lab = Lab::get();
    let dir = tmpdir("snaplen");
    let cron = From::Container("ens_monitor_cron".into());
    let payload = vec![b'x'; 1000];
    for (name, snaplen) in [("whole.pcapng", "0"), ("default.pcapng", "")] {
        let file = dir.join(name);
        let mut args = vec![
            "-c",
            "ens_monitor_cron",
            "--write",
            file.to_str().expect("utf8"),
        ];
        if !snaplen.is_empty() {
            args.extend(["--snaplen", snaplen]);
        }
        let ft = Flowtrace::start(&args);
        tcp_sized(&lab, &cron, lab.inet_ip(), 8080, &payload).expect("tcp echo");
        ft.stop_text();
        let lens = tc_lengths(&file);
        let big: Vec<&(usize, usize)> = lens.iter().filter(|(len, _)| *len > 1000).collect();
        assert!(
            !big.is_empty(),
            "the 1000-byte payload was recorded: {lens:?}"
        );
        for (len, cap) in big {
            if snaplen == "0" {
                assert_eq!(cap, len, "--snaplen 0 keeps whole packets");
            } else {
                assert_eq!(
                    *cap, 128,
                    "the default keeps the first 128 bytes (every header)"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
