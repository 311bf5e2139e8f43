//! `run-chain serve`: the web console, its JSON API and `/metrics`, over the server that
//! `exporter` uses too ([`super::http`]).
//!
//! Every request goes through the same steps, in this order:
//! 1. `/metrics` is answered as `exporter` answers it: no Host check, no secret (a
//!    Prometheus scrapes it by the host's name);
//! 2. the Host header must name this server (`guard::host_allowed`), else 421: a
//!    DNS-rebinding page cannot read the console;
//! 3. the style sheet, the script and the login form are served to anyone;
//! 4. with a secret (`--token-file`; required off loopback), a request must carry it:
//!    HTTP Basic (any user name), or the session cookie the login form sets (HttpOnly,
//!    SameSite=Strict); else 401;
//! 5. the pages and the API (GET), or an action (POST only, else 405 with `Allow: POST`):
//!    refused with 403 unless `--allow-actions`, unless it comes from the console's own
//!    origin (`guard::same_origin`) and unless it carries this start's token (a hidden field
//!    of the confirmation form); then done through `control` and answered 303 to the chain's
//!    page (a run-now: to its run's page; refused by the chain: 409), and logged with the
//!    peer's address.
//!
//! Every answer but `/metrics` carries the same security headers ([`SECURITY_HEADERS`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::exporter;
use super::http::{self, Answer};
use crate::config::check_name;
use crate::error::{Error, Result};
use crate::view::console as pages;
use crate::view::html::{self, Action, Ctx};
use crate::view::units::Wall;

/// How long a Run now waits for the chain to record the run it reserved before it sends the
/// browser to the run's page (the chain's store writer commits within milliseconds; a busy
/// store may take longer: the page then says "not found" until a reload).
const RECORDED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

mod guard;

/// What `serve` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) listen: String,
    pub(crate) allow_actions: bool,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) allow_hosts: Vec<String>,
    /// With a `[store]`: the fleet (`whole`: `serve --fleet`, every chain's metrics).
    pub(crate) fleet: Option<crate::view::metrics::Fleet>,
}

/// Headers on every answer of the console: no inline script may run, no other site may
/// frame it, nothing is sniffed into HTML, no other site learns a console URL, and nothing
/// is kept in a cache.
pub(crate) const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
];

/// The session cookie the login form sets.
const COOKIE: &str = "run_chain_session";

/// The most of a form body read.
const MAX_FORM: u64 = 4096;

/// The most runs one API call lists.
const MAX_LIMIT: usize = 1000;

struct Console {
    run_root: PathBuf,
    fleet: Option<crate::view::metrics::Fleet>,
    port: u16,
    allow_hosts: Vec<String>,
    actions: bool,
    /// The secret of `--token-file`, when the console needs one.
    secret: Option<Vec<u8>>,
    /// The token the confirmation forms carry, random per start.
    token: String,
    /// The value of the session cookie, random per start.
    session: String,
    host: String,
}

/// Serve the console until SIGTERM/SIGINT.
pub(crate) fn serve(run_root: PathBuf, opts: Options) -> Result<u8> {
    let addr = http::parse_listen(&opts.listen)?;
    let secret = match &opts.token_file {
        Some(f) => Some(read_secret(f)?),
        None if addr.ip().is_loopback() => None,
        None => {
            return Err(Error::Usage(format!(
                "--listen {addr} is beyond loopback: give the console a secret with --token-file FILE (and put TLS in front of it)"
            )))
        }
    };
    let host = crate::view::console::this_host(opts.fleet.as_ref().map(|f| &f.cfg));
    let console = Arc::new(Console {
        run_root,
        fleet: opts.fleet,
        port: addr.port(),
        allow_hosts: opts.allow_hosts,
        actions: opts.allow_actions,
        secret,
        token: random_hex(16)?,
        session: random_hex(32)?,
        host,
    });
    let c = Arc::clone(&console);
    http::serve(
        addr,
        "console",
        Arc::new(move |req: &mut tiny_http::Request| {
            crate::view::runs::one_reader(|| c.answer(req))
        }),
        || {
            log::info!(
                "console: serving {} at http://{addr}/ ({}{})",
                console.run_root.display(),
                if console.actions {
                    "actions enabled"
                } else {
                    "read-only"
                },
                if console.secret.is_some() {
                    ", a secret required"
                } else {
                    ""
                }
            );
        },
    )
}

