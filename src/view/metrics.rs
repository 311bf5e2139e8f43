//! Prometheus text exposition of every chain in a RUN_ROOT.
//!
//! [`render`] is pure: it formats a [`Snapshot`] (aggregates, a bounded window of
//! recent runs per task, alert counts, which chains are up). [`collect`] reads the
//! snapshot: the lock holders for `up` ([`crate::lock::holders::holders`]), and, in one
//! query, the `series` aggregates, kept up to date as runs are recorded (so counters never
//! fall when runs are pruned), with the durations and latencies of the newest
//! [`store::RECENT_WINDOW`] runs packed in the same row for the quantiles. A scrape reads
//! one row per task: its cost never grows with the history.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

use crate::core::alert::Kind;
use crate::store::pg::reader::FleetRows;
use crate::store::{self, SeriesRow};

/// The quantiles, with their label as `{}` writes the number.
const QUANTILES: [(f64, &str); 5] = [
    (0.01, ",quantile=\"0.01\""),
    (0.1, ",quantile=\"0.1\""),
    (0.5, ",quantile=\"0.5\""),
    (0.9, ",quantile=\"0.9\""),
    (0.99, ",quantile=\"0.99\""),
];

/// What one scrape shows.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    /// chain -> up (by its lock)
    pub(crate) chains: BTreeMap<String, bool>,
    pub(crate) series: Vec<SeriesRow>,
    /// (chain, task) -> (durations ms, latencies ms) of recent runs
    pub(crate) recent: HashMap<(String, String), store::Recent>,
    /// (chain, task, kind) -> count
    pub(crate) alerts: Vec<(String, String, String, u64)>,
    /// (chain, task) -> (kicked runs, manual runs); the rest of its runs are scheduled.
    pub(crate) triggers: HashMap<(String, String), (u64, u64)>,
    /// With a `[store]`: the fleet's leases, as this scrape exports them.
    pub(crate) fleet: Option<FleetSnap>,
}

/// The fleet's part of a scrape: the lease rows of the chains it exports.
#[derive(Debug, Default, Clone)]
pub(crate) struct FleetSnap {
    pub(crate) rows: FleetRows,
    /// The host whose part this is (None: the whole fleet): the chains' own families
    /// (owner, epoch, expiry, counters) are exported by their owner only.
    pub(crate) host: Option<String>,
}

/// Which chains a fleet host's scrape exports: `host`'s (None: the whole fleet, for
/// `serve --fleet`). A host exports the chains it owns (their runs, owner, counters) and
/// those it is a standby of (their `run_chain_up`, standby and lease gauges, no runs), so
/// that Prometheus scraping every host counts each run once.
pub(crate) fn scope_to_host(snap: &mut Snapshot, rows: FleetRows, host: Option<&str>) {
    let Some(host) = host else {
        // The whole fleet: a chain is up where a host holds its lease unexpired (its
        // owner's process is up, as far as the fleet knows), or where it runs here.
        for r in rows.chains.values() {
            *snap.chains.entry(r.chain.clone()).or_insert(false) |= r.held;
        }
        snap.fleet = Some(FleetSnap { rows, host: None });
        return;
    };
    let owned: std::collections::BTreeSet<String> = rows
        .chains
        .values()
        .filter(|r| r.owner() == Some(host))
        .map(|r| r.chain.clone())
        .collect();
    let all: std::collections::BTreeSet<String> = rows.chains.keys().cloned().collect();
    let mut rows = rows;
    rows.chains
        .retain(|c, r| owned.contains(c) || r.standbys.iter().any(|s| s.host == host));
    for r in rows.chains.values_mut() {
        r.standbys.retain(|s| s.host == host);
    }
    snap.series.retain(|s| owned.contains(&s.chain));
    snap.recent.retain(|(c, _), _| owned.contains(c));
    snap.alerts.retain(|(c, ..)| owned.contains(c));
    snap.triggers.retain(|(c, _), _| owned.contains(c));
    // A chain of the fleet that this host neither owns nor waits for is another host's
    // to show, even if its RUN_ROOT here names it.
    snap.chains
        .retain(|c, _| !all.contains(c) || rows.chains.contains_key(c));
    snap.fleet = Some(FleetSnap {
        rows,
        host: Some(host.to_string()),
    });
}

