//! `--config-file`: etcd 3.4's YAML configuration file (the keys of etcd's
//! `etcd.conf.yml.sample`: each flag's name, plus the nested `client-transport-security`
//! and `peer-transport-security`).
//!
//! etcd reads the file by converting the YAML to JSON and decoding that into its config
//! struct, so the file follows Go's JSON rules: keys match case-insensitively, a null
//! value (`data-dir:` with nothing after it) keeps the default, unknown keys are
//! ignored, a value of the wrong type is refused with Go's message, durations are
//! integers in nanoseconds, lists of URLs are comma-separated strings while
//! `log-outputs` and `cipher-suites` are YAML lists.

use serde_yaml_ng::Value as Yaml;

use super::{goflag, spec, Flags, Kind, Spec, TransportSecurity, Value, SPECS};

/// Why a config file was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FileError {
    /// Logged as "error verifying flags, ..." (etcd's `Validate` or decoding errors).
    Invalid(String),
    /// Printed as it is to stderr (etcd's "unexpected error setting up ...").
    Raw(String),
}

/// The flags a config file may not set (they are about the command line itself).
const NOT_IN_FILE: &[&str] = &["config-file", "version"];

fn go_type(kind: Kind, name: &str) -> &'static str {
    match kind {
        Kind::Bool | Kind::Ignored => "bool",
        Kind::Uint => {
            if matches!(name, "snapshot-count") {
                "uint64"
            } else {
                "uint"
            }
        }
        Kind::Uint32 => "uint32",
        Kind::Int => {
            if name == "quota-backend-bytes" {
                "int64"
            } else {
                "int"
            }
        }
        Kind::Duration => "time.Duration",
        Kind::Strings => "[]string",
        Kind::UniqueStrings if name.starts_with("log-output") => "[]string",
        _ => "string",
    }
}

fn yaml_kind(value: &Yaml) -> String {
    match value {
        Yaml::Bool(_) => "bool".into(),
        Yaml::Number(n) => format!("number {n}"),
        Yaml::String(_) => "string".into(),
        Yaml::Sequence(_) => "array".into(),
        Yaml::Mapping(_) => "object".into(),
        Yaml::Tagged(_) => "object".into(),
        Yaml::Null => "null".into(),
    }
}

fn mismatch(value: &Yaml, field: &str, go: &str) -> FileError {
    let found = yaml_kind(value);
    let found = if found.starts_with("number")
        && !matches!(
            go,
            "uint" | "uint64" | "uint32" | "int" | "int64" | "time.Duration"
        ) {
        "number".to_string()
    } else {
        found
    };
    FileError::Invalid(format!(
        "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {found} into Go struct field configYAML.{field} of type {go}"
    ))
}

