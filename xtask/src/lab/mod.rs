//! `cargo xtask lab up|down|status|send`: the seed's Docker host in miniature.
//!
//! - a compose-like network `docker_default` (172.18.0.0/16) with `ens_monitor_cron`
//!   (172.18.0.2, TCP echo on 8080) and optionally `ens_monitor_peer` (172.18.0.3);
//! - an "internet" namespace `ft-inet` joined by the veth `ftlab-up` (198.51.100.1/24) with
//!   echo responders at 198.51.100.2 (TCP 8080/8081, UDP 9999, ICMP by the kernel);
//! - guard rules that drop lab-bound traffic leaving by any other interface, installed first
//!   and removed last;
//! - a second user network `ftlab_isolated` (172.29.0.0/24, bridge `ftlab-iso`) with
//!   `ens_isolated` (172.29.0.2): Docker's isolation rules drop traffic between it and
//!   `docker_default`; a guard drops 172.29.0.0/24 leaving by any other interface;
//! - knobs: a user-style DROP rule for TCP 8081, the peer container, a published port.
//!
//! `lab up` when a complete, healthy lab with the same knobs is already up says so and exits 0;
//! otherwise it tears down whatever exists and builds the lab afresh. If any step fails it
//! tears down what it created and exits non-zero. `lab status` exits 0 only if every piece is
//! there. `lab down` works with or without a state file and is idempotent.

pub mod docker;
pub mod guard;
pub mod image;
pub mod inet;
pub mod send;
pub mod state;
mod status;

use anyhow::{bail, Result};
use docker::{ContainerSpec, Ownership};
use state::{Published, State, STATE_FILE};

pub const IMAGE: &str = "flowtrace-lab/busybox:latest";
pub const LAB_LABEL_KEY: &str = "flowtrace.lab";
pub const LAB_LABEL: &str = "flowtrace.lab=1";
pub const NETWORK: &str = "docker_default";
pub const SUBNET: &str = "172.18.0.0/16";
pub const GATEWAY: &str = "172.18.0.1";
pub const CONTAINER: &str = "ens_monitor_cron";
pub const CONTAINER_IP: &str = "172.18.0.2";
pub const PEER: &str = "ens_monitor_peer";
pub const PEER_IP: &str = "172.18.0.3";
pub const NETNS: &str = "ft-inet";
pub const UPLINK: &str = "ftlab-up";
pub const INET_NS_IF: &str = "eth0";
pub const UPLINK_IP: &str = "198.51.100.1";
pub const INET_IP: &str = "198.51.100.2";
pub const INET_SUBNET: &str = "198.51.100.0/24";
pub const PREFIX_LEN: u8 = 24;
pub const TCP_PORTS: [u16; 2] = [8080, 8081];
pub const UDP_PORT: u16 = 9999;
pub const DROP_PORT: u16 = 8081;
pub const ISOLATED_NETWORK: &str = "ftlab_isolated";
pub const ISOLATED_BRIDGE: &str = "ftlab-iso";
pub const ISOLATED_SUBNET: &str = "172.29.0.0/24";
pub const ISOLATED_GATEWAY: &str = "172.29.0.1";
pub const ISOLATED: &str = "ens_isolated";
pub const ISOLATED_IP: &str = "172.29.0.2";
pub const CONTAINER_PORT: u16 = 8080;
pub const PUBLISHED_HOST_PORT: u16 = 18080;
pub const GUARD_COMMENT: &str = "flowtrace-lab-guard";

#[derive(clap::Subcommand, Debug)]
pub enum LabCmd {
    /// Build the lab (tears down a previous, different or broken lab first).
    Up(UpArgs),
    /// Remove everything the lab created (works without a state file; idempotent).
    Down(DownArgs),
    /// Print the state file and check that every piece really exists.
    Status,
    /// Send test traffic inside the lab (after the safety check).
    Send(send::SendArgs),
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Insert `-A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport PORT -j DROP`.
    #[arg(long, default_value_t = DROP_PORT, conflicts_with = "no_drop")]
    pub drop_port: u16,
    /// No drop rule.
    #[arg(long)]
    pub no_drop: bool,
    /// Start the peer container ens_monitor_peer at 172.18.0.3 (default).
    #[arg(long, overrides_with = "no_peer")]
    pub peer: bool,
    #[arg(long)]
    pub no_peer: bool,
    /// Publish ens_monitor_cron's 8080 as 198.51.100.1:18080 (default).
    #[arg(long, overrides_with = "no_publish")]
    pub publish: bool,
    #[arg(long)]
    pub no_publish: bool,
}

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// Also remove the imported image.
    #[arg(long)]
    pub all: bool,
}

struct Knobs {
    drop_port: Option<u16>,
    peer: bool,
    publish: bool,
}

impl UpArgs {
    fn knobs(&self) -> Knobs {
        Knobs {
            drop_port: (!self.no_drop).then_some(self.drop_port),
            peer: !self.no_peer,
            publish: !self.no_publish,
        }
    }
}

