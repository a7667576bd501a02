//! Privileged end-to-end test of a NAT rewrite that changes the port: MASQUERADE keeps a
//! container's source port only while conntrack holds no other connection on the uplink's
//! address with that port to the same server. Run through `cargo xtask test`.

mod common;

use common::{
    de_natted_from, leaves_masqueraded, show, tc_hop, the_packet, udp_from, Flowtrace, From, Lab,
};

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn masquerade_that_picks_another_port_is_shown_with_the_port_it_chose() {
    let lab = Lab::get();
    let (uplink, server) = (lab.uplink(), lab.inet_ip());
    let peer = From::Container(lab.peer_container());
    let cron = From::Container(lab.container());
    // The peer's datagram leaves conntrack an entry uplink:P ↔ server:9999 for 30 s.
    let port = udp_from(&lab, &peer, 0, server, 9999).expect("the peer's udp echo");

    let ft = Flowtrace::start(&["-c", &lab.container(), "--json", "udp", "port", "9999"]);
    let sport = udp_from(&lab, &cron, port, server, 9999).expect("udp echo from the same port");
    let lines = ft.stop();
    assert_eq!(sport, port);
    // The same flow again, as text: conntrack keeps the port it chose.
    let ft = Flowtrace::start(&["-c", &lab.container(), "udp", "port", "9999"]);
    udp_from(&lab, &cron, port, server, 9999).expect("udp echo again");
    let text = ft.stop_text().join("\n");

    let local = format!("{}:{port}", lab.container_ip());
    let out = the_packet(&lines, "datagram from the container", |p| {
        p.src.as_deref() == Some(local.as_str())
    });
    let outside = leaves_masqueraded(&lab, out, &local);
    assert_ne!(
        outside,
        format!("{}:{port}", lab.uplink_ip()),
        "the peer holds that port: MASQUERADE must have picked another: {}",
        show(out)
    );

    let reply = the_packet(&lines, "reply to the container", |p| {
        p.dst.as_deref() == Some(local.as_str())
    });
    assert_eq!(de_natted_from(&lab, reply, &local), outside);
    assert_eq!(
        tc_hop(reply, &uplink, "ingress").dst.as_deref(),
        Some(outside.as_str()),
        "{}",
        show(reply)
    );

    let snat = format!("SNAT {local} → {outside}");
    let dnat = format!("DNAT {outside} → {local}");
    assert!(
        text.contains(&snat) && text.contains(&dnat),
        "the text names both rewrites ({snat}; {dnat}):\n{text}"
    );
}
