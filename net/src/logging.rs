//! etcd 3.4's logs: `--logger capnslog` (the default: `2026-12-07 01:00:00.000000 I |
//! etcdserver: message`) and `--logger zap` (JSON lines with `level`, `ts`, `caller`,
//! `msg` and the event's fields), written to `--log-outputs` (`default`, `stderr`,
//! `stdout` or files), at `--log-level` (`--debug` for capnslog), with capnslog's
//! `--log-package-levels`.
//!
//! A `tracing` layer formats every event; its target is mapped to the etcd package
//! that logs the same thing (`rivet_engine::raft_core` → `etcdserver`, `rivet_wal` →
//! `wal`, ...), which capnslog prints and `--log-package-levels` filters on. Setting
//! `RIVET_LOG` (a `tracing` filter such as `rivet_net=debug`) overrides the levels.
//!
//! Everything here runs once at start ([`init`]) and then per log line; a panic hook
//! (added at start by whoever installs one) can log through `tracing` as usual.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::config::{EarlyLine, Flags};

/// The wall clock in the local time zone, as Go's `time.Now()` prints it.
struct LocalTime {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    micros: u32,
    offset_seconds: i64,
}

fn local_now() -> LocalTime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes into the zeroed `tm` we own; `seconds` is a valid time_t.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&seconds, &mut tm);
        tm
    };
    LocalTime {
        year: tm.tm_year + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        minute: tm.tm_min as u32,
        second: tm.tm_sec as u32,
        micros: now.subsec_micros(),
        offset_seconds: tm.tm_gmtoff,
    }
}

/// capnslog's timestamp: `2006-01-02 15:04:05.000000`.
fn capnslog_time(t: &LocalTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros
    )
}

