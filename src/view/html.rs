//! The console's pages as HTML, rendered from the typed views of [`super::console`] with
//! maud, whose templates escape every value they are given: nothing here opts out
//! (`grep PreEscaped src/` finds nothing). Chain and task names are checked names, but are
//! escaped all the same; task output is made text by [`super::clean`] first.
//!
//! Every page is complete without JavaScript: the script (`html/console.js`, served by the
//! binary at [`JS_PATH`]) only refreshes it. It finds what to refresh by attributes:
//! `data-live` on a part of the page that it replaces with the same part of the page
//! fetched again (every 2 s, paused while the tab is hidden), `data-src` and
//! `data-offset` on the `<pre>` of a running run's output, which it extends with the output
//! from that byte offset (as text, never as HTML), and `data-until` on a `<time>` that
//! counts down. All times are given `now`: rendering is pure.

use maud::{html, Markup, DOCTYPE};

use super::console::{ChainPage, IndexView, OutputView, Recent, TaskPage};
use super::runs::{RunView, QUEUED, RUNNING};
use super::status::{ChainView, NowState, NowView, TaskView};
use super::units::{dur, short_time, time_ago, Wall};
use crate::time::rfc3339;

/// The style sheet, served at [`CSS_PATH`].
pub(crate) const CSS: &str = include_str!("html/console.css");
/// The script, served at [`JS_PATH`].
pub(crate) const JS: &str = include_str!("html/console.js");
pub(crate) const CSS_PATH: &str = "/static/console.css";
pub(crate) const JS_PATH: &str = "/static/console.js";

/// What every page needs to know of the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) now: Wall,
    /// Whether `--allow-actions` was given.
    pub(crate) actions: bool,
    pub(crate) host: &'a str,
}

