//! The lab's Docker objects: the compose-like network `docker_default` and the containers on it.
//! Everything the lab creates carries the label `flowtrace.lab=1`; teardown removes only
//! objects with that label, so a user's own `docker_default` is never touched.

use super::{CONTAINER_PORT, IMAGE, LAB_LABEL, LAB_LABEL_KEY, PUBLISHED_HOST_PORT, UPLINK_IP};
use crate::cmd::cmd;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// What `docker inspect`/`docker network inspect` says about an object's lab label.
#[derive(Debug, PartialEq, Eq)]
pub enum Ownership {
    Absent,
    Ours,
    Foreign,
}

fn ownership(kind: &str, name: &str) -> Result<Ownership> {
    let format = match kind {
        "container" => format!("{{{{index .Config.Labels \"{LAB_LABEL_KEY}\"}}}}"),
        _ => format!("{{{{index .Labels \"{LAB_LABEL_KEY}\"}}}}"),
    };
    let (ok, out, _) = cmd("docker", [kind, "inspect", "--format", &format, name]).output()?;
    Ok(match (ok, out.trim()) {
        (false, _) => Ownership::Absent,
        (true, "1") => Ownership::Ours,
        (true, _) => Ownership::Foreign,
    })
}

pub fn container_ownership(name: &str) -> Result<Ownership> {
    ownership("container", name)
}

pub fn network_ownership(name: &str) -> Result<Ownership> {
    ownership("network", name)
}

/// A lab network; `bridge` fixes the Linux bridge's name (else Docker's `br-<id>`).
pub fn create_network(
    name: &str,
    subnet: &str,
    gateway: &str,
    bridge: Option<&str>,
) -> Result<String> {
    let mut c = cmd("docker", ["network", "create", "--driver", "bridge"])
        .args(["--subnet", subnet, "--gateway", gateway])
        .args(["--label", "com.docker.compose.project=docker"])
        .args(["--label", "com.docker.compose.network=default"])
        .args(["--label", "com.docker.compose.version=5.0.2"])
        .args(["--label", LAB_LABEL]);
    if let Some(b) = bridge {
        c = c
            .arg("--opt")
            .arg(format!("com.docker.network.bridge.name={b}"));
    }
    let out = c
        .arg(name)
        .read()
        .with_context(|| format!("creating network {name}"))?;
    Ok(out.trim().to_string())
}

pub struct ContainerSpec<'a> {
    pub name: &'a str,
    pub ip: &'a str,
    pub service: &'a str,
    pub number: u32,
    pub publish: bool,
    pub network: &'a str,
}

/// Shell run as the container's main process: a persistent TCP echo server on 8080
/// (busybox `nc -ll -e cat` forks one `cat` per connection), then sleep forever.
fn container_script() -> String {
    format!("nc -ll -p {CONTAINER_PORT} -e cat & while :; do sleep 3600; done")
}

pub fn run_container(spec: &ContainerSpec) -> Result<String> {
    let mut c = cmd("docker", ["run", "--detach", "--name", spec.name])
        .args(["--hostname", spec.name])
        .args(["--network", spec.network, "--ip", spec.ip])
        .args(["--network-alias", spec.service])
        // Containers never resolve names: the only resolver is one that does not exist.
        .args(["--dns", "127.0.0.1", "--restart", "no"])
        .args(["--label", "com.docker.compose.project=docker"])
        .arg("--label")
        .arg(format!("com.docker.compose.service={}", spec.service))
        .arg("--label")
        .arg(format!(
            "com.docker.compose.container-number={}",
            spec.number
        ))
        .args(["--label", "com.docker.compose.oneoff=False"])
        .args(["--label", "com.docker.compose.version=5.0.2"])
        .args(["--label", LAB_LABEL]);
    if spec.publish {
        // Bound to the lab uplink's address only: never exposed on the machine's real uplink.
        c = c.arg("--publish").arg(format!(
            "{UPLINK_IP}:{PUBLISHED_HOST_PORT}:{CONTAINER_PORT}/tcp"
        ));
    }
    let out = c
        .args([IMAGE, "sh", "-c"])
        .arg(container_script())
        .read()
        .with_context(|| format!("starting container {}", spec.name))?;
    Ok(out.trim().to_string())
}