/// zap's ISO8601 timestamp: `2006-01-02T15:04:05.000Z0700`.
fn zap_time(t: &LocalTime) -> String {
    let zone = if t.offset_seconds == 0 {
        "Z".to_string()
    } else {
        let sign = if t.offset_seconds < 0 { '-' } else { '+' };
        let minutes = t.offset_seconds.unsigned_abs() / 60;
        format!("{sign}{:02}{:02}", minutes / 60, minutes % 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{zone}",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.micros / 1000
    )
}

/// One capnslog line (with its newline).
pub fn capnslog_line(level: char, package: &str, message: &str) -> String {
    let mut line = format!("{} {level} | ", capnslog_time(&local_now()));
    if !package.is_empty() {
        line.push_str(package);
        line.push_str(": ");
    }
    line.push_str(message);
    if !line.ends_with('\n') {
        line.push('\n');
    }
    line
}

/// Writes the lines the flag parser logged before logging was set up: to stderr, in
/// capnslog form, as etcd's `pkg/flags` does whatever `--logger` says.
pub fn write_early(lines: &[EarlyLine]) {
    let mut stderr = std::io::stderr().lock();
    for line in lines {
        let _ = stderr.write_all(capnslog_line(line.level, line.package, &line.message).as_bytes());
    }
}

/// The etcd package whose logs a `tracing` target stands for.
pub fn package_of(target: &str) -> &str {
    const PACKAGES: &[(&str, &str)] = &[
        ("rivet_engine::raft_core", "etcdserver"),
        ("rivet_engine::snapshot", "etcdserver"),
        ("rivet_engine::membership", "etcdserver/membership"),
        ("rivet_engine::lessor", "lease"),
        ("rivet_engine::page", "mvcc/backend"),
        ("rivet_engine::shard", "mvcc"),
        ("rivet_engine::mvcc", "mvcc"),
        ("rivet_engine::core", "etcdserver"),
        ("rivet_engine", "etcdserver"),
        ("rivet_wal", "wal"),
        ("rivet_net::peer", "rafthttp"),
        ("rivet_net::server", "embed"),
        ("rivet_net::logging", "etcdmain"),
        ("rivet_net::pprof", "embed"),
        ("rivet_net::http", "embed"),
        ("rivet_net::listeners", "embed"),
        ("rivet_net::tls", "embed"),
        ("rivet_net", "etcdserver/api/v3rpc"),
        ("rivet", "etcdmain"),
    ];
    for (prefix, package) in PACKAGES {
        if target == *prefix
            || (target.starts_with(prefix) && target[prefix.len()..].starts_with("::"))
        {
            return package;
        }
    }
    target
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Capnslog,
    Zap,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Whether `--logger zap` is in force (messages that etcd words differently in its two
/// loggers pick their form with it).
pub fn is_zap() -> bool {
    FORMAT.get() == Some(&Format::Zap)
}

/// capnslog's levels, most severe first; `tracing` has no CRITICAL or NOTICE, so those
/// map onto ERROR and INFO.
fn capnslog_level(name: &str) -> Option<Level> {
    Some(match name.to_ascii_uppercase().as_str() {
        "CRITICAL" | "C" | "ERROR" | "E" => Level::ERROR,
        "WARNING" | "W" => Level::WARN,
        "NOTICE" | "N" | "INFO" | "I" => Level::INFO,
        "DEBUG" | "D" => Level::DEBUG,
        "TRACE" | "T" => Level::TRACE,
        _ => return None,
    })
}

/// `--log-level` as a `tracing` level; `None` for an unknown level (etcd panics there).
fn level_of(name: &str) -> Option<Level> {
    Some(match name {
        "debug" => Level::DEBUG,
        "info" => Level::INFO,
        "warn" => Level::WARN,
        "error" | "dpanic" | "panic" | "fatal" => Level::ERROR,
        _ => return None,
    })
}

enum Output {
    Stderr,
    Stdout,
    File(std::fs::File),
}

impl Output {
    fn write_line(&mut self, line: &[u8]) {
        let _ = match self {
            Output::Stderr => std::io::stderr().lock().write_all(line),
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line).and_then(|()| out.flush())
            }
            Output::File(file) => file.write_all(line),
        };
    }
}

/// The layer that writes etcd's log lines.
struct EtcdLayer {
    format: Format,
    /// capnslog with `--debug` on an explicit stderr/stdout output adds `[file:line]`.
    capnslog_caller: bool,
    default_level: Level,
    /// capnslog's per-package levels.
    package_levels: Vec<(String, Level)>,
    /// When `RIVET_LOG` is set, its filter decides instead.
    filtered_elsewhere: bool,
    outputs: Mutex<Vec<Output>>,
}

impl EtcdLayer {
    fn level_for(&self, package: &str) -> Level {
        self.package_levels
            .iter()
            .find(|(p, _)| p == package)
            .map_or(self.default_level, |(_, l)| *l)
    }

    fn most_verbose(&self) -> Level {
        self.package_levels
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default_level, |a, b| if b > a { b } else { a })
    }
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, serde_json::Value)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Records of the `log` crate (from dependencies) carry their origin as fields.
        if field.name().starts_with("log.") {
            return;
        }
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.push((
                field.name(),
                serde_json::Value::String(format!("{value:?}")),
            ));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name().starts_with("log.") {
            return;
        }
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields
                .push((field.name(), serde_json::Value::String(value.to_string())));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name().starts_with("log.") {
            return;
        }
        self.fields.push((field.name(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), value.into()));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), value.into()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields
            .push((field.name(), serde_json::Value::String(value.to_string())));
    }
}

/// etcd words some messages differently in its two loggers; rivet logs each once, with
/// etcd's zap message and fields, and capnslog renders etcd's capnslog wording from the
/// fields: `(zap message, capnslog package, capnslog template, required fields)`.
/// `{field}` is a field's value, `{field:q}` it quoted as Go's `%q`.
const CAPNSLOG_WORDING: &[(&str, &str, &str, &[&str])] = &[
    (
        "slow fdatasync",
        "wal",
        "sync duration of {took}, expected less than {expected-duration}",
        &["took", "expected-duration"],
    ),
    (
        "apply request took too long",
        "etcdserver",
        "{prefix}request {request:q} with result {response:q} took too long ({took}) to execute",
        &["took", "request"],
    ),
    (
        "leader failed to send out heartbeat on time; took too long, leader is overloaded likely from slow disk",
        "etcdserver",
        "failed to send out heartbeat on time (exceeded the {heartbeat-interval} timeout for {exceeded-duration}, to {to})",
        &["heartbeat-interval", "exceeded-duration", "to"],
    ),
    (
        "alarm raised",
        "etcdserver",
        "alarm {alarm} raised by peer {from}",
        &["alarm", "from"],
    ),
    (
        "added member",
        "etcdserver/membership",
        "added member {added-peer-id} {added-peer-peer-urls} to cluster {cluster-id}",
        &["added-peer-id", "cluster-id"],
    ),
    (
        "removed member",
        "etcdserver/membership",
        "removed member {removed-remote-peer-id} from cluster {cluster-id}",
        &["removed-remote-peer-id", "cluster-id"],
    ),
];