fn page(ctx: &Ctx, title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · run-chain" }
                link rel="stylesheet" href=(CSS_PATH);
                script src=(JS_PATH) defer {}
            }
            body {
                header {
                    nav { a href="/" { "run-chain" } " on " span.host { (ctx.host) } }
                    span #controls {}
                    @if ctx.actions {
                        span.mode { "actions enabled" }
                    } @else {
                        span.mode.readonly { "read-only" }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// Paths of the pages, from checked names.
pub(crate) fn chain_url(chain: &str) -> String {
    format!("/chain/{chain}")
}
pub(crate) fn task_url(chain: &str, task: &str) -> String {
    format!("/chain/{chain}/task/{task}")
}
pub(crate) fn run_url(chain: &str, task: &str, id: u64) -> String {
    format!("/run/{chain}/{task}/{id}")
}
pub(crate) fn run_now_confirm_url(chain: &str, task: &str) -> String {
    format!("/chain/{chain}/task/{task}/run/confirm")
}
pub(crate) fn run_api_url(chain: &str, task: &str, id: u64) -> String {
    format!("/api/v1/runs/{chain}/{task}/{id}")
}

/// An outcome as an icon and a word (never colour alone).
fn outcome_icon(outcome: &str) -> &'static str {
    match outcome {
        "ok" => "✔",
        "failed" => "✘",
        "timeout" => "⏱",
        "signal" => "⚡",
        "spawn-error" => "⛔",
        "interrupted" => "⚠",
        RUNNING => "▶",
        QUEUED => "…",
        _ => "?",
    }
}

fn outcome_badge(outcome: &str) -> Markup {
    html! {
        span class={"outcome o-" (outcome)} { span.icon aria-hidden="true" { (outcome_icon(outcome)) } " " (outcome) }
    }
}

fn up_badge(c: &ChainView) -> Markup {
    // A fleet chain that another host owns runs there (as the `fleet:` line says), whether
    // this host has a standby of it or no instance.
    let elsewhere = c
        .fleet
        .as_ref()
        .filter(|f| f.role != "owner")
        .and_then(|f| f.host.as_deref());
    html! {
        @if let Some(h) = elsewhere {
            span.state.up title="runs on another host of the fleet" { span.icon aria-hidden="true" { "▲" } " on " (h) }
        } @else if c.up {
            span.state.up { span.icon aria-hidden="true" { "▲" } " up" }
        } @else {
            span.state.down { span.icon aria-hidden="true" { "▼" } " down" }
        }
    }
}

/// A time, absolute, with how long ago.
fn when(ctx: &Ctx, at: Wall) -> Markup {
    html! { time datetime=(rfc3339(at.0)) title=(short_time(at)) { (time_ago(ctx.now, at)) } }
}

/// What a chain does now, in words: "running nightly (run 12) for 3m, p50 2m", "cooling
/// down; nightly in 4m" (a countdown), "nightly waiting for group db for 4.0s", "down".
/// A pending run-now under what the chain does now: "then TASK (run N), queued by X",
/// linked to the run's page (which shows it queued).
fn queued(c: &ChainView) -> Markup {
    html! {
        @if let Some(q) = &c.queued {
            br;
            span.queued { "queued: " a href=(run_url(&c.chain, &q.task, q.run_id)) { (q.task) " (run " (q.run_id) ")" } ", asked by " (q.requested_by) }
        }
    }
}

fn doing(ctx: &Ctx, n: &NowView, p50: Option<u64>) -> Markup {
    let task = n.task.as_deref().unwrap_or("?");
    let for_ = n
        .since
        .map_or("?".to_string(), |s| dur(ctx.now.0.saturating_sub(s.0)));
    html! {
        @match n.state {
            NowState::Running => {
                "running " b { (task) }
                @if let Some(id) = n.run_id { " (run " (id) ")" }
                " for " (for_)
                @if let Some(p) = p50 { ", p50 " (dur(p)) }
                @if let Some(g) = &n.group { ", holding a slot of group " (g) }
            }
            NowState::Waiting => {
                b { (task) } " waiting for group " (n.group.as_deref().unwrap_or("?")) " for " (for_)
            }
            NowState::Cooldown => {
                @match n.until {
                    Some(u) if u > ctx.now => {
                        "cooling down; " b { (task) } " in "
                        time.countdown datetime=(rfc3339(u.0)) data-until=(u.0) { (dur(u.0 - ctx.now.0)) }
                    }
                    _ => { b { (task) } " due now" }
                }
            }
            NowState::Starting => { "starting" }
            NowState::Down => { "down" }
            NowState::Standby => { "standby" }
            NowState::Elsewhere => { "runs on another host" }
        }
    }
}

fn streak_text(t: &TaskView) -> String {
    match t.streak {
        Some(s) if s.failures > 0 => format!(
            "{} failure{} since {}",
            s.failures,
            if s.failures == 1 { "" } else { "s" },
            short_time(s.since)
        ),
        _ => "-".to_string(),
    }
}

/// `/`.
pub(crate) fn index(ctx: &Ctx, v: &IndexView) -> String {
    let body = html! {
        h1 { "Chains" }
        p.root { "RUN_ROOT " code { (v.status.run_root) } }
        div #chains data-live {
            @if v.status.chains.is_empty() {
                p { "No chain has run in this RUN_ROOT yet." }
            } @else {
                table.chains {
                    thead { tr { th { "Chain" } th { "State" } th { "Now" } th { "Last 20 runs" } th { "Failure streak" } th { "Alerts" } th { "PID" } th { "Host" } } }
                    tbody {
                        @for (i, c) in v.status.chains.iter().enumerate() {
                            @let p50 = c.now.task.as_ref().and_then(|t| v.recent.get(&(c.chain.clone(), t.clone()))).and_then(|r| r.duration_quantile(0.5));
                            @let streak = c.tasks.iter().filter_map(|t| t.streak).map(|s| s.failures).max().unwrap_or(0);
                            tr data-chain=(c.chain) {
                                td { a href=(chain_url(&c.chain)) { (c.chain) } }
                                td { (up_badge(c)) }
                                td.now { (doing(ctx, &c.now, p50)) (queued(c)) }
                                td { (strip(v.strips.get(i).map_or(&[][..], Vec::as_slice))) }
                                td { @if streak > 0 { (streak) " failed" } @else { "-" } }
                                td { (v.alerts.get(i).copied().unwrap_or(0)) }
                                td { @if let Some(p) = c.pid { (p) } @else { "-" } }
                                td { @if let Some(h) = c.fleet.as_ref().and_then(|f| f.host.as_ref()) { (h) } @else if c.up { (v.host) } @else { "-" } }
                            }
                        }
                    }
                }
            }
        }
    };
    page(ctx, "Chains", body)
}

/// The newest outcomes, oldest on the left, each a link to its run.
fn strip(runs: &[RunView]) -> Markup {
    html! {
        span.strip {
            @for r in runs.iter().rev() {
                a class={"o-" (r.outcome)} href=(run_url(&r.chain, &r.task, r.run_id))
                    title=(format!("{} run {}: {} ({})", r.task, r.run_id, r.outcome, trigger_text(r))) {
                    (outcome_icon(&r.outcome))
                }
            }
        }
    }
}

/// Whether the actions may be offered for `c` here: on, and the chain not another
/// host's (a fleet chain is acted on from its owner's console).
fn acts(ctx: &Ctx, c: &ChainView) -> bool {
    ctx.actions && c.fleet.as_ref().is_none_or(|f| f.role == "owner")
}

/// A fleet chain's owner, lease and standbys, in words.
fn fleet_line(ctx: &Ctx, c: &ChainView) -> Markup {
    html! {
        @if let Some(f) = &c.fleet {
            p.fleet { "fleet: " (crate::view::status::fleet_text(f, ctx.now)) }
        }
    }
}

fn actions(ctx: &Ctx, c: &ChainView) -> Markup {
    let chain = &c.chain;
    let elsewhere = c.fleet.as_ref().filter(|f| f.role != "owner");
    html! {
        @if let Some(f) = elsewhere {
            p.actions.readonly {
                @match &f.host {
                    Some(h) => { "owner: host " (h) "; actions are on its console" }
                    None => { "no host owns this chain now; no actions here" }
                }
            }
        } @else if ctx.actions {
            p.actions {
                a.button href=(format!("/chain/{chain}/kick/confirm")) { "Kick (end the cooldown)" }
                " "
                a.button href=(format!("/chain/{chain}/stop/confirm")) { "Stop" }
            }
        } @else {
            p.actions.readonly { "read-only: actions are off (serve --allow-actions)" }
        }
    }
}

/// `/chain/C`.
pub(crate) fn chain(ctx: &Ctx, v: &ChainPage) -> String {
    let c = &v.chain;
    let p50 = c
        .now
        .task
        .as_ref()
        .and_then(|t| v.recent.get(t))
        .and_then(|r| r.duration_quantile(0.5));
    let body = html! {
        h1 { "Chain " (c.chain) }
        div #state data-live {
            p { (up_badge(c)) @if let Some(p) = c.pid { " pid " (p) " on " (v.host) } }
            p.now { (doing(ctx, &c.now, p50)) (queued(c)) }
        }
        (fleet_line(ctx, c))
        (actions(ctx, c))
        h2 { "Tasks" }
        div #tasks data-live {
            table.tasks {
                thead { tr { th { "Task" } th { "Last" } th { "p50" } th { "p95" } th { "Success" } th { "Runs" } th { "Streak" } @if acts(ctx, c) { th { "Action" } } } }
                tbody {
                    @for t in &c.tasks {
                        @let r = v.recent.get(&t.task);
                        tr {
                            td { a href=(task_url(&c.chain, &t.task)) { (t.task) } }
                            td {
                                @if let Some(l) = &t.last {
                                    a href=(run_url(&c.chain, &t.task, l.run_id)) { (outcome_badge(l.outcome.as_deref().unwrap_or("?"))) }
                                    @if let Some(s) = l.stop { " " (when(ctx, s)) }
                                } @else { "-" }
                            }
                            td { (opt_dur(r.and_then(|r| r.duration_quantile(0.5)))) }
                            td { (opt_dur(r.and_then(|r| r.duration_quantile(0.95)))) }
                            td { (success_rate(t)) }
                            td { (t.runs) }
                            td { (streak_text(t)) }
                            @if acts(ctx, c) {
                                td { (run_now_button(&c.chain, &t.task)) }
                            }
                        }
                    }
                }
            }
        }
        div #tail-box data-live {
            @if let Some(o) = &v.tail {
                h2 { @if o.running { "Output of the running task" } @else { "Output of the last run" } }
                p {
                    a href=(run_url(&o.run.chain, &o.run.task, o.run.run_id)) { (o.run.task) " run " (o.run.run_id) }
                    " " (outcome_badge(&o.run.outcome))
                }
                (live_output(o))
            } @else {
                h2 { "Output" }
                p { "No task has run yet." }
            }
        }
    };
    page(ctx, &format!("Chain {}", c.chain), body)
}