/// A fleet host's scrape: its `[store]`, and whether it exports the whole fleet
/// (`serve --fleet`) or this host's part ([`scope_to_host`]).
#[derive(Debug, Clone)]
pub(crate) struct Fleet {
    pub(crate) cfg: crate::config::FleetConfig,
    pub(crate) whole: bool,
}

/// Read the snapshot of `run_root`, and with `fleet` the fleet's leases (connecting from
/// this thread, with a short timeout), scoped as [`scope_to_host`] says.
pub(crate) fn collect_fleet(run_root: &Path, fleet: Option<&Fleet>) -> Result<Snapshot, String> {
    let Some(f) = fleet else {
        return collect(run_root);
    };
    // The records from the fleet's store when it keeps them (else from RUN_ROOT), and the
    // leases through the same connection.
    let conn = crate::view::runs::open_reader(run_root, Some(&f.cfg)).map_err(|e| e.to_string())?;
    let rows = match conn.as_ref().and_then(|c| c.fleet(f.cfg.lease)) {
        Some(rows) => rows.map_err(|e| format!("cannot read the fleet's store: {e}"))?,
        None => store::pg::reader::read(&f.cfg)
            .map_err(|e| format!("cannot read the fleet's store: {e}"))?,
    };
    let mut snap = collect_with(run_root, conn.as_deref())?;
    scope_to_host(&mut snap, rows, (!f.whole).then_some(f.cfg.host.as_str()));
    Ok(snap)
}

/// Read the snapshot of `run_root`.
pub(crate) fn collect(run_root: &Path) -> Result<Snapshot, String> {
    collect_with(run_root, store::open_read(run_root)?.as_ref())
}

/// The snapshot of `run_root`'s chains, with the records of `conn`.
fn collect_with(run_root: &Path, conn: Option<&store::Reader>) -> Result<Snapshot, String> {
    let mut snap = Snapshot::default();
    if let Ok(names) = crate::lock::holders::chains(run_root) {
        let up = crate::lock::holders::holders(run_root, &names);
        for (c, holder) in names.into_iter().zip(up) {
            snap.chains.insert(c, holder.is_some());
        }
    }
    let Some(conn) = conn else {
        return Ok(snap);
    };
    let err =
        |e: store::ReadError| format!("failed to read {}: {e}", store::path(run_root).display());
    let version = conn.schema_version();
    if version >= 3 {
        for (s, recent) in store::series_with_recent(conn).map_err(err)? {
            snap.recent
                .insert((s.chain.clone(), s.task.clone()), recent);
            snap.series.push(s);
        }
    } else {
        snap.series = store::series(conn).map_err(err)?;
    }
    if version >= 2 {
        snap.alerts = store::alert_counts(conn).map_err(err)?;
    }
    for (c, t, kick, manual) in store::trigger_counts(conn).map_err(err)? {
        snap.triggers.insert((c, t), (kick, manual));
    }
    for s in &snap.series {
        snap.chains.entry(s.chain.clone()).or_insert(false);
    }
    Ok(snap)
}