/// Wait until the container's echo listener is bound.
pub fn wait_listener(name: &str) -> Result<()> {
    let start = Instant::now();
    let needle = format!(":{CONTAINER_PORT} ");
    loop {
        let (_, out, _) = cmd("docker", ["exec", name, "netstat", "-ltn"]).output()?;
        if out.lines().any(|l| l.contains(&needle)) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the echo listener in {name} did not come up on port {CONTAINER_PORT}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Deserialize)]
struct Link {
    ifindex: u32,
    ifname: String,
    master: Option<String>,
}

fn host_links() -> Result<Vec<Link>> {
    let out = cmd("ip", ["-j", "link", "show"]).read()?;
    serde_json::from_str(&out).context("parsing `ip -j link show`")
}

/// (host veth name, its bridge) of a container's eth0, via the peer ifindex that the
/// container's own /sys reports.
pub fn host_veth(name: &str) -> Result<(String, String)> {
    let iflink = cmd(
        "docker",
        ["exec", name, "cat", "/sys/class/net/eth0/iflink"],
    )
    .read()?;
    let ifindex: u32 = iflink
        .trim()
        .parse()
        .with_context(|| format!("bad iflink {iflink:?} in {name}"))?;
    let link = host_links()?
        .into_iter()
        .find(|l| l.ifindex == ifindex)
        .with_context(|| {
            format!("no host interface with ifindex {ifindex} (peer of {name} eth0)")
        })?;
    let master = link
        .master
        .with_context(|| format!("{} (veth of {name}) has no bridge master", link.ifname))?;
    Ok((link.ifname, master))
}

pub fn link_exists(name: &str) -> bool {
    cmd("ip", ["link", "show", "dev", name])
        .ok()
        .unwrap_or(false)
}

pub fn link_master(name: &str) -> Option<String> {
    host_links()
        .ok()?
        .into_iter()
        .find(|l| l.ifname == name)
        .and_then(|l| l.master)
}

pub fn container_running(name: &str) -> bool {
    cmd(
        "docker",
        ["inspect", "--format", "{{.State.Running}}", name],
    )
    .read()
    .map(|s| s.trim() == "true")
    .unwrap_or(false)
}

pub fn container_pid(name: &str) -> Result<u32> {
    let out = cmd("docker", ["inspect", "--format", "{{.State.Pid}}", name]).read()?;
    let pid: u32 = out
        .trim()
        .parse()
        .with_context(|| format!("bad pid {out:?} for {name}"))?;
    if pid == 0 {
        bail!("container {name} is not running");
    }
    Ok(pid)
}

/// A creation request (`network:NAME` / `container:NAME`) may still be in flight in dockerd
/// after the client that sent it died: give it a few seconds to show up so teardown sees it.
pub fn await_pending(pending: &str) {
    let Some((kind, name)) = pending.split_once(':') else {
        return;
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let present = match kind {
            "network" => network_ownership(name),
            _ => container_ownership(name),
        };
        if !matches!(present, Ok(Ownership::Absent)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Remove a lab container (only if it carries the lab label).
pub fn remove_container(name: &str) -> Result<bool> {
    match container_ownership(name)? {
        Ownership::Absent => Ok(false),
        Ownership::Foreign => {
            crate::err!("lab: container {name} exists but was not created by the lab; leaving it");
            Ok(false)
        }
        Ownership::Ours => {
            cmd("docker", ["rm", "--force", name]).run()?;
            Ok(true)
        }
    }
}

/// Remove the lab network (only if it carries the lab label).
pub fn remove_network(name: &str) -> Result<bool> {
    match network_ownership(name)? {
        Ownership::Absent => Ok(false),
        Ownership::Foreign => {
            crate::err!("lab: network {name} exists but was not created by the lab; leaving it");
            Ok(false)
        }
        Ownership::Ours => {
            cmd("docker", ["network", "rm", name]).run()?;
            Ok(true)
        }
    }
}
