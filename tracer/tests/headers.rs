//! Privileged end-to-end test of the records without a recording: with no `--write` and no
//! filter expression the kernel sends an IPv4 packet's headers alone, and a packet whose IP
//! header carries options, whose headers may not fit, whole. Both must show the whole path.
//! Run through `cargo xtask test`.

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use common::{
    de_natted_from, in_netns, leaves_masqueraded, nf_hop, show, tc_hop, the_packet, udp_from,
    Flowtrace, From, Lab,
};

/// One UDP datagram with the most IP options a header holds (40 bytes: 39 NOPs and the end
/// of the list, a 60-byte header, so that its UDP header lies past the 64 bytes a
/// headers-only record carries) from inside `container`, and its echo. Returns the local
/// port.
fn udp_with_ip_options(lab: &Lab, container: &str, dst: IpAddr, port: u16) -> u16 {
    lab.assert_safe(&From::Container(container.to_owned()), dst);
    let pid = lab.container_pid(container);
    in_netns(&format!("/proc/{pid}/ns/net"), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let mut options = [1u8; OPTIONS];
        options[OPTIONS - 1] = 0;
        // SAFETY: setsockopt reads `options.len()` bytes from a live array.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_OPTIONS,
                options.as_ptr().cast(),
                options.len() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.send_to(b"flowtrace\n", SocketAddr::new(dst, port))
            .expect("send");
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).expect("the echo");
        s.local_addr().expect("local").port()
    })
}

const OPTIONS: usize = 40;

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn without_a_recording_packets_with_and_without_ip_options_show_their_whole_path() {
    let lab = Lab::get();
    let (veth, server) = (lab.veth_of(&lab.container()), lab.inet_ip());
    let cron = From::Container(lab.container());
    // No filter expression and no --write: the headers-only records.
    let ft = Flowtrace::start(&["-c", &lab.container(), "--json"]);
    let plain = udp_from(&lab, &cron, 0, server, 9999).expect("udp echo");
    let optioned = udp_with_ip_options(&lab, &lab.container(), server, 9999);
    let lines = ft.stop();

    let mut lens = Vec::new();
    for (what, sport) in [("plain", plain), ("with IP options", optioned)] {
        let local = format!("{}:{sport}", lab.container_ip());
        let out = the_packet(&lines, what, |p| p.src.as_deref() == Some(local.as_str()));
        assert_eq!(out.proto.as_deref(), Some("udp"), "{what}: {}", show(out));
        let at_veth = tc_hop(out, &veth, "ingress");
        assert_eq!(
            at_veth.src.as_deref(),
            Some(local.as_str()),
            "{}",
            show(out)
        );
        let outside = leaves_masqueraded(&lab, out, &local);
        assert_eq!(
            nf_hop(out, "FORWARD", "filter").verdict,
            "accept",
            "{what}: FORWARD's filter passed it: {}",
            show(out)
        );
        let reply = the_packet(&lines, &format!("the echo of the datagram {what}"), |p| {
            p.dst.as_deref() == Some(local.as_str())
        });
        assert_eq!(de_natted_from(&lab, reply, &local), outside, "{what}");
        lens.push(at_veth.len);
    }
    assert_eq!(
        lens[1],
        lens[0] + OPTIONS as u32,
        "the second datagram carried its IP options"
    );
}