/// go-yaml v2 (which etcd uses) reads YAML 1.1 booleans.
fn yaml_bool(value: &Yaml) -> Option<bool> {
    match value {
        Yaml::Bool(b) => Some(*b),
        Yaml::String(s) => match s.as_str() {
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn yaml_string(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn string_list(value: &Yaml) -> Option<Vec<String>> {
    match value {
        Yaml::Sequence(items) => items.iter().map(yaml_string).collect(),
        _ => None,
    }
}

/// One key's value, typed as etcd's struct field is.
fn convert(spec: &Spec, value: &Yaml) -> Result<Value, FileError> {
    let go = go_type(spec.kind, spec.name);
    let wrong = || mismatch(value, spec.name, go);
    Ok(match spec.kind {
        Kind::Str => Value::Str(yaml_string(value).ok_or_else(wrong)?),
        Kind::Select(valid) => {
            let text = yaml_string(value).ok_or_else(wrong)?;
            if spec.name != "initial-cluster-state" && !valid.contains(&text.as_str()) {
                return Err(FileError::Raw(format!(
                    "unexpected error setting up {} flag: invalid value",
                    if spec.name == "proxy" {
                        "proxyFlag".to_string()
                    } else {
                        spec.name.to_string()
                    }
                )));
            }
            Value::Str(if text.is_empty() && spec.name == "initial-cluster-state" {
                "new".into()
            } else {
                text
            })
        }
        Kind::Bool | Kind::Ignored => Value::Bool(yaml_bool(value).ok_or_else(wrong)?),
        Kind::Uint | Kind::Uint32 => {
            let Yaml::Number(n) = value else {
                return Err(wrong());
            };
            let v = n.as_u64().ok_or_else(wrong)?;
            if matches!(spec.kind, Kind::Uint32) && v > u64::from(u32::MAX) {
                return Err(wrong());
            }
            Value::Uint(v)
        }
        Kind::Int => {
            let Yaml::Number(n) = value else {
                return Err(wrong());
            };
            Value::Int(n.as_i64().ok_or_else(wrong)?)
        }
        Kind::Duration => {
            let Yaml::Number(n) = value else {
                return Err(wrong());
            };
            Value::Duration(n.as_i64().ok_or_else(wrong)?)
        }
        Kind::Urls(exceptions) => {
            let text = yaml_string(value).ok_or_else(wrong)?;
            if text.is_empty() {
                // An empty string keeps the default, as etcd's `if cfg.XJSON != ""`.
                return Err(FileError::Invalid(String::new()));
            }
            if exceptions.contains(&text.as_str()) {
                Value::List(vec![text])
            } else {
                Value::List(goflag::parse_url_list(&text).map_err(|e| {
                    FileError::Raw(format!("unexpected error setting up {}: {e}", spec.name))
                })?)
            }
        }
        Kind::UniqueStrings if go == "[]string" => {
            Value::List(string_list(value).ok_or_else(wrong)?)
        }
        Kind::UniqueStrings => {
            let text = yaml_string(value).ok_or_else(wrong)?;
            if text.is_empty() {
                return Err(FileError::Invalid(String::new()));
            }
            spec.kind.parse(&text).map_err(FileError::Invalid)?
        }
        Kind::Strings => Value::List(string_list(value).ok_or_else(wrong)?),
    })
}

fn security(value: &Yaml, field: &str) -> Result<TransportSecurity, FileError> {
    let mut out = TransportSecurity::default();
    let Yaml::Mapping(map) = value else {
        if matches!(value, Yaml::Null) {
            return Ok(out);
        }
        return Err(mismatch(value, field, "embed.securityConfig"));
    };
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        if matches!(value, Yaml::Null) {
            continue;
        }
        let nested = format!("{field}.{key}");
        let text = || yaml_string(value).ok_or_else(|| mismatch(value, &nested, "string"));
        let flag = || yaml_bool(value).ok_or_else(|| mismatch(value, &nested, "bool"));
        match key.to_ascii_lowercase().as_str() {
            "cert-file" => out.cert_file = text()?,
            "key-file" => out.key_file = text()?,
            "client-cert-auth" => out.client_cert_auth = flag()?,
            "trusted-ca-file" => out.trusted_ca_file = text()?,
            "auto-tls" => out.auto_tls = flag()?,
            _ => {}
        }
    }
    Ok(out)
}

/// Reads a config file into flags (every key not in the file keeps its default).
pub fn load(path: &str) -> Result<Flags, FileError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        FileError::Invalid(format!(
            "open {path}: {}",
            match e.kind() {
                std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                _ => e.to_string(),
            }
        ))
    })?;
    parse(&text)
}