pub fn run(command: LabCmd) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("the lab needs root (network namespaces, iptables, docker)");
    }
    match command {
        LabCmd::Up(args) => up(&args.knobs()),
        LabCmd::Down(args) => down(args.all),
        LabCmd::Status => status::status(),
        LabCmd::Send(args) => send::send(&args),
    }
}

fn matches(state: &State, k: &Knobs) -> bool {
    state.drop_port == k.drop_port
        && state.peer_container.is_some() == k.peer
        && state.published.is_some() == k.publish
}

fn up(k: &Knobs) -> Result<()> {
    if !crate::setup::docker_answers() {
        bail!("dockerd does not answer: run `cargo xtask setup` first");
    }
    if let Some(old) = State::load()? {
        if old.complete && matches(&old, k) && status::problems(&old).is_empty() {
            crate::out!("lab: already up with these settings ({STATE_FILE})");
            return Ok(());
        }
        crate::out!("lab: a previous lab exists; tearing it down first");
    }
    teardown(State::load().ok().flatten().as_ref())?;
    // Refuse early, before creating anything, if a same-named object is someone else's.
    for name in [CONTAINER, PEER] {
        if docker::container_ownership(name)? == Ownership::Foreign {
            bail!("a container named {name} exists and was not created by the lab");
        }
    }
    if docker::network_ownership(NETWORK)? == Ownership::Foreign {
        bail!("a network named {NETWORK} exists and was not created by the lab");
    }
    let mut st = State {
        container: CONTAINER.into(),
        container_ip: CONTAINER_IP.into(),
        network: NETWORK.into(),
        inet_netns: NETNS.into(),
        uplink: UPLINK.into(),
        uplink_ip: UPLINK_IP.into(),
        inet_ip: INET_IP.into(),
        inet_subnet: INET_SUBNET.into(),
        tcp_ports: TCP_PORTS.to_vec(),
        udp_port: UDP_PORT,
        image: IMAGE.into(),
        guard_comment: GUARD_COMMENT.into(),
        ..State::default()
    };
    st.save()?;
    match build(&mut st, k) {
        Ok(()) => {
            crate::out!("lab: up ({STATE_FILE})");
            Ok(())
        }
        Err(e) => {
            crate::err!("lab: up failed: {e:#}");
            crate::err!("lab: tearing down what was created");
            // The failed docker command has returned, so nothing is still being created.
            st.pending = None;
            if let Err(e2) = teardown(Some(&st)) {
                crate::err!("lab: teardown after the failure also failed: {e2:#}");
            }
            Err(e.context("lab up failed (everything it created was removed)"))
        }
    }
}

fn step(what: &str) {
    crate::out!("lab: {what}");
}

/// Build the lab, saving the state after every step.
fn build(st: &mut State, k: &Knobs) -> Result<()> {
    // Test hook: FLOWTRACE_LAB_FAIL_AT=<step> fails `up` there, to exercise the teardown of a
    // half-built lab. Steps: guards image netns responders network container peer drop.
    let fail_at = std::env::var("FLOWTRACE_LAB_FAIL_AT").unwrap_or_default();
    let check = |name: &str| -> Result<()> {
        if fail_at == name {
            bail!("injected failure at step `{name}` (FLOWTRACE_LAB_FAIL_AT)");
        }
        Ok(())
    };

    step("guard rules");
    st.guards_installed = true; // recorded first: a failure inside still gets cleaned up
    st.save()?;
    guard::install_guards()?;
    check("guards")?;

    st.ip_forward_before = inet::enable_ip_forward()?;
    st.save()?;

    step("image");
    if image::ensure_image()? {
        step("image built and imported");
    }
    check("image")?;

    step("internet namespace");
    inet::create()?;
    check("netns")?;
    let pid = inet::start_responder()?;
    st.responder_pids = vec![pid];
    st.save()?;
    check("responders")?;

    step("network");
    st.pending = Some(format!("network:{NETWORK}"));
    st.save()?;
    st.network_id = Some(docker::create_network(NETWORK, SUBNET, GATEWAY, None)?);
    st.pending = None;
    st.save()?;
    check("network")?;

    step("containers");
    st.published = k.publish.then_some(Published {
        host_port: PUBLISHED_HOST_PORT,
        container_port: CONTAINER_PORT,
    });
    st.pending = Some(format!("container:{CONTAINER}"));
    st.save()?;
    st.container_id = Some(docker::run_container(&ContainerSpec {
        name: CONTAINER,
        ip: CONTAINER_IP,
        service: "python-monitor",
        number: 1,
        publish: k.publish,
        network: NETWORK,
    })?);
    st.pending = None;
    st.save()?;
    check("container")?;
    let (veth, bridge) = docker::host_veth(CONTAINER)?;
    st.host_veth = Some(veth);
    st.bridge = Some(bridge);
    st.save()?;
    if k.peer {
        st.peer_container = Some(PEER.into());
        st.peer_ip = Some(PEER_IP.into());
        st.save()?;
        st.pending = Some(format!("container:{PEER}"));
        st.save()?;
        st.peer_container_id = Some(docker::run_container(&ContainerSpec {
            name: PEER,
            ip: PEER_IP,
            service: "python-monitor-peer",
            number: 1,
            publish: false,
            network: NETWORK,
        })?);
        st.pending = None;
        st.save()?;
        let (veth, _) = docker::host_veth(PEER)?;
        st.peer_veth = Some(veth);
        st.save()?;
    }

    step("isolated network");
    st.pending = Some(format!("network:{ISOLATED_NETWORK}"));
    st.save()?;
    docker::create_network(
        ISOLATED_NETWORK,
        ISOLATED_SUBNET,
        ISOLATED_GATEWAY,
        Some(ISOLATED_BRIDGE),
    )?;
    st.pending = Some(format!("container:{ISOLATED}"));
    st.save()?;
    docker::run_container(&ContainerSpec {
        name: ISOLATED,
        ip: ISOLATED_IP,
        service: "isolated",
        number: 1,
        publish: false,
        network: ISOLATED_NETWORK,
    })?;
    st.pending = None;
    st.isolated_ip = Some(ISOLATED_IP.into());
    st.isolated_bridge = Some(ISOLATED_BRIDGE.into());
    st.save()?;
    check("isolated")?;

    docker::wait_listener(CONTAINER)?;
    if k.peer {
        docker::wait_listener(PEER)?;
    }
    check("peer")?;

    if let Some(port) = k.drop_port {
        step("drop rule");
        st.drop_port = Some(port);
        st.save()?;
        st.drop_rule = Some(guard::install_drop_rule(port)?);
        st.save()?;
    }
    check("drop")?;

    st.complete = true;
    st.save()?;
    Ok(())
}