/// A field's value as capnslog's `%v` prints it (lists as `[a b]`).
fn go_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => format!(
            "[{}]",
            items.iter().map(go_value).collect::<Vec<_>>().join(" ")
        ),
        other => other.to_string(),
    }
}

/// etcd's capnslog wording of a zap message, when it has one.
fn capnslog_wording(fields: &Fields) -> Option<(&'static str, String)> {
    let (_, package, template, required) = CAPNSLOG_WORDING
        .iter()
        .find(|(message, ..)| *message == fields.message)?;
    let lookup = |name: &str| {
        fields
            .fields
            .iter()
            .find(|(n, _)| n.replace('_', "-") == name)
            .map(|(_, v)| go_value(v))
    };
    if required.iter().any(|name| lookup(name).is_none()) {
        return None;
    }
    let mut out = String::new();
    let mut rest = *template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let spec = &rest[open + 1..close];
        let (name, quoted) = match spec.strip_suffix(":q") {
            Some(name) => (name, true),
            None => (spec, false),
        };
        let value = lookup(name).unwrap_or_default();
        if quoted {
            let _ = write!(out, "{value:?}");
        } else {
            out.push_str(&value);
        }
        rest = &rest[(close + 1).min(rest.len())..];
    }
    out.push_str(rest);
    Some((package, out))
}

fn caller(metadata: &Metadata<'_>) -> String {
    match (metadata.file(), metadata.line()) {
        (Some(file), Some(line)) => format!("{file}:{line}"),
        _ => metadata.target().to_string(),
    }
}

impl<S: Subscriber> Layer<S> for EtcdLayer {
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        self.filtered_elsewhere
            || *metadata.level() <= self.level_for(package_of(metadata.target()))
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        if self.filtered_elsewhere {
            None
        } else {
            Some(self.most_verbose().into())
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = local_now();
        let line = match self.format {
            Format::Zap => {
                let level = match *metadata.level() {
                    Level::ERROR => "error",
                    Level::WARN => "warn",
                    Level::INFO => "info",
                    Level::DEBUG | Level::TRACE => "debug",
                };
                // zap's order: level, ts, caller, msg, then the fields as logged.
                let string = |s: &str| serde_json::Value::from(s).to_string();
                let mut text = format!(
                    "{{\"level\":\"{level}\",\"ts\":\"{}\",\"caller\":{},\"msg\":{}",
                    zap_time(&now),
                    string(&caller(metadata)),
                    string(&fields.message)
                );
                // etcd's zap fields are dashed ("local-member-id"); tracing's are
                // identifiers, so `local_member_id` is written with dashes.
                for (name, value) in fields.fields {
                    let _ = write!(text, ",{}:{value}", string(&name.replace('_', "-")));
                }
                text.push_str("}\n");
                text
            }
            Format::Capnslog => {
                let letter = match *metadata.level() {
                    Level::ERROR => 'E',
                    Level::WARN => 'W',
                    Level::INFO => 'I',
                    Level::DEBUG => 'D',
                    Level::TRACE => 'T',
                };
                let (package, message) = match capnslog_wording(&fields) {
                    Some(worded) => worded,
                    None => {
                        let mut message = fields.message;
                        for (name, value) in fields.fields {
                            let _ = write!(message, " {name}={}", go_value(&value));
                        }
                        (package_of(metadata.target()), message)
                    }
                };
                let mut text = capnslog_time(&now);
                if self.capnslog_caller {
                    let file = metadata
                        .file()
                        .map_or("???", |f| f.rsplit('/').next().unwrap_or(f));
                    let _ = write!(text, " [{file}:{}]", metadata.line().unwrap_or(0));
                }
                let _ = write!(text, " {letter} | {package}: {message}");
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text
            }
        };
        if let Ok(mut outputs) = self.outputs.lock() {
            for output in outputs.iter_mut() {
                output.write_line(line.as_bytes());
            }
        }
    }
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// capnslog's `ParseLogLevelConfig`: `pkg=LEVEL,...`, `*=LEVEL` for all packages.
fn parse_package_levels(text: &str) -> Result<Vec<(String, Level)>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let Some((package, level)) = part.split_once('=') else {
            return Err(format!("Bad log level format: {part}"));
        };
        let level = capnslog_level(level).ok_or_else(|| format!("Bad log level format: {part}"))?;
        out.push((package.trim().to_string(), level));
    }
    Ok(out)
}

