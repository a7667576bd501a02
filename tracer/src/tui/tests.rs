//! Dashboard tests: the fixtures rendered with ratatui's TestBackend, and the keys.

use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::app::{App, Focus, SortKey};
use super::fixtures::{counters, dropped, hc, syn, syn_ack, RULE};
use super::handler::handle_key;
use super::{ui, Feed};
/// The core's flow lines for these packets, by the flow table a recording's replay uses.
fn flows_of(packets: &[crate::model::Packet]) -> Vec<crate::model::FlowLine> {
    let mut t = crate::correlate::flow::FlowTable::new(100);
    t.keep_changes();
    for p in packets {
        if let Some(s) = crate::correlate::flow::Sample::of(p) {
            t.add(s);
        }
    }
    let clock = crate::events::clock::WallClock::wall();
    t.take_changed()
        .into_iter()
        .map(|(k, s)| crate::model::flow(k, s, &clock))
        .collect()
}

/// An app fed the fixtures; the selected flow is the 8080 one (most packets).
fn fed(t0: Instant) -> App {
    let mut app = App::new("flowtrace — ens_monitor_cron (172.18.0.2) on docker_default".into());
    app.apply(
        Feed::Status("attached tc ingress+egress on veth9780200 (veth) via TCX".into()),
        t0,
    );
    app.apply(counters(1), t0);
    for p in [syn(), syn_ack(), dropped()] {
        app.apply(Feed::Packet(Box::new(p)), t0);
    }
    app.apply(Feed::Flows(flows_of(&[syn(), syn_ack(), dropped()])), t0);
    app.apply(Feed::Lost(7), t0);
    app.apply(
        Feed::Recording {
            path: "/tmp/trace.pcapng".into(),
            bytes: 123_456,
        },
        t0,
    );
    app
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| ui::render(f, app)).unwrap();
    buffer_text(&term)
}