/// A run's output: a `<pre>` that the script extends while the run goes on (it keeps its
/// text across refreshes while `data-src` stays the same).
fn live_output(o: &OutputView) -> Markup {
    html! {
        @if o.output_from > 0 {
            p.cut { "(the first " (o.output_from) " bytes are not kept)" }
        }
        pre.output #output
            data-src=[o.running.then(|| run_api_url(&o.run.chain, &o.run.task, o.run.run_id))]
            data-offset=(o.output_to) { (o.output) }
    }
}

fn opt_dur(ms: Option<u64>) -> String {
    ms.map_or("-".into(), dur)
}

fn success_rate(t: &TaskView) -> String {
    if t.runs == 0 {
        return "-".into();
    }
    format!("{:.1}%", t.ok as f64 * 100.0 / t.runs as f64)
}

/// The outcomes a history can be filtered by.
pub(crate) const OUTCOMES: &[&str] = &[
    "ok",
    "failed",
    "timeout",
    "signal",
    "spawn-error",
    "interrupted",
    RUNNING,
    QUEUED,
];

/// `/chain/C/task/T`.
pub(crate) fn task(ctx: &Ctx, v: &TaskPage) -> String {
    let c = &v.chain.chain;
    let t = &v.task;
    let filter_q = v
        .outcome
        .as_ref()
        .map_or(String::new(), |o| format!("&outcome={o}"));
    let body = html! {
        h1 { a href=(chain_url(c)) { (c) } " / " (t.task) }
        (fleet_line(ctx, &v.chain))
        @if acts(ctx, &v.chain) {
            p.actions { (run_now_button(c, &t.task)) }
        }
        div #counters data-live {
            dl.counters {
                dt { "Runs" } dd { (t.runs) }
                dt { "OK" } dd { (t.ok) }
                dt { "Failed" } dd { (t.failures) }
                dt { "Interrupted" } dd { (t.interrupted) }
                dt { "Success" } dd { (success_rate(t)) }
                dt { "p50 / p95" } dd { (opt_dur(v.recent.duration_quantile(0.5))) " / " (opt_dur(v.recent.duration_quantile(0.95))) }
                dt { "Last success" } dd { @if let Some(s) = t.last_success { (when(ctx, s)) } @else { "-" } }
                dt { "Streak" } dd { (streak_text(t)) }
            }
        }
        h2 { "The last " (v.recent.durations_ms.len()) " runs" }
        (chart(&v.recent))
        h2 { "History" }
        form.filter method="get" action=(task_url(c, &t.task)) {
            label for="outcome" { "Outcome " }
            select #outcome name="outcome" {
                option value="" selected[v.outcome.is_none()] { "any" }
                @for o in OUTCOMES {
                    option value=(o) selected[v.outcome.as_deref() == Some(*o)] { (o) }
                }
            }
            " "
            button type="submit" { "Filter" }
        }
        div #history data-live=[v.before.is_none().then_some("")] {
            (runs_table(ctx, &v.runs))
        }
        p.pages {
            @if v.before.is_some() {
                a href=(format!("{}?{}", task_url(c, &t.task), filter_q.trim_start_matches('&'))) { "« newest" }
                " "
            }
            @if let Some(o) = v.older {
                a rel="next" href=(format!("{}?before={o}{filter_q}", task_url(c, &t.task))) { "older »" }
            }
        }
    };
    page(ctx, &format!("{} / {}", c, t.task), body)
}

