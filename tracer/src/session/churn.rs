//! Container churn: a traced container that is not running yet is waited for, and one that
//! restarts (a new veth, maybe a new address) is attached to again, from Docker's events.

use std::collections::BTreeSet;

use futures_util::StreamExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    error::Result,
    target::{
        docker::{ContainerInfo, Docker, Lifecycle},
        scope::ScopeChanges,
        topology::{container_path, AttachPoint, ContainerPath, HostView, Role},
    },
};

/// A container came back (or changed networks) as `path`: it replaces its old self, whose
/// veths are forgotten (they are gone, and returned), and its new points join the attached
/// ones.
pub(super) fn replace(
    containers: &mut Vec<ContainerPath>,
    points: &mut Vec<AttachPoint>,
    path: ContainerPath,
    new_points: &[AttachPoint],
) -> Vec<AttachPoint> {
    let name = path.info.name.clone();
    let keep: BTreeSet<u32> = path.links.iter().map(|l| l.host_veth.index).collect();
    let (gone, kept): (Vec<AttachPoint>, Vec<AttachPoint>) =
        std::mem::take(points).into_iter().partition(|p| {
            p.role == Role::Veth
                && p.container.as_deref() == Some(&name)
                && !keep.contains(&p.ifindex)
        });
    *points = kept;
    points.extend(new_points.iter().cloned());
    match containers.iter_mut().find(|c| c.info.name == name) {
        Some(c) => *c = path,
        None => containers.push(path),
    }
    gone
}

/// What the kernel's scope gained and lost, for the note.
pub(super) fn describe_changes(ch: &ScopeChanges) -> String {
    if ch.is_empty() {
        return "scope unchanged".into();
    }
    let list = |v: Vec<String>| v.join(", ");
    let mut parts = Vec::new();
    if !ch.add_addrs.is_empty() {
        parts.push(format!(
            "+{}",
            list(ch.add_addrs.iter().map(ToString::to_string).collect())
        ));
    }
    if !ch.del_addrs.is_empty() {
        parts.push(format!(
            "-{}",
            list(ch.del_addrs.iter().map(ToString::to_string).collect())
        ));
    }
    let port = |(proto, p): &(u8, u16)| format!("{p}/{}", if *proto == 17 { "udp" } else { "tcp" });
    if !ch.add_ports.is_empty() {
        parts.push(format!(
            "+port {}",
            list(ch.add_ports.iter().map(port).collect())
        ));
    }
    if !ch.del_ports.is_empty() {
        parts.push(format!(
            "-port {}",
            list(ch.del_ports.iter().map(port).collect())
        ));
    }
    if parts.is_empty() {
        parts.push("interfaces".into());
    }
    format!("scope updated: {}", parts.join(" "))
}

/// Waits until `name` starts (Ctrl-C or SIGTERM give up: nothing is attached yet).
pub(super) async fn wait_for_start(docker: &Docker, name: &str) -> Result<ContainerInfo> {
    eprintln!("container {name} is not running; waiting for it to start (Ctrl-C to give up)");
    let mut events = Box::pin(docker.lifecycle(&[name.to_owned()], &[]));
    let mut sigterm = signal(SignalKind::terminate()).ok();
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Lifecycle::Started { .. }) => return docker.container(name).await,
                Some(Lifecycle::Note(note)) => eprintln!("{}", crate::output::terminal::escape(&note, false)),
                Some(Lifecycle::Stopped { .. } | Lifecycle::Networks { .. }) => continue,
                None => return docker.container(name).await,
            },
            _ = tokio::signal::ctrl_c() => std::process::exit(130),
            _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => std::process::exit(143),
        }
    }
}

/// Where a (re)started container's packets now go, and the points not attached yet.
pub struct Restarted {
    pub path: ContainerPath,
    pub new_points: Vec<AttachPoint>,
}

/// Resolves `name` again and lists the interfaces not in `attached`.
pub(super) async fn resolve(
    docker: &Docker,
    name: &str,
    attached: &BTreeSet<u32>,
) -> Result<Restarted> {
    // Docker may report the start a moment before the veth is in place: try for a second.
    let mut tries = 0;
    let path = loop {
        let info = docker.container(name).await?;
        let host = HostView::read()?;
        match container_path(info, &host) {
            Ok(p) => break p,
            Err(e) if tries >= 10 => return Err(e),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    let mut new_points = Vec::new();
    for l in &path.links {
        if !attached.contains(&l.host_veth.index) {
            new_points.push(AttachPoint {
                ifindex: l.host_veth.index,
                name: l.host_veth.name.clone(),
                role: Role::Veth,
                container: Some(path.info.name.clone()),
                veth: true,
            });
        }
        if let Some(b) = l.bridge.as_ref().filter(|b| !attached.contains(&b.index)) {
            new_points.push(AttachPoint {
                ifindex: b.index,
                name: b.name.clone(),
                role: Role::Bridge,
                container: None,
                veth: false,
            });
        }
    }
    Ok(Restarted { path, new_points })
}
