//! `cargo xtask lab status`: the state file, and a check that every recorded piece is there.

use super::docker::{self, Ownership};
use super::state::{State, STATE_FILE};
use super::{guard, inet, CONTAINER, GUARD_COMMENT, NETNS, UPLINK};
use anyhow::{bail, Context, Result};

/// Every piece of the recorded lab that is not really there.
pub fn problems(st: &State) -> Vec<String> {
    let mut p = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            p.push(what);
        }
    };
    want(st.complete, "the last `lab up` did not complete".into());
    want(
        guard::guards_present(),
        format!("guard rules ({GUARD_COMMENT})"),
    );
    want(inet::netns_exists(), format!("network namespace {NETNS}"));
    want(docker::link_exists(UPLINK), format!("uplink veth {UPLINK}"));
    for pid in &st.responder_pids {
        want(inet::is_responder(*pid), format!("responder pid {pid}"));
    }
    want(
        docker::network_ownership(&st.network).ok() == Some(Ownership::Ours),
        format!("network {}", st.network),
    );
    want(
        docker::container_running(&st.container),
        format!("container {} running", st.container),
    );
    if let Some(peer) = &st.peer_container {
        want(
            docker::container_running(peer),
            format!("container {peer} running"),
        );
    }
    for veth in [&st.host_veth, &st.peer_veth].into_iter().flatten() {
        want(
            docker::link_master(veth).as_deref() == st.bridge.as_deref(),
            format!("host veth {veth} on bridge {:?}", st.bridge),
        );
    }
    if let Some(rule) = &st.drop_rule {
        want(
            guard::drop_rule_present(rule),
            format!("drop rule `{rule}`"),
        );
    }
    p
}

pub fn status() -> Result<()> {
    let Some(st) = State::load()? else {
        let leftovers: Vec<&str> = [
            (inet::netns_exists(), NETNS),
            (docker::link_exists(UPLINK), UPLINK),
            (guard::guards_present(), "guard rules"),
            (docker::container_running(CONTAINER), CONTAINER),
        ]
        .into_iter()
        .filter_map(|(present, what)| present.then_some(what))
        .collect();
        if leftovers.is_empty() {
            crate::out!("lab: down (no state file)");
        } else {
            crate::out!(
                "lab: down (no state file) but found leftovers: {}; run `cargo xtask lab down`",
                leftovers.join(", ")
            );
        }
        bail!("the lab is not up");
    };
    let text =
        std::fs::read_to_string(STATE_FILE).with_context(|| format!("reading {STATE_FILE}"))?;
    crate::out!("{}", text.trim_end());
    let ps = problems(&st);
    if ps.is_empty() {
        crate::out!("lab: up, every piece checked present");
        Ok(())
    } else {
        for p in &ps {
            crate::out!("lab: MISSING {p}");
        }
        bail!("the lab is incomplete ({} missing piece(s))", ps.len())
    }
}