fn runs_table(ctx: &Ctx, runs: &[RunView]) -> Markup {
    html! {
        @if runs.is_empty() {
            p { "No runs." }
        } @else {
            table.runs {
                thead { tr { th { "Run" } th { "Start" } th { "Outcome" } th { "Trigger" } th { "Exit" } th { "Duration" } th { "Latency" } } }
                tbody {
                    @for r in runs {
                        tr {
                            td { a href=(run_url(&r.chain, &r.task, r.run_id)) { (r.run_id) } }
                            td { (short_time(r.start)) " (" (time_ago(ctx.now, r.start)) ")" }
                            td { (outcome_badge(&r.outcome)) }
                            td.trigger { (trigger_text(r)) }
                            td { (exit_text(r)) }
                            td { (opt_dur(r.duration_seconds.map(|d| d.0))) }
                            td { (opt_dur(r.latency_seconds.map(|d| d.0))) }
                        }
                    }
                }
            }
        }
    }
}

/// Why a run ran: "schedule", "kick", or "manual (by WHO)".
fn trigger_text(r: &RunView) -> String {
    match &r.requested_by {
        Some(by) => format!("{} (by {by})", r.trigger),
        None => r.trigger.clone(),
    }
}

/// The "Run now" link of a task, to its confirmation page (actions on only).
fn run_now_button(chain: &str, task: &str) -> Markup {
    html! {
        a.button.run-now href=(run_now_confirm_url(chain, task)) { "Run now" }
    }
}