/// Escape a label value.
fn esc(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

fn labels(chain: &str, task: &str) -> String {
    format!("chain=\"{}\",task=\"{}\"", esc(chain), esc(task))
}

/// A quantile of sorted values (nearest rank).
pub(crate) fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Append `n` in decimal.
fn put_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Append milliseconds as seconds, as `{}` writes `ms as f64 / 1000.0` (the shortest
/// decimal that reads back as that double), without going through floating point.
fn put_secs(out: &mut String, ms: u64) {
    // Below 10^15 (31,000 years) the decimal ms/1000 has at most 15 significant
    // digits, so it is the shortest decimal of its double: the same text.
    if ms >= 1_000_000_000_000_000 {
        let _ = write!(out, "{}", ms as f64 / 1000.0);
        return;
    }
    put_u64(out, ms / 1000);
    let mut frac = ms % 1000;
    if frac != 0 {
        out.push('.');
        let mut div = 100;
        while frac != 0 {
            out.push(char::from(b'0' + (frac / div) as u8));
            frac %= div;
            div /= 10;
        }
    }
}

/// Append the start of a sample line: `name{labels extra} `.
fn put_sample(out: &mut String, name: &str, labels: &str, extra: &str) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    out.push_str(extra);
    out.push_str("} ");
}

/// One family: its HELP and TYPE lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The text exposition of `snap`; `scrape_seconds` is how long collecting took.
pub(crate) fn render(snap: &Snapshot, scrape_seconds: Option<f64>) -> String {
    // About 2.5 KB per task; written once, without growing.
    let mut out = String::with_capacity(4096 + snap.series.len() * 3072);
    let out = &mut out;
    // The labels of each series, made once.
    let ls: Vec<String> = snap
        .series
        .iter()
        .map(|s| labels(&s.chain, &s.task))
        .collect();
    let up = |s: &SeriesRow| snap.chains.get(&s.chain).copied().unwrap_or(false);

    head(
        out,
        "run_chain_build_info",
        "gauge",
        "run-chain's version (always 1).",
    );
    let _ = writeln!(
        out,
        "run_chain_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    head(
        out,
        "run_chain_up",
        "gauge",
        "Whether the chain's process runs (holds its lock; serve --fleet: a host holds its lease).",
    );
    for (c, up) in &snap.chains {
        let _ = writeln!(
            out,
            "run_chain_up{{chain=\"{}\"}} {}",
            esc(c),
            u8::from(*up)
        );
    }

    head(
        out,
        "run_chain_runs_total",
        "counter",
        "Runs by result (ok, failed, timeout, signal, spawn-error, interrupted).",
    );
    for (s, l) in snap.series.iter().zip(&ls) {
        for (result, n) in [
            (",result=\"ok\"", s.ok),
            (",result=\"failed\"", s.failed),
            (",result=\"timeout\"", s.timeout),
            (",result=\"signal\"", s.signal),
            (",result=\"spawn-error\"", s.spawn_error),
            (",result=\"interrupted\"", s.interrupted),
        ] {
            put_sample(out, "run_chain_runs_total", l, result);
            put_u64(out, n);
            out.push('\n');
        }
    }

    // A family of its own: a `trigger` label on run_chain_runs_total would split its
    // series, and break the queries and alerts written against them.
    head(
        out,
        "run_chain_runs_by_trigger_total",
        "counter",
        "Runs by why they were started (schedule, kick, manual: run-now).",
    );
    for (s, l) in snap.series.iter().zip(&ls) {
        let (kick, manual) = snap
            .triggers
            .get(&(s.chain.clone(), s.task.clone()))
            .copied()
            .unwrap_or_default();
        for (trigger, n) in [
            (
                ",trigger=\"schedule\"",
                s.runs.saturating_sub(kick + manual),
            ),
            (",trigger=\"kick\"", kick),
            (",trigger=\"manual\"", manual),
        ] {
            put_sample(out, "run_chain_runs_by_trigger_total", l, trigger);
            put_u64(out, n);
            out.push('\n');
        }
    }

    // The recent windows, sorted once: (durations, latencies) per series.
    let sorted: Vec<Option<(Vec<u64>, Vec<u64>)>> = snap
        .series
        .iter()
        .map(|s| {
            let (d, l) = snap.recent.get(&(s.chain.clone(), s.task.clone()))?;
            let (mut d, mut l) = (d.clone(), l.clone());
            d.sort_unstable();
            l.sort_unstable();
            Some((d, l))
        })
        .collect();
    for (name, help, latency) in [
        (
            "run_chain_run_duration_seconds",
            "Run duration: quantiles over recent runs, sum and count over all runs.",
            false,
        ),
        (
            "run_chain_run_latency_seconds",
            "Start latency (actual start minus scheduled start, including any wait for a group): quantiles over recent runs, sum and count over all runs.",
            true,
        ),
    ] {
        head(out, name, "summary", help);
        let (sum_name, count_name) = (format!("{name}_sum"), format!("{name}_count"));
        for ((s, l), w) in snap.series.iter().zip(&ls).zip(&sorted) {
            if let Some((d, lat)) = w {
                let v = if latency { lat } else { d };
                for (q, qlabel) in QUANTILES {
                    if let Some(x) = quantile(v, q) {
                        put_sample(out, name, l, qlabel);
                        put_secs(out, x);
                        out.push('\n');
                    }
                }
            }
            let sum = if latency {
                s.latency_sum_ms
            } else {
                s.duration_sum_ms
            };
            put_sample(out, &sum_name, l, "");
            put_secs(out, sum);
            out.push('\n');
            put_sample(out, &count_name, l, "");
            put_u64(out, s.runs);
            out.push('\n');
        }
    }

    head(
        out,
        "run_chain_last_exit_code",
        "gauge",
        "Exit code of the last run (128 + signal for a signalled run, 127 for a spawn error).",
    );
    for (s, l) in snap.series.iter().zip(&ls) {
        let code = match s.last_outcome.as_deref() {
            Some("spawn-error") => Some(127),
            _ => s.last_exit_code,
        };
        if let Some(c) = code {
            let _ = writeln!(out, "run_chain_last_exit_code{{{l}}} {c}");
        }
    }

    for (name, help, get) in [
        (
            "run_chain_last_scheduled_time_seconds",
            "When the last run was due (Unix time).",
            (|s: &SeriesRow| s.last_scheduled_ms) as fn(&SeriesRow) -> Option<u64>,
        ),
        (
            "run_chain_last_start_time_seconds",
            "When the last run started (Unix time).",
            |s: &SeriesRow| s.last_start_ms,
        ),
        (
            "run_chain_last_stop_time_seconds",
            "When the last run ended (Unix time).",
            |s: &SeriesRow| s.last_stop_ms,
        ),
        (
            "run_chain_last_success_time_seconds",
            "When the last successful run ended (Unix time).",
            |s: &SeriesRow| s.last_success_ms,
        ),
        (
            "run_chain_streak_start_time_seconds",
            "When the current failure streak began (Unix time); absent when the last run succeeded.",
            |s: &SeriesRow| s.streak_start_ms,
        ),
        (
            "run_chain_running_start_time_seconds",
            "When the run in progress started (Unix time); absent when none runs.",
            |s: &SeriesRow| s.running_since_ms,
        ),
    ] {
        head(out, name, "gauge", help);
        for (s, l) in snap.series.iter().zip(&ls) {
            // A run left "in progress" by a chain that is down (it crashed) is not running.
            if name == "run_chain_running_start_time_seconds" && !up(s) {
                continue;
            }
            if let Some(ms) = get(s) {
                put_sample(out, name, l, "");
                put_secs(out, ms);
                out.push('\n');
            }
        }
    }

    head(
        out,
        "run_chain_consecutive_failures",
        "gauge",
        "Failures since the last success.",
    );
    for (s, l) in snap.series.iter().zip(&ls) {
        put_sample(out, "run_chain_consecutive_failures", l, "");
        put_u64(out, s.streak_failures);
        out.push('\n');
    }

    head(
        out,
        "run_chain_running",
        "gauge",
        "Whether a run of the task is in progress.",
    );
    for (s, l) in snap.series.iter().zip(&ls) {
        let running = up(s) && s.running_run_id.is_some();
        put_sample(out, "run_chain_running", l, "");
        out.push_str(if running { "1\n" } else { "0\n" });
    }

    head(
        out,
        "run_chain_alerts_total",
        "counter",
        "Alerts decided and queued for delivery, by kind (first-failure, new-failure, downtime, recovered).",
    );
    let mut counts: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for s in &snap.series {
        for k in Kind::all() {
            counts.insert((&s.chain, &s.task, k.as_str()), 0);
        }
    }
    for (c, t, k, n) in &snap.alerts {
        counts.insert((c, t, k), *n);
    }
    let mut l = (("", ""), String::new());
    for ((c, t, k), n) in counts {
        if l.0 != (c, t) {
            l = ((c, t), labels(c, t));
        }
        out.push_str("run_chain_alerts_total{");
        out.push_str(&l.1);
        out.push_str(",kind=\"");
        out.push_str(&esc(k));
        out.push_str("\"} ");
        put_u64(out, n);
        out.push('\n');
    }

    if let Some(f) = &snap.fleet {
        render_fleet(out, &f.rows, f.host.as_deref());
    }

    if let Some(sec) = scrape_seconds {
        head(
            out,
            "run_chain_scrape_duration_seconds",
            "gauge",
            "How long reading the store for this scrape took.",
        );
        let _ = writeln!(out, "run_chain_scrape_duration_seconds {sec}");
    }
    std::mem::take(out)
}

/// The fleet's families: who owns each chain, its standbys, its lease's epoch and expiry,
/// its failovers and fenced writes (where the schema counts them).
fn render_fleet(out: &mut String, rows: &FleetRows, host: Option<&str>) {
    // A host exports its own chains' families; the whole fleet every chain's.
    let own = |r: &&crate::store::pg::reader::LeaseRow| host.is_none() || r.owner() == host;
    head(
        out,
        "run_chain_owner",
        "gauge",
        "The host that holds the chain's lease now (1 per chain with an unexpired lease).",
    );
    for r in rows.chains.values().filter(own) {
        if let Some(h) = r.owner() {
            let _ = writeln!(
                out,
                "run_chain_owner{{chain=\"{}\",host=\"{}\"}} 1",
                esc(&r.chain),
                esc(h)
            );
        }
    }
    head(
        out,
        "run_chain_standby",
        "gauge",
        "Instances waiting for the chain's lease, by host (seen within the last lease).",
    );
    for r in rows.chains.values() {
        let mut hosts: Vec<&str> = r.standbys.iter().map(|s| s.host.as_str()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        for h in hosts {
            let _ = writeln!(
                out,
                "run_chain_standby{{chain=\"{}\",host=\"{}\"}} 1",
                esc(&r.chain),
                esc(h)
            );
        }
    }
    head(
        out,
        "run_chain_lease_epoch",
        "gauge",
        "The epoch (fencing token) of the chain's lease: it grows at each change of holder.",
    );
    for r in rows.chains.values().filter(own) {
        let _ = writeln!(
            out,
            "run_chain_lease_epoch{{chain=\"{}\"}} {}",
            esc(&r.chain),
            r.epoch
        );
    }
    head(
        out,
        "run_chain_lease_expiry_timestamp_seconds",
        "gauge",
        "When the chain's lease expires unless renewed (the database's clock).",
    );
    for r in rows.chains.values().filter(own) {
        if let Some(ms) = r.owner().and(r.expires_ms) {
            let _ = write!(
                out,
                "run_chain_lease_expiry_timestamp_seconds{{chain=\"{}\"}} ",
                esc(&r.chain)
            );
            put_secs(out, ms);
            out.push('\n');
        }
    }
    for (name, help, get) in [
        (
            "run_chain_failovers_total",
            "Times the chain's lease passed to another holder after its holder let it expire.",
            (|r: &crate::store::pg::reader::LeaseRow| r.failovers) as fn(&_) -> Option<u64>,
        ),
        (
            "run_chain_fenced_writes_total",
            "Write batches of a former owner that the fence refused.",
            |r: &crate::store::pg::reader::LeaseRow| r.fenced_writes,
        ),
    ] {
        if rows.chains.values().all(|r| get(r).is_none()) {
            continue;
        }
        head(out, name, "counter", help);
        for r in rows.chains.values().filter(own) {
            let _ = writeln!(
                out,
                "{name}{{chain=\"{}\"}} {}",
                esc(&r.chain),
                get(r).unwrap_or(0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(chain: &str, owner: &str, standbys: &[&str]) -> crate::store::pg::reader::LeaseRow {
        crate::store::pg::reader::LeaseRow {
            chain: chain.into(),
            host: Some(owner.into()),
            epoch: 3,
            expires_ms: Some(1_764_039_481_500),
            held: true,
            failovers: Some(1),
            fenced_writes: Some(0),
            standbys: standbys
                .iter()
                .map(|h| crate::store::pg::reader::StandbyRow {
                    host: h.to_string(),
                    seen_ms: 1,
                })
                .collect(),
            state: None,
        }
    }

    fn fleet_snapshot() -> (Snapshot, FleetRows) {
        let mut snap = Snapshot::default();
        for c in ["a", "b", "c"] {
            snap.series.push(SeriesRow {
                chain: c.into(),
                task: "t".into(),
                runs: 1,
                ok: 1,
                ..SeriesRow::default()
            });
            snap.chains.insert(c.into(), c != "c");
        }
        let mut rows = FleetRows::default();
        // a: h1 owns it, h2 waits; b: h2 owns it, h1 waits; c: h2 owns it, nobody waits.
        rows.chains.insert("a".into(), lease("a", "h1", &["h2"]));
        rows.chains.insert("b".into(), lease("b", "h2", &["h1"]));
        rows.chains.insert("c".into(), lease("c", "h2", &[]));
        (snap, rows)
    }

    #[test]
    fn the_whole_fleet_counts_a_chain_up_where_a_host_holds_its_lease() {
        let (mut snap, mut rows) = fleet_snapshot();
        // Nothing runs here; d's lease has expired.
        snap.chains.clear();
        let mut d = lease("d", "h1", &[]);
        d.held = false;
        rows.chains.insert("d".into(), d);
        scope_to_host(&mut snap, rows, None);
        let t = render(&snap, None);
        for (c, up) in [("a", 1), ("b", 1), ("c", 1), ("d", 0)] {
            assert!(
                t.contains(&format!("run_chain_up{{chain=\"{c}\"}} {up}\n")),
                "{c}: {t}"
            );
        }
    }

    #[test]
    fn a_host_exports_its_own_chains_and_the_standby_gauge_of_those_it_waits_for() {
        let (mut snap, rows) = fleet_snapshot();
        scope_to_host(&mut snap, rows, Some("h1"));
        let t = render(&snap, None);
        assert!(
            t.contains("run_chain_owner{chain=\"a\",host=\"h1\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("run_chain_standby{chain=\"b\",host=\"h1\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("run_chain_runs_total{chain=\"a\",task=\"t\",result=\"ok\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("run_chain_failovers_total{chain=\"a\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("run_chain_lease_expiry_timestamp_seconds{chain=\"a\"} 1764039481.5\n"),
            "{t}"
        );
        // Another host's chains: no runs, no owner, epoch or counters; c not at all.
        assert!(!t.contains("chain=\"c\""), "{t}");
        for family in [
            "run_chain_runs_total",
            "run_chain_owner",
            "run_chain_lease_epoch",
            "run_chain_failovers_total",
        ] {
            assert!(
                !t.contains(&format!("{family}{{chain=\"b\"")),
                "{family}: {t}"
            );
        }
    }

    #[test]
    fn the_whole_fleet_exports_every_chain() {
        let (mut snap, rows) = fleet_snapshot();
        scope_to_host(&mut snap, rows, None);
        let t = render(&snap, None);
        for (c, h) in [("a", "h1"), ("b", "h2"), ("c", "h2")] {
            assert!(
                t.contains(&format!(
                    "run_chain_owner{{chain=\"{c}\",host=\"{h}\"}} 1\n"
                )),
                "{t}"
            );
            assert!(
                t.contains(&format!(
                    "run_chain_runs_total{{chain=\"{c}\",task=\"t\",result=\"ok\"}} 1\n"
                )),
                "{t}"
            );
        }
        assert!(
            t.contains("run_chain_standby{chain=\"a\",host=\"h2\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("run_chain_standby{chain=\"b\",host=\"h1\"} 1\n"),
            "{t}"
        );
    }

    #[test]
    fn quantile_labels_read_as_the_numbers() {
        for (q, label) in QUANTILES {
            assert_eq!(label, format!(",quantile=\"{q}\""));
        }
    }

    #[test]
    fn quantiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 0.01), Some(1));
        assert_eq!(quantile(&[7], 0.9), Some(7));
        assert_eq!(quantile(&[], 0.9), None);
    }

    #[test]
    fn seconds_read_as_the_float_would() {
        for ms in [
            0u64,
            1,
            7,
            10,
            99,
            100,
            120,
            1000,
            1001,
            1010,
            1100,
            1500,
            59_999,
            1_764_000_000_123,
            1_764_000_000_120,
            1_764_000_000_100,
            1_764_000_000_000,
            999_999_999_999_999,
            1_000_000_000_000_000,
            u64::MAX,
        ] {
            let mut text = String::new();
            put_secs(&mut text, ms);
            assert_eq!(text, format!("{}", ms as f64 / 1000.0), "{ms}");
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = (x % 1_000_000_000_000_000) >> (x % 50);
            let mut text = String::new();
            put_secs(&mut text, ms);
            assert_eq!(text, format!("{}", ms as f64 / 1000.0), "{ms}");
        }
    }

    #[test]
    fn renders_families_with_help_and_type() {
        let mut snap = Snapshot::default();
        snap.chains.insert("c".into(), true);
        snap.series.push(SeriesRow {
            chain: "c".into(),
            task: "t\"x".into(),
            runs: 3,
            ok: 2,
            failed: 1,
            duration_sum_ms: 1500,
            last_exit_code: Some(137),
            last_outcome: Some("signal".into()),
            running_run_id: Some(4),
            running_since_ms: Some(1_000),
            ..SeriesRow::default()
        });
        snap.recent
            .insert(("c".into(), "t\"x".into()), (vec![500, 1000], vec![1, 2]));
        snap.alerts
            .push(("c".into(), "t\"x".into(), "downtime".into(), 2));
        snap.triggers.insert(("c".into(), "t\"x".into()), (0, 1));
        let text = render(&snap, Some(0.001));
        for (trigger, n) in [("schedule", 2), ("kick", 0), ("manual", 1)] {
            let line = format!(
                "run_chain_runs_by_trigger_total{{chain=\"c\",task=\"t\\\"x\",trigger=\"{trigger}\"}} {n}\n"
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(text.contains("run_chain_up{chain=\"c\"} 1"));
        assert!(text.contains("run_chain_runs_total{chain=\"c\",task=\"t\\\"x\",result=\"ok\"} 2"));
        assert!(
            text.contains("run_chain_run_duration_seconds_count{chain=\"c\",task=\"t\\\"x\"} 3")
        );
        assert!(text.contains(
            "run_chain_run_duration_seconds{chain=\"c\",task=\"t\\\"x\",quantile=\"0.5\"} 0.5"
        ));
        assert!(text.contains("run_chain_last_exit_code{chain=\"c\",task=\"t\\\"x\"} 137"));
        assert!(text
            .contains("run_chain_alerts_total{chain=\"c\",task=\"t\\\"x\",kind=\"downtime\"} 2"));
        assert!(text.contains("run_chain_running{chain=\"c\",task=\"t\\\"x\"} 1"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).expect("name");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }
}