fn open_output(name: &str) -> Result<Output, String> {
    Ok(match name {
        "stderr" | "default" => Output::Stderr,
        "stdout" => Output::Stdout,
        "systemd/journal" => Output::Stderr,
        path => Output::File(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("open {path}: {e}"))?,
        ),
    })
}

/// etcd's `setupLogging`: checks the logging flags, prints etcd's deprecation warnings
/// to stderr and installs the logger. An error is etcd's "error verifying flags" text.
pub fn init(flags: &Flags) -> Result<(), String> {
    let mut stderr = std::io::stderr().lock();
    // `--log-output` (deprecated) against `--log-outputs`.
    let deprecated = &flags.log_output;
    let mut outputs = flags.log_outputs.clone();
    let default_list = vec!["default".to_string()];
    if deprecated.len() != outputs.len() {
        if deprecated.len() > outputs.len() {
            let _ = writeln!(
                stderr,
                "'--log-output' flag has been deprecated! Please use '--log-outputs'!"
            );
            outputs = deprecated.clone();
        }
    } else {
        if deprecated.len() > 1 {
            return Err(
                "both '--log-output' and '--log-outputs' are set; only set '--log-outputs'".into(),
            );
        }
        if deprecated.is_empty() {
            return Err("either '--log-output' or '--log-outputs' flag must be set".into());
        }
        if deprecated == &outputs && deprecated[0] != "default" {
            return Err(format!(
                "'--log-output={}' and '--log-outputs={}' are incompatible; only set --log-outputs",
                quoted_list(deprecated),
                quoted_list(&outputs)
            ));
        }
        if deprecated != &default_list {
            let _ = writeln!(
                stderr,
                "[WARNING] Deprecated '--log-output' flag is set to {}",
                quoted_list(deprecated)
            );
            let _ = writeln!(stderr, "Please use '--log-outputs' flag");
        }
    }
    if flags.debug {
        let _ = writeln!(
            stderr,
            "[WARNING] Deprecated '--debug' flag is set to true (use '--log-level=debug' instead"
        );
        if flags.log_level != "debug" {
            let _ = writeln!(
                stderr,
                "[WARNING] Deprecated '--debug' flag is set to true with inconsistent '--log-level={}' flag",
                flags.log_level
            );
        }
    }
    if flags.logger == "capnslog" {
        let _ = writeln!(
            stderr,
            "[WARNING] Deprecated '--logger=capnslog' flag is set; use '--logger=zap' flag instead"
        );
    }
    if !flags.log_package_levels.is_empty() {
        let _ = writeln!(
            stderr,
            "[WARNING] Deprecated '--log-package-levels={}' flag is set; use '--logger=zap' flag instead",
            flags.log_package_levels
        );
    }
    drop(stderr);
    let level =
        level_of(&flags.log_level).ok_or_else(|| format!("unknown level {:?}", flags.log_level))?;
    let mut package_levels = Vec::new();
    let mut notes = Vec::new();
    let (format, opened, capnslog_caller, default_level) = match flags.logger.as_str() {
        "capnslog" => {
            if !flags.log_package_levels.is_empty() {
                match parse_package_levels(&flags.log_package_levels) {
                    Ok(levels) => package_levels = levels,
                    Err(e) => notes.push(format!(
                        "couldn't parse log level string: {e}, continuing with default levels"
                    )),
                }
            }
            if outputs.len() != 1 {
                return Err(format!(
                    "--logger=capnslog supports only 1 value in '--log-outputs', got {}",
                    quoted_list(&outputs)
                ));
            }
            let output = outputs[0].as_str();
            if !matches!(output, "default" | "stderr" | "stdout") {
                return Err(format!(
                    "unknown log-output {output:?} (only supports \"default\", \"stderr\", \"stdout\")"
                ));
            }
            let level = if flags.debug { Level::DEBUG } else { level };
            (
                Format::Capnslog,
                vec![open_output(output)?],
                flags.debug && output != "default",
                level,
            )
        }
        "zap" => {
            if outputs.is_empty() {
                outputs = default_list;
            }
            if outputs.len() > 1 && outputs.iter().any(|o| o == "default") {
                return Err("multi logoutput for \"default\" is not supported yet".into());
            }
            if outputs.iter().any(|o| o == "systemd/journal") {
                notes.push("the systemd/journal log output is not supported by rivet; writing to stderr instead".to_string());
            }
            let mut names: Vec<&str> = outputs
                .iter()
                .map(|o| match o.as_str() {
                    "default" | "systemd/journal" => "stderr",
                    other => other,
                })
                .collect();
            names.sort_unstable();
            names.dedup();
            if names.contains(&"/dev/null") {
                names = vec!["/dev/null"];
            }
            let opened = names
                .into_iter()
                .map(open_output)
                .collect::<Result<Vec<_>, _>>()?;
            (Format::Zap, opened, false, level)
        }
        other => return Err(format!("unknown logger option {other:?}")),
    };
    let rivet_filter = std::env::var("RIVET_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok());
    let layer = EtcdLayer {
        format,
        capnslog_caller,
        default_level,
        package_levels,
        filtered_elsewhere: rivet_filter.is_some(),
        outputs: Mutex::new(opened),
    };
    let _ = FORMAT.set(format);
    tracing_subscriber::registry()
        .with(rivet_filter)
        .with(layer)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    for note in notes {
        tracing::warn!(target: "rivet::logging", "{note}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_map_to_etcd_packages() {
        assert_eq!(package_of("rivet_engine::raft_core"), "etcdserver");
        assert_eq!(package_of("rivet_wal::wal"), "wal");
        assert_eq!(package_of("rivet_net::peer::conn"), "rafthttp");
        assert_eq!(package_of("raft"), "raft");
        assert_eq!(package_of("rivet_netx"), "rivet_netx");
    }

    #[test]
    fn zap_messages_take_etcds_capnslog_wording() {
        let fields = Fields {
            message: "slow fdatasync".into(),
            fields: vec![("took", "1.5s".into()), ("expected_duration", "1s".into())],
        };
        assert_eq!(
            capnslog_wording(&fields),
            Some(("wal", "sync duration of 1.5s, expected less than 1s".into()))
        );
        let fields = Fields {
            message: "added member".into(),
            fields: vec![
                ("added_peer_id", "8e9e05c52164694d".into()),
                (
                    "added_peer_peer_urls",
                    serde_json::json!(["http://a:2380", "http://b:2380"]),
                ),
                ("cluster_id", "cdf818194e3a8c32".into()),
            ],
        };
        assert_eq!(
            capnslog_wording(&fields).map(|(_, m)| m).as_deref(),
            Some("added member 8e9e05c52164694d [http://a:2380 http://b:2380] to cluster cdf818194e3a8c32")
        );
        let fields = Fields {
            message: "apply request took too long".into(),
            fields: vec![("took", "120ms".into()), ("request", "put k".into())],
        };
        assert_eq!(
            capnslog_wording(&fields).map(|(_, m)| m).as_deref(),
            Some("request \"put k\" with result \"\" took too long (120ms) to execute")
        );
    }

    #[test]
    fn package_levels_parse_like_capnslog() {
        assert_eq!(
            parse_package_levels("etcdmain=CRITICAL,etcdserver=DEBUG").unwrap(),
            vec![
                ("etcdmain".to_string(), Level::ERROR),
                ("etcdserver".to_string(), Level::DEBUG)
            ]
        );
        assert!(parse_package_levels("etcdmain").is_err());
        assert!(parse_package_levels("etcdmain=LOUD").is_err());
    }

    #[test]
    fn timestamps_have_etcds_shapes() {
        let t = LocalTime {
            year: 2026,
            month: 12,
            day: 7,
            hour: 1,
            minute: 2,
            second: 3,
            micros: 45_678,
            offset_seconds: 0,
        };
        assert_eq!(capnslog_time(&t), "2026-12-07 01:02:03.045678");
        assert_eq!(zap_time(&t), "2026-12-07T01:02:03.045Z");
        let t = LocalTime {
            offset_seconds: 3600 + 1800,
            ..t
        };
        assert_eq!(zap_time(&t), "2026-12-07T01:02:03.045+0130");
    }
}