fn exit_text(r: &RunView) -> String {
    match (r.exit_code, r.signal) {
        (_, Some(s)) => crate::core::outcome::signal_name(s),
        (Some(c), None) => c.to_string(),
        (None, None) => "-".into(),
    }
}

/// An inline SVG of the recent durations and start latencies, and the same numbers as a
/// table for screen readers.
fn chart(r: &Recent) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    let n = r.durations_ms.len();
    let max = r
        .durations_ms
        .iter()
        .chain(&r.latencies_ms)
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    // A margin of M around the plot, so that the points at its edges show whole.
    const M: f64 = 6.0;
    let step = if n > 1 {
        (W - 2.0 * M) / (n - 1) as f64
    } else {
        0.0
    };
    let xy = |i: usize, y: u64| {
        (
            M + i as f64 * step,
            H - M - (y as f64 / max as f64) * (H - 2.0 * M),
        )
    };
    let points = |v: &[u64]| -> String {
        v.iter()
            .enumerate()
            .map(|(i, &y)| {
                let (x, y) = xy(i, y);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        @if n == 0 {
            p { "No finished run yet." }
        } @else {
            figure.chart {
                svg viewBox=(format!("0 0 {W} {H}")) width="600" height="160" role="img" aria-labelledby="chart-title" {
                    title #chart-title { "Durations and start latencies of the last " (n) " runs; the highest is " (dur(max)) }
                    line x1="0" y1=(H) x2=(W) y2=(H) stroke="currentColor" stroke-width="1" {}
                    polyline.durations points=(points(&r.durations_ms)) fill="none" stroke="#1f6feb" stroke-width="2" {}
                    polyline.latencies points=(points(&r.latencies_ms)) fill="none" stroke="#b35900" stroke-width="1.5" stroke-dasharray="4 3" {}
                    @for (i, d) in r.durations_ms.iter().enumerate() {
                        @let (x, y) = xy(i, *d);
                        circle cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="2.5" fill="#1f6feb" {}
                    }
                }
                figcaption {
                    span.key.durations { "── duration" } " " span.key.latencies { "- - start latency" } " · top of the chart: " (dur(max))
                }
            }
            details {
                summary { "The same as a table" }
                table.chart-data {
                    thead { tr { th { "#" } th { "Duration" } th { "Start latency" } } }
                    tbody {
                        @for (i, d) in r.durations_ms.iter().enumerate() {
                            tr { td { (i + 1) } td { (dur(*d)) } td { (opt_dur(r.latencies_ms.get(i).copied())) } }
                        }
                    }
                }
            }
        }
    }
}

/// `/run/C/T/ID`. A queued run (run-now, not started yet) says so; its page, as a
/// running run's, refreshes (`data-live` on the output too, until the run has ended, so
/// that a queued run's page turns into the running run's).
pub(crate) fn run(ctx: &Ctx, o: &OutputView) -> String {
    let r = &o.run;
    let queued = r.outcome == QUEUED;
    let body = html! {
        h1 { a href=(chain_url(&r.chain)) { (r.chain) } " / " a href=(task_url(&r.chain, &r.task)) { (r.task) } " / run " (r.run_id) }
        div #fields data-live {
            @if queued {
                p.queued { "Queued: the chain runs it as soon as it can (at once in a cooldown, else right after the running task). This page shows it when it starts." }
            }
            dl.fields {
                dt { "Outcome" } dd { (outcome_badge(&r.outcome)) }
                dt { "Trigger" } dd.trigger { (r.trigger) }
                @if let Some(by) = &r.requested_by {
                    dt { "Requested by" } dd.requested-by { (by) }
                }
                dt { "Exit code" } dd { @if let Some(c) = r.exit_code { (c) } @else { "-" } }
                dt { "Signal" } dd { @if let Some(s) = r.signal { (crate::core::outcome::signal_name(s)) } @else { "-" } }
                dt { "Scheduled" } dd { @if let Some(s) = r.scheduled { (short_time(s)) } @else { "-" } }
                dt { @if queued { "Requested" } @else { "Start" } } dd { (short_time(r.start)) " (" (when(ctx, r.start)) ")" }
                dt { "Stop" } dd { @if let Some(s) = r.stop { (short_time(s)) } @else { "-" } }
                dt { "Duration" } dd { (opt_dur(r.duration_seconds.map(|d| d.0))) }
                dt { "Start latency" } dd { (opt_dur(r.latency_seconds.map(|d| d.0))) }
                dt { "Error" } dd { @if let Some(e) = &r.error { (e) } @else { "-" } }
                dt { "Output" } dd {
                    (r.output_bytes) " bytes"
                    @if r.output_cut { " (only the tail is kept)" }
                    " · " a href=(format!("{}/output.txt", run_url(&r.chain, &r.task, r.run_id))) { "output.txt" }
                }
                dt { "Host" } dd { (r.host) }
                dt { "Instance" } dd { "pid " (r.instance.pid) ", version " (r.instance.version) ", config " (r.instance.config_digest) }
            }
        }
        h2 { "Output" }
        div #output-box data-live=[(queued || o.running).then_some("")] {
            (live_output(o))
        }
    };
    page(
        ctx,
        &format!("{} / {} run {}", r.chain, r.task, r.run_id),
        body,
    )
}

