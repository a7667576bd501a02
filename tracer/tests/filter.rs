//! Privileged end-to-end tests of tcpdump filter expressions in the lab: libpcap compiles
//! them, the tc programs run them before the ring buffer, and a matching flow is followed
//! across NAT. Run through `cargo xtask test`.

mod common;

use std::process::Command;

use common::{
    counted, de_natted_from, hops, leaves_masqueraded, leftovers, packets, ping, show, tc_hop, tcp,
    the_packet, the_summary, udp, Flowtrace, From, Lab, Packet,
};

fn cron() -> From {
    From::Container("ens_monitor_cron".into())
}

fn proto_of(p: &Packet) -> String {
    p.proto.as_deref().unwrap_or_default().to_owned()
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn tcp_port_8080_keeps_the_tcp_flow_across_nat_and_drops_icmp_and_udp() {
    let lab = Lab::get();
    let (veth, uplink) = (lab.host_veth(), lab.uplink());
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "tcp", "port", "8080"]);
    assert!(
        ft.stderr_text().contains("filter `tcp port 8080`"),
        "the start-up says where the filter runs:\n{}",
        ft.stderr_text()
    );
    assert!(ping(&lab, "ens_monitor_cron", lab.inet_ip(), 3), "ping");
    udp(&lab, &cron(), lab.inet_ip(), 9999).expect("udp echo");
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp echo");
    udp(&lab, &cron(), lab.inet_ip(), 9999).expect("udp echo");
    let lines = ft.stop();

    let shown = packets(&lines);
    let others: Vec<&&Packet> = shown.iter().filter(|p| proto_of(p) != "tcp").collect();
    assert!(others.is_empty(), "only TCP is shown: {others:?}");
    let local = format!("{}:{sport}", lab.container_ip());
    let syn = the_packet(&lines, "SYN from the container", |p| {
        p.src.as_deref() == Some(local.as_str()) && p.tcp_flags.as_deref() == Some("S")
    });
    let outside = leaves_masqueraded(&lab, syn, &local);
    assert_eq!(
        hops(syn),
        vec![
            (veth.clone(), "ingress".to_owned()),
            (lab.bridge(), "ingress".to_owned()),
            (uplink.clone(), "egress".to_owned()),
        ],
        "{}",
        show(syn)
    );
    // The reply arrives for the host's address and is de-NATed: every hop is there.
    let synack = the_packet(&lines, "SYN-ACK to the container", |p| {
        p.dst.as_deref() == Some(local.as_str()) && p.tcp_flags.as_deref() == Some("S.")
    });
    assert_eq!(
        tc_hop(synack, &uplink, "ingress").dst.as_deref(),
        Some(outside.as_str())
    );
    assert_eq!(
        tc_hop(synack, &veth, "egress").dst.as_deref(),
        Some(local.as_str())
    );
    let flow_packets = shown
        .iter()
        .filter(|p| {
            p.src.as_deref() == Some(local.as_str()) || p.dst.as_deref() == Some(local.as_str())
        })
        .count();
    assert!(
        flow_packets >= 6,
        "the whole connection: {flow_packets} packets"
    );

    // The counters still count everything that crossed the veth: 3 echo requests and 2
    // datagrams besides the TCP connection's packets.
    let s = the_summary(&lines);
    assert!(
        counted(s, &veth, "ingress") >= flow_packets as u64 / 2 + 5,
        "{s:?}"
    );
    assert_eq!(s.lost, 0, "{s:?}");
    assert_eq!(leftovers(&veth), "");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_filter_on_the_container_address_follows_masquerade_and_the_reply_before_de_nat() {
    let lab = Lab::get();
    let uplink = lab.uplink();
    let expr = format!("src host {} and udp", lab.container_ip());
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "-f", &expr]);
    let sport = udp(&lab, &cron(), lab.inet_ip(), 9999).expect("udp echo");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.container_ip());
    let shown = packets(&lines);
    let out = the_packet(&lines, "datagram from the container", |p| {
        p.src.as_deref() == Some(local.as_str())
    });
    // After MASQUERADE the source is the uplink's: it no longer matches, and is still shown.
    leaves_masqueraded(&lab, out, &local);
    // The echo never has the container as its source: it is not shown, although its flow
    // was followed in the kernel from the uplink on.
    assert!(
        !shown
            .iter()
            .any(|p| p.dst.as_deref() == Some(local.as_str())),
        "the reply does not match `{expr}`: {shown:?}"
    );

    // `host`: the reply matches after de-NAT, and shows its uplink hop from before it.
    let expr = format!("host {} and udp", lab.container_ip());
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "-f", &expr]);
    let sport = udp(&lab, &cron(), lab.inet_ip(), 9999).expect("udp echo");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.container_ip());
    let reply = the_packet(&lines, "reply to the container", |p| {
        p.dst.as_deref() == Some(local.as_str())
    });
    let outside = de_natted_from(&lab, reply, &local);
    assert_eq!(
        tc_hop(reply, &uplink, "ingress").dst.as_deref(),
        Some(outside.as_str()),
        "the reply before de-NAT: {}",
        show(reply)
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_packet_level_filter_shows_only_the_packets_that_match() {
    let lab = Lab::get();
    let ft = Flowtrace::start(&[
        "-c",
        "ens_monitor_cron",
        "--json",
        "tcp[tcpflags] & tcp-syn != 0",
    ]);
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp echo");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.container_ip());
    let flags: Vec<String> = packets(&lines)
        .iter()
        .filter(|p| {
            p.src.as_deref() == Some(local.as_str()) || p.dst.as_deref() == Some(local.as_str())
        })
        .map(|p| p.tcp_flags.as_deref().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(
        flags,
        ["S", "S."],
        "the SYN and the SYN-ACK, as tcpdump would show"
    );
}

#[test]
fn an_invalid_expression_fails_as_tcpdump_says_it() {
    for args in [
        &["-c", "ens_monitor_cron", "tcp", "prot", "80"][..],
        &["-c", "ens_monitor_cron", "-f", "port 99999"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_flowtrace"))
            .args(args)
            .output()
            .expect("run flowtrace");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        // tcpdump's own sentences: libpcap wrote them.
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first == "flowtrace: can't parse filter expression: syntax error"
                || first == "flowtrace: illegal port number 99999 > 65535",
            "{args:?}: {err}"
        );
        assert!(
            err.contains("hint: ") && err.contains("pcap-filter"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
}

/// The translation in the real kernel: every expression of the corpus passes the verifier,
/// and on every frame its verdict (BPF_PROG_TEST_RUN) is libpcap's (`pcap_offline_filter`).
#[test]
#[ignore = "privileged: needs root (cargo xtask test)"]
fn the_kernel_runs_every_translated_filter_as_libpcap_does() {
    use std::os::fd::AsRawFd;
    use tracer::kernel_filter::{bpf_sys, corpus, CompiledFilter, Insn, Plan, Program, Source};
    use tracer_common::flow::View;
    const SCHED_CLS: u32 = 3;
    let load = |name: &str, insns: &[Insn]| {
        bpf_sys::load_program(name, SCHED_CLS, 0, insns.as_ptr().cast(), insns.len())
            .unwrap_or_else(|(e, log)| panic!("{name}: {e}{log}"))
    };
    let array = bpf_sys::create_program_array(2).expect("program array");
    let view = bpf_sys::create_view_map(size_of::<View>() as u32).expect("view map");
    // Slot 1 stands for the emitting program: it returns 7.
    let matched = load(
        "ft_test_match",
        &[
            Insn {
                code: 0xb4,
                regs: 0,
                off: 0,
                imm: 7,
            },
            Insn {
                code: 0x95,
                regs: 0,
                off: 0,
                imm: 0,
            },
        ],
    );
    bpf_sys::set_program_slot(array.as_raw_fd(), 1, matched.as_raw_fd()).expect("slot 1");
    let frames: Vec<_> = corpus::all_frames()
        .into_iter()
        // The kernel test-runs only frames with a payload, and an IPv4 frame only with its
        // whole IP header (EINVAL otherwise); the unit tests cover those against libpcap.
        .filter(|(_, f)| f.len() > 14 && !(f[12..14] == [8, 0] && f.len() < 34))
        .collect();
    let (mut agree, mut matches) = (0, 0);
    for expr in corpus::EXPRESSIONS {
        let reference = Program::compile(expr).expect("compiles");
        let filter = CompiledFilter::new(expr).expect("translates");
        let plan = |source| Plan {
            source,
            prog_array_fd: array.as_raw_fd(),
            on_match: 1,
            on_miss: None,
        };
        let insns = filter.ebpf(plan(Source::Packet)).expect("translates");
        let prog = load("ft_test_filter", &insns);
        // The filter on the view (read from a map) must pass the verifier too.
        let on_view = filter
            .ebpf(plan(Source::View {
                map_fd: view.as_raw_fd(),
            }))
            .expect("translates");
        drop(load("ft_test_view", &on_view));
        for (name, frame) in &frames {
            let ret = bpf_sys::test_run(prog.as_raw_fd(), frame)
                .unwrap_or_else(|e| panic!("`{expr}` on {name}: {e}"));
            let want = reference.matches(frame);
            assert!(
                ret == 7 || ret == u32::MAX,
                "`{expr}` on {name}: returned {ret}"
            );
            assert_eq!(ret == 7, want, "`{expr}` on {name}");
            agree += 1;
            matches += usize::from(want);
        }
    }
    assert!(
        matches > 100 && agree - matches > 100,
        "{matches} of {agree}"
    );
}