/// Parses a config file's text.
pub fn parse(text: &str) -> Result<Flags, FileError> {
    let document: Yaml = serde_yaml_ng::from_str(text)
        .map_err(|e| FileError::Invalid(format!("error converting YAML to JSON: yaml: {e}")))?;
    let mut flags = Flags::defaults();
    let map = match document {
        Yaml::Mapping(map) => map,
        Yaml::Null => return Ok(flags),
        other => {
            return Err(FileError::Invalid(format!(
                "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {} into Go value of type embed.configYAML",
                yaml_kind(&other)
            )))
        }
    };
    // Go's JSON decoder prefers an exact key match, then a case-insensitive one.
    let mut entries: Vec<(String, &Yaml)> = Vec::new();
    for (key, value) in &map {
        if let Some(key) = key.as_str() {
            entries.push((key.to_string(), value));
        }
    }
    for (key, value) in entries {
        let lower = key.to_ascii_lowercase();
        match lower.as_str() {
            "client-transport-security" => {
                let security = security(value, "client-transport-security")?;
                // etcd's `copySecurityDetails`: the block sets the client TLS flags.
                flags.cert_file = security.cert_file.clone();
                flags.key_file = security.key_file.clone();
                flags.client_cert_auth = security.client_cert_auth;
                flags.trusted_ca_file = security.trusted_ca_file.clone();
                flags.auto_tls = security.auto_tls;
                flags.client_transport_security = security;
                continue;
            }
            "peer-transport-security" => {
                let security = security(value, "peer-transport-security")?;
                flags.peer_cert_file = security.cert_file.clone();
                flags.peer_key_file = security.key_file.clone();
                flags.peer_client_cert_auth = security.client_cert_auth;
                flags.peer_trusted_ca_file = security.trusted_ca_file.clone();
                flags.peer_auto_tls = security.auto_tls;
                flags.peer_transport_security = security;
                continue;
            }
            _ => {}
        }
        let Some(spec) = spec(&key).or_else(|| SPECS.iter().find(|s| s.name == lower)) else {
            continue;
        };
        if NOT_IN_FILE.contains(&spec.name) || matches!(value, Yaml::Null) {
            continue;
        }
        match convert(spec, value) {
            Ok(parsed) => {
                flags.assign(spec.name, parsed);
                flags.explicitly_set.insert(spec.name);
            }
            Err(FileError::Invalid(e)) if e.is_empty() => {}
            Err(e) => return Err(e),
        }
    }
    // A discovery setting clears the default initial cluster, as etcd's file reader does.
    let default_cluster = spec("initial-cluster").map_or("", |s| s.default);
    if (!flags.discovery.is_empty() || !flags.discovery_srv.is_empty())
        && flags.initial_cluster == default_cluster
    {
        flags.initial_cluster.clear();
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
name: 'm1'
data-dir:
wal-dir:
snapshot-count: 10000
heartbeat-interval: 100
election-timeout: 1000
quota-backend-bytes: 0
listen-peer-urls: http://localhost:2380
listen-client-urls: http://localhost:2379
max-snapshots: 5
max-wals: 5
cors:
initial-advertise-peer-urls: http://localhost:2380
advertise-client-urls: http://localhost:2379
discovery:
discovery-fallback: 'proxy'
discovery-proxy:
discovery-srv:
initial-cluster:
initial-cluster-token: 'etcd-cluster'
initial-cluster-state: 'new'
strict-reconfig-check: false
enable-v2: true
enable-pprof: true
proxy: 'off'
proxy-failure-wait: 5000
proxy-refresh-interval: 30000
proxy-dial-timeout: 1000
proxy-write-timeout: 5000
proxy-read-timeout: 0
client-transport-security:
  cert-file: /c.pem
  key-file:
  client-cert-auth: true
  trusted-ca-file:
  auto-tls: false
peer-transport-security:
  cert-file:
  key-file:
  client-cert-auth: false
  trusted-ca-file: /ca.pem
  auto-tls: true
debug: false
logger: zap
log-outputs: [stderr]
force-new-cluster: false
auto-compaction-mode: periodic
auto-compaction-retention: "1"
grpc-keepalive-min-time: 3000000000
"#;

    #[test]
    fn the_sample_file_parses() {
        let flags = parse(SAMPLE).expect("sample");
        assert_eq!(flags.name, "m1");
        assert_eq!(flags.snapshot_count, 10000);
        assert!(!flags.strict_reconfig_check);
        assert!(flags.enable_v2);
        assert!(flags.enable_pprof);
        assert_eq!(flags.logger, "zap");
        assert_eq!(flags.log_outputs, vec!["stderr"]);
        assert_eq!(flags.auto_compaction_retention, "1");
        assert_eq!(flags.cors, vec!["*"]);
        assert_eq!(flags.initial_cluster, "default=http://localhost:2380");
        assert_eq!(
            flags.grpc_keepalive_min_time,
            std::time::Duration::from_secs(3)
        );
        assert_eq!(flags.client_transport_security.cert_file, "/c.pem");
        assert!(flags.client_transport_security.client_cert_auth);
        assert_eq!(flags.peer_transport_security.trusted_ca_file, "/ca.pem");
        assert!(flags.peer_transport_security.auto_tls);
        assert_eq!(flags.cert_file, "/c.pem");
        assert!(flags.client_cert_auth);
        assert_eq!(flags.peer_trusted_ca_file, "/ca.pem");
        assert!(flags.peer_auto_tls);
    }

    #[test]
    fn wrong_types_get_go_json_messages() {
        assert_eq!(
            parse("heartbeat-interval: \"100\"\n").err(),
            Some(FileError::Invalid("error unmarshaling JSON: while decoding JSON: json: cannot unmarshal string into Go struct field configYAML.heartbeat-interval of type uint".into()))
        );
        assert_eq!(
            parse("max-wals: -1\n").err(),
            Some(FileError::Invalid("error unmarshaling JSON: while decoding JSON: json: cannot unmarshal number -1 into Go struct field configYAML.max-wals of type uint".into()))
        );
        assert_eq!(
            parse("grpc-keepalive-min-time: 5s\n").err(),
            Some(FileError::Invalid("error unmarshaling JSON: while decoding JSON: json: cannot unmarshal string into Go struct field configYAML.grpc-keepalive-min-time of type time.Duration".into()))
        );
        assert_eq!(
            parse("listen-client-urls: foo\n").err(),
            Some(FileError::Raw("unexpected error setting up listen-client-urls: URL scheme must be http, https, unix, or unixs: foo".into()))
        );
        assert!(
            matches!(parse("name: [1\n"), Err(FileError::Invalid(e)) if e.starts_with("error converting YAML to JSON: yaml: "))
        );
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_keys_are_ignored() {
        let flags = parse("Name: x\nno-such-key: 1\n").expect("parses");
        assert_eq!(flags.name, "x");
    }
}