/// The action a confirmation page asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action<'a> {
    Kick,
    Stop,
    /// Run this task now.
    RunNow(&'a str),
}

impl Action<'_> {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Action::Kick => "kick",
            Action::Stop => "stop",
            Action::RunNow(_) => "run-now",
        }
    }

    /// Where the confirmation form posts.
    fn url(self, chain: &str) -> String {
        match self {
            Action::Kick => format!("/chain/{chain}/kick"),
            Action::Stop => format!("/chain/{chain}/stop"),
            Action::RunNow(task) => format!("/chain/{chain}/task/{task}/run"),
        }
    }
}

/// `/chain/C/ACTION/confirm` (`/chain/C/task/T/run/confirm`): a form that POSTs the
/// action with the server's token.
pub(crate) fn confirm(ctx: &Ctx, chain: &str, action: Action, token: &str) -> String {
    let body = html! {
        @match action {
            Action::Kick => {
                h1 { "Kick chain " (chain) "?" }
                p { "The current cooldown ends now: the next task starts at once. A running task is not affected." }
            }
            Action::Stop => {
                h1 { "Stop chain " (chain) "?" }
                p { "The chain stops after its running task has ended (or at once, if you tick the box). It does not start again by itself." }
            }
            Action::RunNow(task) => {
                h1 { "Run " (task) " of chain " (chain) " now?" }
                p { "The chain runs " b { (task) } " out of turn: at once in a cooldown, or right after the running task ends. Then it goes back to its order. You land on the run's page, which shows it queued until it starts." }
            }
        }
        @if ctx.actions {
            form.confirm method="post" action=(action.url(chain)) {
                input type="hidden" name="token" value=(token);
                @if action == Action::Stop {
                    p { label { input type="checkbox" name="now" value="1"; " stop the running task now" } }
                }
                button type="submit" #confirm-submit {
                    @match action { Action::Kick => "Kick", Action::Stop => "Stop", Action::RunNow(_) => "Run now" }
                }
                " "
                a href=(match action { Action::RunNow(t) => task_url(chain, t), _ => chain_url(chain) }) { "Cancel" }
            }
        } @else {
            p.readonly { "read-only: actions are off (serve --allow-actions)" }
        }
    };
    page(ctx, &format!("{} {chain}", action.name()), body)
}

/// A run-now the chain refused (409): why, in the chain's words, and the way back.
pub(crate) fn refused(ctx: &Ctx, chain: &str, task: &str, why: &str) -> String {
    let body = html! {
        h1 { "Not run: " (task) " of chain " (chain) }
        p.error.refused { (why) }
        p {
            a href=(task_url(chain, task)) { "Back to " (task) }
            " · "
            a href=(chain_url(chain)) { "Back to chain " (chain) }
        }
    };
    page(ctx, &format!("run-now of {task} refused"), body)
}