fn buffer_text(term: &Terminal<TestBackend>) -> String {
    let buf = term.backend().buffer();
    let mut s = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            s.push_str(buf[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn press(app: &mut App, keys: &str) {
    for c in keys.chars() {
        handle_key(app, key(KeyCode::Char(c)));
    }
}

#[test]
fn renders_the_path_flows_drops_timeline_and_status() {
    let app = fed(Instant::now());
    for (w, h) in [(80, 24), (120, 40)] {
        let s = render(&app, w, h);
        println!("{w}x{h}:\n{s}");
        for want in [
            "veth9780200",
            "veth",
            "br-d9231d44a1ab",
            "bridge",
            "ftlab-up",
            "uplink",
            "from events",
        ] {
            assert!(s.contains(want), "{w}x{h}: missing {want}\n{s}");
        }
        for (hook, table) in [
            ("PREROUTING", "nat"),
            ("FORWARD", "filter"),
            ("POSTROUTING", "nat"),
        ] {
            let line = s
                .lines()
                .find(|l| l.contains(hook))
                .unwrap_or_else(|| panic!("no {hook}\n{s}"));
            assert!(line.contains(table), "{hook} without {table}: {line}");
        }
        let veth = s.lines().find(|l| l.starts_with("veth9780200")).unwrap();
        assert!(veth.contains(" 3 ") && veth.contains("222B"), "{veth}");
        let drop = s
            .lines()
            .find(|l| l.contains("NETFILTER_DROP"))
            .expect("drops panel");
        assert!(
            drop.contains("FORWARD/filter") && drop.contains("-A DOCKER-USER -d 198."),
            "{drop}"
        );
        assert!(
            s.contains("SNAT 172.18.0.2:41234 → 198.51.100.1:41234"),
            "{w}x{h}: timeline\n{s}"
        );
        assert!(
            s.contains("lost 7") && s.contains("/tmp/trace.pcapng"),
            "{w}x{h}: status\n{s}"
        );
    }
    let wide = render(&app, 120, 40);
    assert!(wide.contains(RULE), "the full rule at 120 columns");
    // What user space received and did not show is on the status line too.
    let mut app = app;
    app.apply(Feed::NotShown(12), Instant::now());
    let wide = render(&app, 120, 40);
    assert!(wide.contains("not shown 12"), "{wide}");
    assert!(
        !wide.contains("evicted"),
        "nothing evicted, nothing said\n{wide}"
    );
    app.apply(Feed::Evicted(5), Instant::now());
    let wide = render(&app, 120, 40);
    assert!(wide.contains("evicted 5"), "{wide}");
    // What nftrace named for an accepting table shows in the timeline too (the dropped
    // connection's, the second flow).
    press(&mut app, "j");
    let wide = render(&app, 120, 40);
    assert!(
        wide.contains("PREROUTING/nat: policy accept"),
        "the timeline shows the accept's policy\n{wide}"
    );
}

#[test]
fn help_overlay_lists_the_keys() {
    let mut app = fed(Instant::now());
    press(&mut app, "?");
    assert!(app.show_help);
    let s = render(&app, 80, 24);
    for want in [
        "q, Ctrl-C",
        "quit",
        "p, space",
        "pause",
        "filter",
        "j/k",
        "Tab",
        "sort",
        "clear counters",
        "Esc",
    ] {
        assert!(s.contains(want), "help lacks {want}\n{s}");
    }
    handle_key(&mut app, key(KeyCode::Esc));
    assert!(!app.show_help);
}

#[test]
fn rates_come_from_successive_snapshots() {
    let t0 = Instant::now();
    let mut app = fed(t0);
    app.apply(counters(101), t0 + Duration::from_secs(1));
    let s = render(&app, 80, 24);
    // veth ingress: 3 → 303 packets in 1 s.
    let veth = s.lines().find(|l| l.starts_with("veth9780200")).unwrap();
    assert!(veth.contains("300"), "{veth}");
    let wide = render(&app, 120, 40);
    let veth = wide.lines().find(|l| l.starts_with("veth9780200")).unwrap();
    // 222 → 22422 bytes in 1 s.
    assert!(veth.contains("300") && veth.contains("21.7K/s"), "{veth}");
}

#[test]
fn keys_change_state() {
    let mut app = fed(Instant::now());
    press(&mut app, "p");
    assert!(app.paused);
    app.apply(Feed::Packet(Box::new(dropped())), Instant::now());
    assert_eq!(app.data.packets, 4, "counting goes on while paused");
    assert_eq!(app.view().packets, 3, "the view is frozen");
    press(&mut app, " ");
    assert!(!app.paused);
    assert_eq!(app.view().packets, 4);

    assert_eq!(app.sort, SortKey::Packets);
    for want in [
        SortKey::Bytes,
        SortKey::Drops,
        SortKey::LastSeen,
        SortKey::Packets,
    ] {
        press(&mut app, "s");
        assert_eq!(app.sort, want);
    }

    // Two flows: selection stays within bounds.
    press(&mut app, "kkk");
    assert_eq!(app.selected_index, 0);
    press(&mut app, "jjjj");
    assert_eq!(app.selected_index, 1);
    handle_key(&mut app, key(KeyCode::Up));
    assert_eq!(app.selected_index, 0);

    press(&mut app, "/8081");
    assert_eq!(app.filter_input.as_deref(), Some("8081"));
    assert!(app.filter.is_empty(), "not applied while typing");
    handle_key(&mut app, key(KeyCode::Esc));
    assert!(
        app.filter_input.is_none() && app.filter.is_empty(),
        "Esc cancels"
    );
    press(&mut app, "/8081");
    handle_key(&mut app, key(KeyCode::Enter));
    assert_eq!(app.filter, "8081");
    let view = app.view();
    assert_eq!(app.visible_flows(&view).len(), 1);
    drop(view);

    handle_key(&mut app, key(KeyCode::Tab));
    assert_eq!(app.focus, Focus::Drops);

    press(&mut app, "c");
    assert!(app.data.flows.is_empty() && app.data.drops.is_empty());
    let s = render(&app, 80, 24);
    let veth = s.lines().find(|l| l.starts_with("veth9780200")).unwrap();
    assert!(veth.contains(" 0 "), "baselines moved: {veth}");
    assert!(s.contains("lost 0"), "{s}");

    press(&mut app, "q");
    assert!(app.should_quit);
    let mut app = fed(Instant::now());
    handle_key(
        &mut app,
        KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
    );
    assert!(app.should_quit);
}

#[test]
fn resize_and_long_names_do_not_spill() {
    let mut app = fed(Instant::now());
    let long = "x".repeat(300);
    let mut p = dropped();
    if let Some(d) = p.drop.as_mut() {
        d.rule = Some(format!("-A {long} -j DROP"));
        d.reason = format!("REASON{long}");
    }
    p.container = Some(format!("c{long}").into());
    app.apply(Feed::Packet(Box::new(p)), Instant::now());
    app.apply(
        Feed::Counters(vec![hc(&format!("veth{long}"), "veth", "ingress", 1, 1)]),
        Instant::now(),
    );
    app.apply(Feed::Status(format!("warning {long}")), Instant::now());
    let mut term = Terminal::new(TestBackend::new(200, 60)).unwrap();
    term.draw(|f| ui::render(f, &app)).unwrap();
    term.backend_mut().resize(80, 24);
    term.draw(|f| ui::render(f, &app)).unwrap();
    let s = buffer_text(&term);
    assert_eq!(s.lines().count(), 24);
    assert!(s.lines().all(|l| l.chars().count() == 80));
    // Long text is clipped in its own row and column: the next column and row keep their text.
    let lines: Vec<&str> = s.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("REASONxxx"))
        .expect("long reason row");
    assert!(lines[i].contains(" FORWARD/filter "), "{}", lines[i]);
    assert!(lines[i + 1].starts_with(" Timeline"), "{}", lines[i + 1]);
    assert!(
        s.lines()
            .any(|l| l.starts_with("vethxxx") && l.contains("x veth ")),
        "{s}"
    );
    for (w, h) in [(10, 5), (1, 1), (0, 0), (40, 10)] {
        render(&app, w, h);
    }
}

#[tokio::test]
async fn the_loop_quits_on_q_and_on_a_closed_event_stream() {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(Feed::Packet(Box::new(syn()))).await.unwrap();
    let mut app = App::new("t".into());
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let keys = futures_util::stream::iter(vec![Ok(Event::Key(key(KeyCode::Char('q'))))]);
    // The key stream yields 'q' at once; give the feed a chance by sending before.
    super::event::run_loop(&mut term, &mut app, rx, keys, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(app.should_quit);

    let (_tx, rx) = tokio::sync::mpsc::channel::<Feed>(1);
    let mut app = App::new("t".into());
    let empty = futures_util::stream::iter(Vec::<std::io::Result<Event>>::new());
    super::event::run_loop(&mut term, &mut app, rx, empty, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(app.should_quit);
}

fn local(i: usize) -> String {
    format!("172.18.{}.{}:{}", i / 60000, i % 250, 1024 + i % 60000)
}

#[test]
fn memory_is_bounded() {
    let mut app = App::new("t".into());
    let t = Instant::now();
    for i in 0..(super::model::MAX_FLOWS + 50) {
        let mut p = dropped();
        p.src = Some(local(i).into());
        if let Some(d) = p.drop.as_mut() {
            d.rule = Some(format!("rule {}", i % 300));
        }
        app.apply(Feed::Packet(Box::new(p)), t);
    }
    assert_eq!(app.data.flows.len(), super::model::MAX_FLOWS);
    assert_eq!(app.data.drops.len(), super::model::MAX_DROPS);
    // The newest flow survived, the oldest was evicted.
    assert!(app
        .data
        .flows
        .keys()
        .any(|k| k.local == local(super::model::MAX_FLOWS + 49)));
    assert!(!app.data.flows.keys().any(|k| k.local == local(0)));
    render(&app, 80, 24);
}

#[test]
fn panel_scrolling_is_clamped() {
    let mut app = fed(Instant::now());
    handle_key(&mut app, key(KeyCode::Tab));
    handle_key(&mut app, key(KeyCode::Tab));
    assert_eq!(app.focus, Focus::Timeline);
    handle_key(&mut app, key(KeyCode::End));
    assert_eq!(
        app.scroll_timeline, 3,
        "4 lines: two packets and their NAT lines"
    );
    handle_key(&mut app, key(KeyCode::Up));
    assert_eq!(app.scroll_timeline, 2);
}

/// Draws into the real terminal for a look (`cargo test -p tracer tui::tests::demo -- --ignored`
/// inside tmux); quits on q.
#[tokio::test]
#[ignore = "needs a terminal"]
async fn demo() {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut n = 1;
        tx.send(Feed::Status(
            "attached tc ingress+egress on veth9780200 (veth) via TCX".into(),
        ))
        .await
        .ok();
        loop {
            for p in [syn(), syn_ack(), dropped()] {
                if tx.send(Feed::Packet(Box::new(p))).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(counters(n)).await;
            let _ = tx.send(Feed::Lost(n / 10)).await;
            let _ = tx.send(Feed::RingFill(Some((n % 100) as f32))).await;
            let bytes = n * 1000;
            let _ = tx
                .send(Feed::Recording {
                    path: "/tmp/trace.pcapng".into(),
                    bytes,
                })
                .await;
            n += 7;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = t0;
        }
    });
    let title = "flowtrace — ens_monitor_cron (172.18.0.2) on docker_default".to_owned();
    super::run(rx, title).await.unwrap();
}

/// The summary, `--flows` and the dashboard read one flow table: the same flows, with the
/// same counts. (The dashboard is fed as a live run feeds it: the packets through the
/// pipeline's sink, the flows from `changed_flows`.)
#[test]
fn the_summary_the_flows_lines_and_the_dashboard_agree() {
    use crate::correlate::packet::tests::{frame, obs, points, BRIDGE, VETH};
    use crate::{correlate::explain::Explainer, output::Format, pipeline::Pipeline};
    use tracer_common::Direction::Ingress;
    let run = |flow_mode: bool| {
        let mut p = Pipeline::new(
            points(),
            Explainer::empty(),
            Default::default(),
            Format::Json,
            flow_mode,
            crate::events::clock::WallClock::with_offset(0),
        );
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        if !flow_mode {
            p.show_on_dashboard(Box::new(tx));
        }
        // Three flows, one of them with two packets; a neighbour's packet on the bridge.
        for (skb, src, port) in [
            (1, [172, 18, 0, 2], 41234),
            (2, [172, 18, 0, 2], 41235),
            (3, [172, 18, 0, 3], 5555),
            (4, [172, 18, 0, 2], 41236),
            (5, [172, 18, 0, 2], 41234),
        ] {
            let f = frame(src, port);
            if src[3] == 2 {
                p.observe(obs(skb, skb * 100, VETH, Ingress, &f));
            }
            p.observe(obs(skb, skb * 100 + 10, BRIDGE, Ingress, &f));
        }
        let mut out = Vec::new();
        let summary = p.finish(&mut out).expect("write");
        (p, rx, summary, String::from_utf8(out).expect("utf8"))
    };
    let (_, _, flows_summary, printed) = run(true);
    let lines: Vec<crate::model::FlowLine> = printed
        .lines()
        .filter_map(|l| match crate::model::Line::parse(l) {
            Ok(crate::model::Line::Flow(f)) => Some(f),
            _ => None,
        })
        .collect();
    let (mut live, mut rx, summary, _) = run(false);
    let mut app = App::new("t".into());
    let now = Instant::now();
    while let Ok(feed) = rx.try_recv() {
        app.apply(feed, now);
    }
    app.apply(Feed::Flows(live.changed_flows()), now);

    assert_eq!(lines.len(), 3, "{printed}");
    assert_eq!(flows_summary.flows, 3);
    assert_eq!(summary.flows, 3);
    assert_eq!(app.data.flows.len(), 3);
    for l in &lines {
        let row = app
            .data
            .flows
            .iter()
            .find(|(k, _)| k.local == l.local && k.remote == l.remote)
            .map(|(_, f)| f)
            .unwrap_or_else(|| panic!("the dashboard has no row for {l:?}"));
        assert_eq!(row.packets, [l.out.packets, l.inbound.packets], "{l:?}");
        assert_eq!(row.bytes, [l.out.bytes, l.inbound.bytes], "{l:?}");
        assert_eq!(row.drops, l.drops, "{l:?}");
    }
    let two = lines.iter().find(|l| l.local.ends_with(":41234"));
    assert_eq!(two.map(|l| l.out.packets), Some(2));
}