/// Remove everything the lab creates, in reverse order; guards go last. Uses the state file
/// when there is one and also finds the lab's objects without it (by name plus the lab label,
/// the guard comment, the drop rule's exact spec and the responder marker).
fn teardown(st: Option<&State>) -> Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            crate::err!("lab: {e:#}");
            errors.push(format!("{e:#}"));
        }
    };

    if let Some(pending) = st.and_then(|s| s.pending.as_deref()) {
        docker::await_pending(pending);
    }
    note((|| {
        let recorded = st.map(|s| s.responder_pids.clone()).unwrap_or_default();
        let killed = inet::stop_responders(&recorded)?;
        if !killed.is_empty() {
            step(&format!("stopped responders {killed:?}"));
        }
        Ok(())
    })());
    note((|| {
        let mut names = vec![
            CONTAINER.to_string(),
            PEER.to_string(),
            ISOLATED.to_string(),
        ];
        if let Some(s) = st {
            names.extend(s.peer_container.clone());
            names.extend(s.container_id.clone());
            names.extend(s.peer_container_id.clone());
        }
        for name in names {
            if docker::remove_container(&name)? {
                step(&format!("removed container {name}"));
            }
        }
        Ok(())
    })());
    note((|| {
        let mut names = vec![NETWORK.to_string(), ISOLATED_NETWORK.to_string()];
        if let Some(id) = st.and_then(|s| s.network_id.clone()) {
            names.insert(0, id);
        }
        for name in names {
            if docker::remove_network(&name)? {
                step(&format!("removed network {name}"));
            }
        }
        Ok(())
    })());
    note((|| {
        for removed in inet::destroy()? {
            step(&format!("removed {removed}"));
        }
        Ok(())
    })());
    note((|| {
        let recorded = st.and_then(|s| s.drop_rule.as_deref());
        let mut ports = vec![DROP_PORT];
        ports.extend(st.and_then(|s| s.drop_port));
        let n = guard::remove_drop_rule(recorded, &ports)?;
        if n > 0 {
            step(&format!("removed {n} drop rule(s)"));
        }
        Ok(())
    })());
    note((|| {
        if let Some(old) = st.and_then(|s| s.ip_forward_before.as_deref()) {
            inet::restore_ip_forward(old)?;
            step(&format!("restored ip_forward={old}"));
        }
        Ok(())
    })());
    note((|| {
        let n = guard::remove_guards()?;
        if n > 0 {
            step(&format!("removed {n} guard rule(s)"));
        }
        Ok(())
    })());
    if errors.is_empty() {
        State::remove_file()?;
        Ok(())
    } else {
        bail!(
            "teardown incomplete ({} error(s)); state file {STATE_FILE} kept",
            errors.len()
        )
    }
}

fn down(all: bool) -> Result<()> {
    let st = State::load().unwrap_or_else(|e| {
        crate::err!("lab: ignoring the state file: {e:#}");
        None
    });
    teardown(st.as_ref())?;
    if all && image::remove_image()? {
        step(&format!("removed image {IMAGE}"));
    }
    crate::out!("lab: down");
    Ok(())
}