/// The login form (off loopback, when no secret came with the request).
pub(crate) fn login(ctx: &Ctx, failed: bool) -> String {
    let body = html! {
        h1 { "Log in" }
        @if failed { p.error { "That is not the secret." } }
        form.login method="post" action="/login" {
            p { label for="secret" { "The secret in serve's --token-file " } input #secret type="password" name="secret" autocomplete="current-password"; }
            button type="submit" { "Log in" }
        }
    };
    page(ctx, "Log in", body)
}

/// A page that says what went wrong.
pub(crate) fn error(ctx: &Ctx, title: &str, message: &str) -> String {
    let body = html! {
        h1 { (title) }
        p.error { (message) }
        p { a href="/" { "All chains" } }
    };
    page(ctx, title, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::console::slice_output;
    use crate::view::runs::tests::row;

    fn ctx() -> Ctx<'static> {
        Ctx {
            now: Wall(10_000),
            actions: false,
            host: "h<x>",
        }
    }

    #[test]
    fn hostile_output_and_names_are_text() {
        let mut r = row("c\"><script>alert(1)</script>", 7, 1, "h", Some("ok"));
        r.task = "t' onmouseover='alert(2)".into();
        let raw = b"</pre><script>alert(3)</script><img src=x onerror=alert(4)>\x1b[31m\x1b]8;;http://e/\x1b\\L\x1b]8;;\x1b\\\xff\x00";
        r.output_bytes = raw.len() as u64;
        let o = slice_output(RunView::from(r), raw, None);
        let page = run(&ctx(), &o);
        // Attributes are double-quoted and `"` is escaped: a `'` cannot end one.
        for bad in [
            "<script>alert",
            "<img",
            "\" on",
            "=\"/chain/c\">",
            "\x1b",
            "\0",
            "<x>",
        ] {
            assert!(!page.contains(bad), "{bad:?} in {page}");
        }
        assert!(page.contains("&lt;/pre&gt;&lt;script&gt;alert(3)&lt;/script&gt;&lt;img src=x onerror=alert(4)&gt;L\u{fffd}"), "{page}");
        assert!(page.contains("href=\"/chain/c&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""));
        // The only scripts: the served file.
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains("<script src=\"/static/console.js\" defer></script>"));
    }

    #[test]
    fn a_confirmation_carries_the_token_only_when_actions_are_on() {
        let mut c = ctx();
        let off = confirm(&c, "nightly", Action::Kick, "tok123");
        assert!(!off.contains("tok123") && off.contains("read-only"));
        c.actions = true;
        let on = confirm(&c, "nightly", Action::Stop, "tok123");
        assert!(
            on.contains("<form class=\"confirm\" method=\"post\" action=\"/chain/nightly/stop\">"),
            "{on}"
        );
        assert!(
            on.contains("<input type=\"hidden\" name=\"token\" value=\"tok123\">"),
            "{on}"
        );
    }

    #[test]
    fn a_run_now_confirmation_posts_to_the_task_and_a_refusal_says_why() {
        let mut c = ctx();
        c.actions = true;
        let on = confirm(&c, "nightly", Action::RunNow("dump"), "tok123");
        assert!(
            on.contains(
                "<form class=\"confirm\" method=\"post\" action=\"/chain/nightly/task/dump/run\">"
            ),
            "{on}"
        );
        assert!(
            on.contains("href=\"/chain/nightly/task/dump\">Cancel</a>"),
            "{on}"
        );
        let page = refused(&c, "nightly", "dump", "refused: <b>busy</b>");
        assert!(page.contains("refused: &lt;b&gt;busy&lt;/b&gt;"), "{page}");
        assert!(page.contains("href=\"/chain/nightly/task/dump\""), "{page}");
    }

    #[test]
    fn a_queued_run_says_so_and_who_asked_and_stays_live() {
        let mut r = row("c", 4, 1, "h", Some(QUEUED));
        r.trigger = "manual".into();
        r.requested_by = Some("web 127.0.0.1:5<".into());
        let page = run(&ctx(), &slice_output(RunView::from(r), b"", None));
        assert!(page.contains("Queued:"), "{page}");
        assert!(
            page.contains("<dd class=\"requested-by\">web 127.0.0.1:5&lt;</dd>"),
            "{page}"
        );
        assert!(page.contains("<div id=\"output-box\" data-live"), "{page}");
        let done = run(
            &ctx(),
            &slice_output(RunView::from(row("c", 4, 1, "h", Some("ok"))), b"", None),
        );
        assert!(!done.contains("Queued:") && !done.contains("<div id=\"output-box\" data-live"));
        assert!(
            done.contains("<dd class=\"trigger\">schedule</dd>"),
            "{done}"
        );
    }
}
