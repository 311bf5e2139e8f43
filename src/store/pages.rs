//! The console's reads of the record store: a task's runs paged by run id, and the newest
//! outcomes of a chain. Both walk the `runs_series_run` index (series, run_id) from a run
//! id downwards, `LIMIT`ed: never `OFFSET`, never a `COUNT(*)` over the runs.

use rusqlite::params;

#[cfg(test)]
use super::open_read;
use super::pg::reader as pg;
use super::reader::{run_row, trigger_columns, Reader, RUN_COLUMNS};
use super::RunRow;
#[cfg(test)]
use std::path::Path;

/// Which runs a page of history shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter<'a> {
    All,
    /// Runs with this outcome (`running`: those with none yet).
    Outcome(&'a str),
}

/// Up to `limit` runs of `task` in `chain` with a run id below `before` (all, when None),
/// newest first, by run id.
pub(crate) fn runs_before(
    reader: &Reader,
    chain: &str,
    task: &str,
    before: Option<u64>,
    filter: Filter<'_>,
    limit: usize,
) -> Result<Vec<RunRow>, String> {
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let reader = match reader {
        Reader::Sqlite(l) => l,
        Reader::Pg(p) => {
            let outcome = match filter {
                Filter::All => None,
                Filter::Outcome(o) => Some(o),
            };
            return pg::runs_before(p, chain, task, before, outcome, limit);
        }
    };
    let (cond, outcome) = match filter {
        Filter::All => ("", None),
        Filter::Outcome("running") => (" AND r.outcome IS NULL", None),
        Filter::Outcome(o) => (" AND r.outcome = ?5", Some(o)),
    };
    let sql = format!(
        "SELECT {RUN_COLUMNS}, {} FROM series s JOIN runs r ON r.series = s.id JOIN instances i ON i.id = r.instance
         WHERE s.chain = ?1 AND s.task = ?2 AND r.run_id < ?3{cond} ORDER BY r.run_id DESC LIMIT ?4",
        trigger_columns(reader.version)
    );
    let read = || -> rusqlite::Result<Vec<RunRow>> {
        let mut stmt = reader.conn.prepare_cached(&sql)?;
        let limit = limit as i64;
        let rows = match outcome {
            Some(o) => stmt
                .query_map(params![chain, task, before, limit, o], run_row)?
                .collect(),
            None => stmt
                .query_map(params![chain, task, before, limit], run_row)?
                .collect(),
        };
        rows
    };
    read().map_err(|e| e.to_string())
}