/// The secret in `path`: its content less trailing white space; not empty. A file that
/// others may read is used, with a warning.
fn read_secret(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let raw = std::fs::read(path)
        .map_err(|e| Error::Config(format!("--token-file {}: {e}", path.display())))?;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "console: --token-file {} may be read by others (mode {:o}): chmod 600 it",
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
    let end = raw
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    if end == 0 {
        return Err(Error::Config(format!(
            "--token-file {}: the file is empty; put a secret in it",
            path.display()
        )));
    }
    Ok(raw[..end].to_vec())
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::os("read /dev/urandom", e))?;
    Ok(guard::hex(&buf))
}

fn header<'a>(req: &'a tiny_http::Request, name: &'static str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn with_header(r: Answer, name: &str, value: &str) -> Answer {
    match tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        Ok(h) => r.with_header(h),
        Err(()) => r,
    }
}

fn answer(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Answer {
    let mut r = tiny_http::Response::from_data(body.into()).with_status_code(status);
    r = with_header(r, "Content-Type", content_type);
    for (k, v) in SECURITY_HEADERS {
        r = with_header(r, k, v);
    }
    r
}

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

fn json_error(status: u16, message: &str) -> Answer {
    let body = serde_json::json!({ "error": message }).to_string() + "\n";
    answer(status, JSON, body)
}

fn see_other(to: &str) -> Answer {
    with_header(answer(303, TEXT, format!("see {to}\n")), "Location", to)
}

/// A GET-only or POST-only URL asked with another method.
fn not_allowed(allow: &str) -> Answer {
    with_header(
        answer(405, TEXT, format!("method not allowed: use {allow}\n")),
        "Allow",
        allow,
    )
}

impl Console {
    /// The fleet's config, when the console shows a fleet.
    fn fleet_cfg(&self) -> Option<&crate::config::FleetConfig> {
        self.fleet.as_ref().map(|f| &f.cfg)
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            now: Wall(crate::time::wall_ms()),
            actions: self.actions,
            host: &self.host,
        }
    }

    fn page_error(&self, status: u16, title: &str, message: &str) -> Answer {
        answer(status, HTML, html::error(&self.ctx(), title, message))
    }

    fn answer(&self, req: &mut tiny_http::Request) -> Answer {
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        if exporter::is_metrics(&url) {
            return exporter::metrics(&self.run_root, self.fleet.as_ref());
        }
        let host = header(req, "Host").map(str::to_string);
        if !guard::host_allowed(
            host.as_deref(),
            self.port,
            req.local_addr().copied(),
            &self.allow_hosts,
        ) {
            return answer(
                421,
                TEXT,
                "misdirected request: the Host header does not name this server (see serve --allow-host)\n",
            );
        }
        let method = req.method().as_str().to_ascii_uppercase();
        let get = method == "GET" || method == "HEAD";
        match path {
            html::CSS_PATH if get => return answer(200, "text/css; charset=utf-8", html::CSS),
            html::JS_PATH if get => return answer(200, "text/javascript; charset=utf-8", html::JS),
            "/login" if get => return answer(200, HTML, html::login(&self.ctx(), false)),
            "/login" if method == "POST" => return self.login(req, host.as_deref()),
            "/login" => return not_allowed("GET, POST"),
            _ => {}
        }
        if let Some(secret) = &self.secret {
            if !self.authorized(req, secret) {
                return if path.starts_with("/api/") {
                    with_header(
                        json_error(401, "the console needs its secret (HTTP Basic)"),
                        "WWW-Authenticate",
                        "Basic realm=\"run-chain\"",
                    )
                } else {
                    answer(401, HTML, html::login(&self.ctx(), false))
                };
            }
        }
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let result = match segs.as_slice() {
            ["chain", chain, action @ ("kick" | "stop")] => {
                return if method == "POST" {
                    self.act(req, chain, action, host.as_deref())
                } else {
                    not_allowed("POST")
                };
            }
            ["chain", chain, "task", task, "run"] => {
                return if method == "POST" {
                    self.run_now(req, chain, task, host.as_deref())
                } else {
                    not_allowed("POST")
                };
            }
            _ if !get => return not_allowed("GET, HEAD"),
            [""] => pages::index(&self.run_root, self.fleet_cfg())
                .map(|v| Some(answer(200, HTML, html::index(&self.ctx(), &v)))),
            ["chain", chain] => self.named(&[chain], |ctx| {
                Ok(pages::chain(&self.run_root, chain, self.fleet_cfg())?
                    .map(|v| answer(200, HTML, html::chain(ctx, &v))))
            }),
            ["chain", chain, action @ ("kick" | "stop"), "confirm"] => {
                self.named(&[chain], |ctx| {
                    let action = if *action == "kick" {
                        Action::Kick
                    } else {
                        Action::Stop
                    };
                    let status = if self.actions { 200 } else { 403 };
                    Ok(Some(answer(
                        status,
                        HTML,
                        html::confirm(ctx, chain, action, &self.token),
                    )))
                })
            }
            ["chain", chain, "task", task, "run", "confirm"] => self.named(&[chain, task], |ctx| {
                if !pages::has_task(&self.run_root, chain, task, self.fleet_cfg())? {
                    return Ok(None);
                }
                let status = if self.actions { 200 } else { 403 };
                Ok(Some(answer(
                    status,
                    HTML,
                    html::confirm(ctx, chain, Action::RunNow(task), &self.token),
                )))
            }),
            ["chain", chain, "task", task] => self.named(&[chain, task], |ctx| {
                let before = query_u64(query, "before")?;
                let outcome = guard::form_value(query, "outcome").filter(|o| !o.is_empty());
                if let Some(o) = &outcome {
                    if !html::OUTCOMES.contains(&o.as_str()) {
                        return Err(Error::Usage(format!("no outcome {o:?}")));
                    }
                }
                Ok(pages::task(
                    &self.run_root,
                    chain,
                    task,
                    before,
                    outcome.as_deref(),
                    self.fleet_cfg(),
                )?
                .map(|v| answer(200, HTML, html::task(ctx, &v))))
            }),
            ["run", chain, task, id] => self.named(&[chain, task], |ctx| {
                let Ok(id) = id.parse::<u64>() else {
                    return Ok(None);
                };
                Ok(
                    pages::output(&self.run_root, chain, task, id, None, self.fleet_cfg())?
                        .map(|o| answer(200, HTML, html::run(ctx, &o))),
                )
            }),
            ["run", chain, task, id, "output.txt"] => self.named(&[chain, task], |_| {
                let Ok(id) = id.parse::<u64>() else {
                    return Ok(None);
                };
                Ok(
                    pages::raw_output(&self.run_root, chain, task, id, self.fleet_cfg())?
                        .map(|(_, raw)| answer(200, TEXT, raw)),
                )
            }),
            ["api", "v1", "chains"] => {
                crate::view::status::build_fleet(&self.run_root, self.fleet_cfg())
                    .map(|v| Some(answer(200, JSON, crate::view::status::json(&v))))
            }
            ["api", "v1", "chains", chain, "tasks", task, "runs"] => {
                self.named(&[chain, task], |_| {
                    let before = query_u64(query, "before")?;
                    let limit = query_u64(query, "limit")?
                        .map_or(crate::cli::DEFAULT_HISTORY_LIMIT as usize, |l| {
                            (l as usize).clamp(1, MAX_LIMIT)
                        });
                    if !pages::has_task(&self.run_root, chain, task, self.fleet_cfg())? {
                        return Ok(None);
                    }
                    let (runs, _) = pages::runs(
                        &self.run_root,
                        chain,
                        task,
                        before,
                        None,
                        limit,
                        self.fleet_cfg(),
                    )?;
                    Ok(Some(answer(200, JSON, crate::view::history::json(&runs))))
                })
            }
            ["api", "v1", "runs", chain, task, id] => self.named(&[chain, task], |_| {
                let Ok(id) = id.parse::<u64>() else {
                    return Ok(None);
                };
                let from = query_u64(query, "from")?;
                Ok(
                    pages::output(&self.run_root, chain, task, id, from, self.fleet_cfg())?.map(
                        |o| {
                            let mut s = serde_json::to_string_pretty(&o).unwrap_or_default();
                            s.push('\n');
                            answer(200, JSON, s)
                        },
                    ),
                )
            }),
            _ => Ok(None),
        };
        let api = path.starts_with("/api/");
        match result {
            Ok(Some(a)) => a,
            Ok(None) if api => json_error(404, "not found"),
            Ok(None) => self.page_error(404, "Not found", "There is no such page here."),
            Err(Error::Usage(m)) if api => json_error(400, &m),
            Err(Error::Usage(m)) => self.page_error(400, "Bad request", &m),
            Err(e) => {
                log::error!("console: {url}: {e}");
                if api {
                    json_error(500, &e.to_string())
                } else {
                    self.page_error(500, "Error", &e.to_string())
                }
            }
        }
    }

    /// `f` when every name is a valid chain or task name; else not found.
    fn named(
        &self,
        names: &[&str],
        f: impl FnOnce(&Ctx) -> Result<Option<Answer>>,
    ) -> Result<Option<Answer>> {
        if names.iter().any(|n| check_name(n).is_err()) {
            return Ok(None);
        }
        f(&self.ctx())
    }

    fn authorized(&self, req: &tiny_http::Request, secret: &[u8]) -> bool {
        if let Some(given) = header(req, "Authorization").and_then(guard::basic_secret) {
            if guard::same_secret(&given, secret) {
                return true;
            }
        }
        header(req, "Cookie")
            .and_then(|c| guard::cookie_value(c, COOKIE))
            .is_some_and(|v| guard::same_secret(v.as_bytes(), self.session.as_bytes()))
    }

    /// The body of a form POST, at most [`MAX_FORM`] bytes.
    fn form(req: &mut tiny_http::Request) -> Option<String> {
        let mut body = Vec::new();
        req.as_reader()
            .take(MAX_FORM + 1)
            .read_to_end(&mut body)
            .ok()?;
        if body.len() as u64 > MAX_FORM {
            return None;
        }
        String::from_utf8(body).ok()
    }

    fn login(&self, req: &mut tiny_http::Request, host: Option<&str>) -> Answer {
        if let Err(why) =
            guard::same_origin(header(req, "Sec-Fetch-Site"), header(req, "Origin"), host)
        {
            return answer(403, TEXT, format!("forbidden: {why}\n"));
        }
        let Some(secret) = &self.secret else {
            return see_other("/");
        };
        let given = Self::form(req).and_then(|f| guard::form_value(&f, "secret"));
        if given.is_some_and(|g| guard::same_secret(g.as_bytes(), secret)) {
            let peer = req.remote_addr().map_or("?".into(), |a| a.to_string());
            log::info!("console: {peer} logged in");
            return with_header(
                see_other("/"),
                "Set-Cookie",
                &format!(
                    "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                    self.session
                ),
            );
        }
        let peer = req.remote_addr().map_or("?".into(), |a| a.to_string());
        log::warn!("console: a login from {peer} with a wrong secret");
        answer(401, HTML, html::login(&self.ctx(), true))
    }

    /// The checks every action passes, in order: actions on, the console's own origin, this
    /// start's token. The form posted, or the answer that refuses the action (403, logged
    /// with the peer's address under `what`).
    fn action_form(
        &self,
        req: &mut tiny_http::Request,
        what: &str,
        host: Option<&str>,
    ) -> std::result::Result<String, Answer> {
        let peer = req.remote_addr().map_or("?".into(), |a| a.to_string());
        let refuse = |why: &str| {
            log::warn!("console: {what} from {peer} refused: {why}");
            answer(403, TEXT, format!("forbidden: {why}\n"))
        };
        if !self.actions {
            return Err(refuse("read-only: actions are off (serve --allow-actions)"));
        }
        if let Err(why) =
            guard::same_origin(header(req, "Sec-Fetch-Site"), header(req, "Origin"), host)
        {
            return Err(refuse(why));
        }
        let form = Self::form(req).unwrap_or_default();
        let token = guard::form_value(&form, "token").unwrap_or_default();
        if !guard::same_secret(token.as_bytes(), self.token.as_bytes()) {
            return Err(refuse("the form's token is missing or not this server's"));
        }
        Ok(form)
    }

    /// `POST /chain/C/task/T/run`: run-now, asked by the peer ("web ADDR"). Accepted: 303
    /// to the run's page (`queued` until it starts); refused by the chain (the task runs,
    /// a request is pending, the chain is stopping or down): 409 with the chain's reason;
    /// an unknown chain or task: 404; no answer from the chain: 503.
    fn run_now(
        &self,
        req: &mut tiny_http::Request,
        chain: &str,
        task: &str,
        host: Option<&str>,
    ) -> Answer {
        let peer = req.remote_addr().map_or("?".into(), |a| a.to_string());
        let what = format!("run-now of {task:?} in chain {chain:?}");
        if let Err(refused) = self.action_form(req, &what, host) {
            return refused;
        }
        if check_name(chain).is_err() || check_name(task).is_err() {
            return self.page_error(404, "Not found", "There is no such chain or task here.");
        }
        let by = format!("web {peer}");
        match crate::control::run_now_in(&self.run_root, chain, task, &by) {
            Ok(a) => {
                log::info!(
                    "console: run-now of {task} in chain {chain} asked by {peer}: run {} ({})",
                    a.run_id,
                    if a.at_once { "now" } else { "queued" }
                );
                // The chain answers before its store writer has committed the run's row
                // (queued, or started): wait for it (a few ms), so that the page the browser
                // lands on shows the run rather than "not found". Past the bound, go anyway.
                let recorded = || {
                    pages::raw_output(&self.run_root, chain, task, a.run_id, self.fleet_cfg())
                        .is_ok_and(|r| r.is_some())
                };
                let until = std::time::Instant::now() + RECORDED_WAIT;
                while !recorded() && std::time::Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                see_other(&html::run_url(chain, task, a.run_id))
            }
            Err(Error::Usage(m)) => {
                log::info!("console: run-now of {task} in chain {chain} asked by {peer}: {m}");
                self.page_error(404, "Not found", &m)
            }
            Err(Error::Busy(m)) => {
                log::info!("console: run-now of {task} in chain {chain} asked by {peer}: {m}");
                answer(409, HTML, html::refused(&self.ctx(), chain, task, &m))
            }
            Err(e) => {
                log::error!("console: run-now of {task} in chain {chain} asked by {peer}: {e}");
                let status = if matches!(e, Error::Internal(_)) {
                    503
                } else {
                    500
                };
                self.page_error(status, "No answer", &e.to_string())
            }
        }
    }

    /// `POST /chain/C/kick` or `/chain/C/stop`.
    fn act(
        &self,
        req: &mut tiny_http::Request,
        chain: &str,
        action: &str,
        host: Option<&str>,
    ) -> Answer {
        let peer = req.remote_addr().map_or("?".into(), |a| a.to_string());
        let form = match self.action_form(req, &format!("{action} of chain {chain:?}"), host) {
            Ok(f) => f,
            Err(refused) => return refused,
        };
        if check_name(chain).is_err() {
            return self.page_error(404, "Not found", "There is no such chain here.");
        }
        let done = match action {
            "kick" => crate::control::kick_chain(&self.run_root, chain, &format!("web {peer}"))
                .map(|p| p.map(|_| ())),
            _ => {
                let now = guard::form_value(&form, "now").is_some_and(|v| v == "1");
                crate::control::ask_stop(&self.run_root, chain, now, &format!("web {peer}"))
                    .map(|a| a.map(|_| ()))
            }
        };
        match done {
            Ok(Some(())) => {
                log::info!("console: {action} of chain {chain} asked by {peer}");
                see_other(&html::chain_url(chain))
            }
            Ok(None) => {
                log::info!("console: {action} of chain {chain} asked by {peer}: not running");
                see_other(&html::chain_url(chain))
            }
            Err(Error::Usage(m)) => self.page_error(404, "Not found", &m),
            Err(e) => {
                log::error!("console: {action} of chain {chain} asked by {peer}: {e}");
                self.page_error(500, "Error", &e.to_string())
            }
        }
    }
}

/// A number in a query; absent or empty: None.
fn query_u64(query: &str, name: &str) -> Result<Option<u64>> {
    match guard::form_value(query, name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::Usage(format!("{name}: expected a number, got {v:?}"))),
    }
}