/// The newest `n` runs of `chain`, all tasks together, newest (by start, then run id)
/// first. As `store::history` does for a task in many chains: the tasks are visited newest
/// first (by the start of their newest run, from `series`), each task's runs are read along
/// the index only while they can still be among the newest `n`, and the walk stops at the
/// first task whose newest run is older than all `n` kept (a series' run ids and starts
/// grow together). A chain whose tasks take turns reads about `n` + its task count runs.
pub(crate) fn newest_of_chain(
    reader: &Reader,
    chain: &str,
    n: usize,
) -> Result<Vec<RunRow>, String> {
    let reader = match reader {
        Reader::Sqlite(l) => l,
        Reader::Pg(p) => return pg::newest_of_chain(p, chain, n),
    };
    let read = || -> rusqlite::Result<Vec<RunRow>> {
        let mut heads: Vec<(u64, String)> = reader
            .conn
            .prepare_cached(
                "SELECT MAX(COALESCE(running_since_ms, 0), COALESCE(last_start_ms, 0)), task
                 FROM series WHERE chain = ?1",
            )?
            .query_map(params![chain], |r| {
                Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        heads.sort_by(|a, b| b.cmp(a));
        let mut stmt = reader.conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS}, {} FROM series s JOIN runs r ON r.series = s.id JOIN instances i ON i.id = r.instance
             WHERE s.chain = ?1 AND s.task = ?2 ORDER BY r.run_id DESC LIMIT ?3",
            trigger_columns(reader.version)
        ))?;
        // Newest first; at most n.
        let mut kept: Vec<RunRow> = Vec::with_capacity(n + 1);
        let full = |kept: &[RunRow], key: (u64, u64)| {
            kept.len() >= n && kept.last().is_some_and(|l| key < (l.start_ms, l.run_id))
        };
        for (head, task) in heads {
            // With the greatest run id: a run of this task that started at `head` ties
            // with the oldest kept and must be read.
            if full(&kept, (head, u64::MAX)) {
                break;
            }
            let mut rows = stmt.query(params![chain, task, n as i64])?;
            while let Some(r) = rows.next()? {
                let row = run_row(r)?;
                if full(&kept, (row.start_ms, row.run_id)) {
                    break;
                }
                let at =
                    kept.partition_point(|k| (k.start_ms, k.run_id) > (row.start_ms, row.run_id));
                kept.insert(at, row);
                kept.truncate(n);
            }
        }
        Ok(kept)
    };
    read().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Instance, RunStart, Store};
    use crate::time::Mono;

    /// A store with runs 1 to `n` of (c, t) and of (c, u), all open.
    fn store(dir: &Path, n: u64) -> Reader {
        let mut s = Store::new(
            dir,
            Instance {
                host: "h".into(),
                pid: 1,
                version: "v".into(),
                config_digest: "d".into(),
                started_ms: 0,
            },
        );
        for id in 1..=n {
            for task in ["t", "u"] {
                s.push(
                    Mono::ZERO,
                    crate::store::Op::Start(RunStart {
                        chain: "c".into(),
                        task: task.into(),
                        run_id: id,
                        scheduled_ms: id * 10,
                        start_ms: id * 10 + u64::from(task == "u"),
                        task_pid: None,
                        trigger: "schedule",
                        requested_by: None,
                    }),
                );
            }
        }
        s.flush(Mono::ZERO);
        open_read(dir).expect("open").expect("a store")
    }

    #[test]
    fn pages_follow_the_run_ids_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = store(dir.path(), 12);
        let ids = |before, limit| -> Vec<u64> {
            runs_before(&c, "c", "t", before, Filter::All, limit)
                .expect("read")
                .iter()
                .map(|r| r.run_id)
                .collect()
        };
        assert_eq!(ids(None, 5), vec![12, 11, 10, 9, 8]);
        assert_eq!(ids(Some(8), 5), vec![7, 6, 5, 4, 3]);
        assert_eq!(ids(Some(3), 5), vec![2, 1]);
        assert!(ids(Some(1), 5).is_empty());
        let open = runs_before(&c, "c", "t", None, Filter::Outcome("running"), 3).expect("read");
        assert_eq!(open.len(), 3);
        assert!(runs_before(&c, "c", "t", None, Filter::Outcome("ok"), 3)
            .expect("read")
            .is_empty());
        let newest: Vec<(String, u64)> = newest_of_chain(&c, "c", 3)
            .expect("read")
            .into_iter()
            .map(|r| (r.task, r.run_id))
            .collect();
        assert_eq!(
            newest,
            vec![("u".into(), 12), ("t".into(), 12), ("u".into(), 11)]
        );
    }

    /// The plan of a page: the series by its (chain, task) key, its runs by the
    /// (series, run_id) index from `before` down; no scan of `runs`, no sort, at any depth.
    #[test]
    fn a_page_is_an_index_search_never_a_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = store(dir.path(), 3);
        for cond in ["", " AND r.outcome IS NULL", " AND r.outcome = ?5"] {
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT {RUN_COLUMNS} FROM series s JOIN runs r ON r.series = s.id JOIN instances i ON i.id = r.instance
                 WHERE s.chain = ?1 AND s.task = ?2 AND r.run_id < ?3{cond} ORDER BY r.run_id DESC LIMIT ?4"
            );
            let mut stmt = c.conn().prepare(&sql).expect("prepare");
            let n = stmt.parameter_count();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter((0..n).map(|_| 1)), |r| {
                    r.get::<_, String>(3)
                })
                .expect("plan")
                .collect::<rusqlite::Result<_>>()
                .expect("rows");
            let text = plan.join("\n");
            assert!(
                text.contains("USING INDEX runs_series_run (series=? AND run_id<?)"),
                "{text}"
            );
            assert!(
                !text.contains("SCAN") && !text.contains("TEMP B-TREE"),
                "{text}"
            );
        }
    }
}
