//! The gRPC-JSON gateway, compared with etcd 3.4's: the same HTTP/1.1 transcript runs
//! against a real etcd and a rivet started by the test, and every answer — status, content
//! type, and the body byte for byte (field order and spacing included) — must be the same
//! once member and cluster IDs, lease IDs, ports, sizes and hashes are masked. Also: a
//! watch stream over HTTP/1.1 chunked encoding that receives events from writes made after
//! it started and after the client's body ended; the same answers over h2; and the curl
//! examples of the README's "Using the JSON gateway" section, run as written.
//!
//! Without `etcd` on PATH the tests fail (CI installs it); they never skip.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::cluster::{wait_until, Cluster};
use common::{etcdctl, etcdctl_ok, Etcd, Rivet};

/// Any single read from a server: a stuck server fails the test instead of hanging it.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP/1.1 request on a new connection (`Connection: close`).
fn connect_and_send(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(endpoint).expect("connect");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send head");
    stream.write_all(body).expect("send body");
    BufReader::new(stream)
}

fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("header");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    (status, headers)
}

/// One chunk of a chunked body (`None` at the last chunk; trailers are skipped).
fn read_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    reader.read_line(&mut line).expect("chunk size");
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
    if size == 0 {
        // Trailers, then an empty line.
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                return None;
            }
        }
    }
    let mut data = vec![0; size + 2];
    reader.read_exact(&mut data).expect("chunk data");
    data.truncate(size);
    Some(data)
}

fn request(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut reader = connect_and_send(endpoint, method, path, body.as_bytes(), headers);
    let (status, headers) = read_head(&mut reader);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut reader) {
            body.extend_from_slice(&chunk);
        }
    } else if let Some(length) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.resize(length, 0);
        reader.read_exact(&mut body).expect("body");
    } else {
        reader.read_to_end(&mut body).expect("body");
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn post(endpoint: &str, path: &str, body: &str) -> Answer {
    request(endpoint, "POST", path, body, &[])
}

/// Keys whose values differ between any two clusters: IDs, ports, sizes, indexes, hashes.
const ALWAYS_MASKED: &[&str] = &[
    "cluster_id",
    "member_id",
    "ID",
    "leader",
    "peerURLs",
    "clientURLs",
    "dbSize",
    "dbSizeInUse",
    "raftIndex",
    "raftAppliedIndex",
    "hash",
];

/// Replaces the value of every member named in `keys` (at any depth) with `"*"`, keeping
/// the rest of the text byte for byte.
fn mask(text: &str, keys: &[&str]) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Skips one JSON value starting at `j`; returns where it ends.
    fn skip_value(bytes: &[u8], mut j: usize) -> usize {
        let mut depth = 0usize;
        let mut in_string = false;
        while j < bytes.len() {
            let c = bytes[j];
            if in_string {
                if c == b'\\' {
                    j += 1;
                } else if c == b'"' {
                    in_string = false;
                    if depth == 0 {
                        return j + 1;
                    }
                }
            } else {
                match c {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth == 0 => return j,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    b',' if depth == 0 => return j,
                    _ => {}
                }
            }
            j += 1;
        }
        j
    }
    while i < bytes.len() {
        if bytes[i] == b'"' {
            // A string: a member name if a ':' follows.
            let mut end = i + 1;
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            let name = &text[i + 1..end.min(text.len())];
            out.push_str(&text[i..(end + 1).min(text.len())]);
            i = end + 1;
            if bytes.get(i) == Some(&b':') && keys.contains(&name) {
                out.push_str(":\"*\"");
                i = skip_value(bytes, i + 1);
            }
            continue;
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

/// One request of the transcript. `${NAME}` in the body is replaced by a value captured
/// from an earlier answer of the same server (as compact JSON).
struct Step {
    method: &'static str,
    path: &'static str,
    body: &'static str,
    /// Members masked in this answer besides [`ALWAYS_MASKED`].
    masked: &'static [&'static str],
    /// Values to remember from this answer: (name, JSON pointer).
    capture: &'static [(&'static str, &'static str)],
}

const fn step(path: &'static str, body: &'static str) -> Step {
    Step {
        method: "POST",
        path,
        body,
        masked: &[],
        capture: &[],
    }
}

const fn masked(path: &'static str, body: &'static str, masked: &'static [&'static str]) -> Step {
    Step {
        method: "POST",
        path,
        body,
        masked,
        capture: &[],
    }
}

/// What a step's answer is compared by.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    content_type: Option<String>,
    grpc_metadata: Option<String>,
    body: String,
}

fn run(endpoint: &str, steps: &[Step]) -> Vec<Seen> {
    let mut captured: HashMap<&str, String> = HashMap::new();
    let mut seen = Vec::new();
    for step in steps {
        let mut body = step.body.to_string();
        for (name, value) in &captured {
            body = body.replace(&format!("${{{name}}}"), value);
        }
        let answer = request(endpoint, step.method, step.path, &body, &[]);
        let text = answer.text();
        for (name, pointer) in step.capture {
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} {body}: not JSON ({e}): {text}", step.path));
            let value = json
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{} {body}: no {pointer} in {text}", step.path));
            captured.insert(name, value.to_string());
        }
        let keys: Vec<&str> = ALWAYS_MASKED.iter().chain(step.masked).copied().collect();
        seen.push(Seen {
            status: answer.status,
            content_type: answer.header("content-type").map(str::to_string),
            grpc_metadata: answer
                .header("grpc-metadata-content-type")
                .map(str::to_string),
            body: mask(&text, &keys),
        });
    }
    seen
}

fn compare(steps: &[Step], etcd: &[Seen], rivet: &[Seen]) {
    let mut differences = Vec::new();
    for ((step, etcd), rivet) in steps.iter().zip(etcd).zip(rivet) {
        if etcd != rivet {
            differences.push(format!(
                "{} {} {}\n  etcd:  {etcd:?}\n  rivet: {rivet:?}",
                step.method, step.path, step.body
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} answers differ from etcd's:\n{}",
        differences.len(),
        steps.len(),
        differences.join("\n")
    );
}

/// `a`…`d`, `1`…`3` and friends in base64, as the gateway wants bytes.
const TRANSCRIPT: &[Step] = &[
    // Puts, with and without prev_kv; a put into /v3beta/.
    step("/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#),
    step("/v3/kv/put", r#"{"key":"Yg==","value":"Mg=="}"#),
    step("/v3beta/kv/put", r#"{"key":"Yw==","value":"Mw=="}"#),
    step(
        "/v3/kv/put",
        r#"{"key":"YQ==","value":"MTE=","prev_kv":true}"#,
    ),
    step("/v3/kv/put", r#"{"key":"ZA==","value":""}"#),
    // Gets and ranges with options (both field name forms, numbers and strings).
    step("/v3/kv/range", r#"{"key":"YQ=="}"#),
    step("/v3beta/kv/range", r#"{"key":"YQ==","revision":"2"}"#),
    step("/v3/kv/range", r#"{"key":"YQ==","range_end":"ZQ=="}"#),
    step(
        "/v3/kv/range",
        r#"{"key":"YQ==","range_end":"ZQ==","sort_order":"DESCEND","sort_target":"MOD","limit":2}"#,
    ),
    step(
        "/v3/kv/range",
        r#"{"key":"YQ==","rangeEnd":"ZQ==","sortOrder":1,"sortTarget":"VALUE","keysOnly":true}"#,
    ),
    step(
        "/v3/kv/range",
        r#"{"key":"AA==","range_end":"AA==","count_only":true}"#,
    ),
    step(
        "/v3/kv/range",
        r#"{"key":"YQ==","range_end":"ZQ==","min_mod_revision":"3","serializable":true}"#,
    ),
    step("/v3/kv/range", r#"{"key":"eg=="}"#),
    // Delete with prev_kv, and of nothing.
    step("/v3/kv/deleterange", r#"{"key":"Yg==","prev_kv":true}"#),
    step("/v3/kv/deleterange", r#"{"key":"eg==","range_end":"ew=="}"#),
    // Transactions with compares: one succeeds, one fails, one nests a txn.
    step(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"YQ==","result":"EQUAL","target":"VALUE","value":"MTE="},{"key":"Yw==","target":"VERSION","result":"GREATER","version":"0"}],
            "success":[{"request_put":{"key":"YQ==","value":"dHhu"}},{"request_range":{"key":"YQ=="}},{"request_delete_range":{"key":"ZA==","prev_kv":true}}],
            "failure":[{"request_range":{"key":"Yw=="}}]}"#,
    ),
    step(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"YQ==","result":"LESS","target":"MOD","mod_revision":2}],
            "success":[{"requestPut":{"key":"YQ==","value":"bm8="}}],
            "failure":[{"requestRange":{"key":"YQ==","range_end":"ZQ=="}}]}"#,
    ),
    step(
        "/v3/kv/txn",
        r#"{"success":[{"request_txn":{"compare":[{"key":"eg==","target":"CREATE","create_revision":"0"}],"success":[{"request_put":{"key":"eg==","value":"MA=="}}]}}]}"#,
    ),
    step(
        "/v3/kv/txn",
        r#"{"success":[{"request_put":{"key":"YQ=="}},{"request_put":{"key":"YQ=="}}]}"#,
    ),
    // Compaction, then a read and a watch of a compacted revision, and a future one.
    step("/v3/kv/compaction", r#"{"revision":"4","physical":true}"#),
    step("/v3/kv/range", r#"{"key":"YQ==","revision":"2"}"#),
    step("/v3/kv/compaction", r#"{"revision":"3"}"#),
    step("/v3/kv/compaction", r#"{"revision":"1000"}"#),
    step("/v3/kv/range", r#"{"key":"YQ==","revision":"1000"}"#),
    // Leases: grant, attach, time to live (both routes), list, keep-alive, revoke.
    Step {
        capture: &[("LEASE", "/ID")],
        ..step("/v3/lease/grant", r#"{"TTL":60}"#)
    },
    step(
        "/v3/kv/put",
        r#"{"key":"bA==","value":"MQ==","lease":${LEASE}}"#,
    ),
    masked(
        "/v3/lease/timetolive",
        r#"{"ID":${LEASE},"keys":true}"#,
        &["TTL"],
    ),
    masked("/v3/kv/lease/timetolive", r#"{"ID":${LEASE}}"#, &["TTL"]),
    step("/v3/lease/leases", "{}"),
    step("/v3/kv/lease/leases", ""),
    step("/v3/lease/keepalive", r#"{"ID":${LEASE}}"#),
    step(
        "/v3/lease/keepalive",
        r#"{"ID":${LEASE}} {"ID":${LEASE}}{"ID":"1"}"#,
    ),
    step("/v3/lease/revoke", r#"{"ID":${LEASE}}"#),
    step("/v3/kv/lease/revoke", r#"{"ID":${LEASE}}"#),
    step("/v3/lease/timetolive", r#"{"ID":${LEASE}}"#),
    step("/v3/kv/range", r#"{"key":"bA=="}"#),
    step("/v3/lease/grant", r#"{"TTL":"9000000001"}"#),
    // Cluster and maintenance.
    step("/v3/cluster/member/list", "{}"),
    step("/v3/cluster/member/remove", r#"{"ID":"1"}"#),
    step("/v3/cluster/member/add", r#"{"peerURLs":["not a url"]}"#),
    step(
        "/v3/cluster/member/update",
        r#"{"ID":"1","peerURLs":["http://127.0.0.1:1"]}"#,
    ),
    step("/v3/cluster/member/promote", r#"{"ID":"1"}"#),
    step("/v3/maintenance/transfer-leadership", r#"{"targetID":"1"}"#),
    step("/v3/maintenance/status", "{}"),
    step("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
    step("/v3/maintenance/alarm", "{}"),
    step("/v3/maintenance/hash", "{}"),
    // Lock and election, on a lease of their own.
    Step {
        capture: &[("LEASE2", "/ID")],
        ..step("/v3/lease/grant", r#"{"TTL":60}"#)
    },
    Step {
        masked: &["key"],
        capture: &[("LOCKKEY", "/key")],
        ..step("/v3/lock/lock", r#"{"name":"bXlsb2Nr","lease":${LEASE2}}"#)
    },
    masked(
        "/v3/kv/range",
        r#"{"key":"bXlsb2Nr","range_end":"bXlsb2Ns","keys_only":true}"#,
        &["key", "lease"],
    ),
    step("/v3/lock/unlock", r#"{"key":${LOCKKEY}}"#),
    step("/v3/lock/unlock", r#"{}"#),
    Step {
        masked: &["key", "lease"],
        capture: &[("LEADER", "/leader")],
        ..step(
            "/v3/election/campaign",
            r#"{"name":"ZWxlY3Rpb24=","value":"djE=","lease":${LEASE2}}"#,
        )
    },
    masked(
        "/v3/election/leader",
        r#"{"name":"ZWxlY3Rpb24="}"#,
        &["key", "lease"],
    ),
    step(
        "/v3/election/proclaim",
        r#"{"leader":${LEADER},"value":"djI="}"#,
    ),
    masked(
        "/v3/election/leader",
        r#"{"name":"ZWxlY3Rpb24="}"#,
        &["key", "lease"],
    ),
    step("/v3/election/proclaim", r#"{"value":"djI="}"#),
    step("/v3/election/resign", r#"{"leader":${LEADER}}"#),
    step("/v3/election/leader", r#"{"name":"ZWxlY3Rpb24="}"#),
    // Bad input: malformed JSON, wrong types, unknown fields (ignored), bad enums, bad
    // base64, an empty body, a top-level array; requests the server refuses.
    step("/v3/kv/range", r#"{"key":"YQ==",}"#),
    step("/v3/kv/range", r#"{"key":"#),
    step("/v3/kv/range", r#"{"key" "YQ=="}"#),
    step("/v3/kv/range", r#"{"key":"YQ==" "limit":1}"#),
    step("/v3/kv/range", r#"{"key":tru}"#),
    step("/v3/kv/range", "[1]"),
    step("/v3/kv/range", "7"),
    step("/v3/kv/range", ""),
    step("/v3/kv/range", "null"),
    step(
        "/v3/kv/range",
        r#"{"key":"YQ==","unknown_field":{"x":[1,2]},"another":null}"#,
    ),
    step("/v3/kv/range", r#"{"key":"YQ=="} trailing garbage"#),
    step("/v3/kv/range", r#"{"key":"!!"}"#),
    step("/v3/kv/range", r#"{"key":"YQ"}"#),
    step("/v3/kv/range", r#"{"key":5}"#),
    step("/v3/kv/range", r#"{"key":"YQ==","limit":"x"}"#),
    step("/v3/kv/range", r#"{"key":"YQ==","limit":1.5}"#),
    step("/v3/kv/range", r#"{"key":"YQ==","sort_order":"BAD"}"#),
    step("/v3/kv/range", r#"{"key":"YQ==","sort_order":true}"#),
    step("/v3/kv/range", r#"{"key":"YQ==","serializable":"yes"}"#),
    step("/v3/kv/range", r#"{"key":null,"range_end":null}"#),
    step("/v3/kv/txn", r#"{"compare":{}}"#),
    step("/v3/kv/txn", r#"{"success":[{"request_range":"x"}]}"#),
    step("/v3/kv/put", r#"{"value":"MQ=="}"#),
    step("/v3/kv/put", r#"{"key":"YQ==","lease":"12345"}"#),
    step("/v3/lease/keepalive", r#"{"ID":"#),
    // Paths and methods outside the routes.
    Step {
        method: "GET",
        ..step("/v3/kv/range", "")
    },
    Step {
        method: "PUT",
        ..step("/v3/kv/put", r#"{"key":"YQ=="}"#)
    },
    step("/v3/kv/nothing", "{}"),
    step("/v3/kv/range/", "{}"),
    step("/v3/maintenance/hashkv", "{}"),
    step("/v3alpha/kv/range", "{}"),
    step("/v3", "{}"),
    Step {
        method: "OPTIONS",
        ..step("/v3/kv/range", "")
    },
];

#[test]
fn transcript_matches_etcd() {
    let etcd = Etcd::start(&[]);
    let rivet = Rivet::start(&[]);
    let from_etcd = run(&etcd.endpoint(), TRANSCRIPT);
    let from_rivet = run(&rivet.endpoint(), TRANSCRIPT);
    compare(TRANSCRIPT, &from_etcd, &from_rivet);
}

/// Calls to the Auth routes while auth is off, and a token on a request without auth:
/// etcd's errors, through the gateway.
const AUTH_TRANSCRIPT: &[Step] = &[
    step("/v3/auth/authenticate", r#"{"name":"root","password":"x"}"#),
    step("/v3/auth/enable", "{}"),
    step("/v3/auth/disable", "{}"),
    step("/v3/auth/user/add", "{}"),
    step("/v3/auth/user/get", r#"{"name":"nobody"}"#),
    step("/v3/auth/user/list", "{}"),
    step("/v3/auth/user/delete", r#"{"name":"nobody"}"#),
    step(
        "/v3/auth/user/changepw",
        r#"{"name":"nobody","password":"x"}"#,
    ),
    step("/v3/auth/user/grant", r#"{"user":"nobody","role":"r"}"#),
    step("/v3/auth/user/revoke", r#"{"name":"nobody","role":"r"}"#),
    step("/v3/auth/role/add", "{}"),
    step("/v3/auth/role/get", r#"{"role":"r"}"#),
    step("/v3/auth/role/list", "{}"),
    step("/v3/auth/role/delete", r#"{"role":"r"}"#),
    step(
        "/v3/auth/role/grant",
        r#"{"name":"r","perm":{"permType":"READWRITE","key":"YQ=="}}"#,
    ),
    step("/v3/auth/role/revoke", r#"{"role":"r","key":"YQ=="}"#),
];

#[test]
fn auth_routes_without_auth_match_etcd() {
    let etcd = Etcd::start(&[]);
    let rivet = Rivet::start(&[]);
    let from_etcd = run(&etcd.endpoint(), AUTH_TRANSCRIPT);
    let from_rivet = run(&rivet.endpoint(), AUTH_TRANSCRIPT);
    compare(AUTH_TRANSCRIPT, &from_etcd, &from_rivet);
    // A token while auth is off: etcd refuses it as invalid.
    let headers = [("Authorization", "not-a-token")];
    let body = r#"{"key":"YQ==","value":"MQ=="}"#;
    let etcd_answer = request(&etcd.endpoint(), "POST", "/v3/kv/put", body, &headers);
    let rivet_answer = request(&rivet.endpoint(), "POST", "/v3/kv/put", body, &headers);
    assert_eq!(
        (
            rivet_answer.status,
            mask(&rivet_answer.text(), ALWAYS_MASKED)
        ),
        (etcd_answer.status, mask(&etcd_answer.text(), ALWAYS_MASKED))
    );
}

/// An open response stream: lines as the server sends them.
struct Stream {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
    pending: Vec<u8>,
}

impl Stream {
    fn open(endpoint: &str, path: &str, body: &str) -> Stream {
        let mut reader = connect_and_send(endpoint, "POST", path, body.as_bytes(), &[]);
        let (status, headers) = read_head(&mut reader);
        Stream {
            reader,
            status,
            headers,
            pending: Vec::new(),
        }
    }

    /// The next newline-terminated message (without the newline).
    fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.pending.iter().position(|&c| c == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            }
            let chunk = read_chunk(&mut self.reader).expect("the stream ended early");
            self.pending.extend_from_slice(&chunk);
        }
    }
}

/// A watch over HTTP/1.1: the whole request body (one create request) is sent at once,
/// so the client's side has ended before any event; writes made afterwards still arrive,
/// one chunked message each, as from etcd. Returns the masked lines.
fn watch_session(endpoint: &str) -> Vec<String> {
    let mut lines = Vec::new();
    assert_eq!(
        post(endpoint, "/v3/kv/put", r#"{"key":"dw==","value":"MA=="}"#).status,
        200
    );
    // A watcher from the past: the history first.
    let mut stream = Stream::open(
        endpoint,
        "/v3/watch",
        r#"{"create_request":{"key":"dw==","start_revision":"1"}}"#,
    );
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v == "chunked"),
        "not chunked: {:?}",
        stream.headers
    );
    lines.push(stream.line()); // created
    lines.push(stream.line()); // the put before the watch
    let mut live = Stream::open(
        endpoint,
        "/v3/watch",
        r#"{"create_request":{"key":"dw==","range_end":"eA==","prev_kv":true,"filters":["NODELETE"]}}"#,
    );
    lines.push(live.line()); // created
    for (path, body) in [
        ("/v3/kv/put", r#"{"key":"dw==","value":"MQ=="}"#),
        ("/v3/kv/put", r#"{"key":"d3g=","value":"Mg=="}"#),
        ("/v3/kv/deleterange", r#"{"key":"dw=="}"#),
        ("/v3/kv/put", r#"{"key":"dw==","value":"Mw=="}"#),
    ] {
        assert_eq!(post(endpoint, path, body).status, 200, "{path} {body}");
    }
    // The first watcher sees its key's three changes, the second (no deletes, with
    // prev_kv) the three puts in its range.
    for _ in 0..3 {
        lines.push(stream.line());
    }
    for _ in 0..3 {
        lines.push(live.line());
    }
    lines.iter().map(|l| mask(l, ALWAYS_MASKED)).collect()
}

#[test]
fn watch_over_http1_chunked_matches_etcd() {
    let etcd = Etcd::start(&[]);
    let rivet = Rivet::start(&[]);
    let from_etcd = watch_session(&etcd.endpoint());
    let from_rivet = watch_session(&rivet.endpoint());
    assert_eq!(from_rivet, from_etcd);
}

/// The same requests over h2 (prior knowledge, as gRPC clients speak it on the port)
/// answer what HTTP/1.1 answers. etcd 3.4 serves its gateway over HTTP/1.1 only on a
/// plain listener, so this checks rivet against itself.
#[test]
fn h2_answers_as_http1() {
    let rivet = Rivet::start(&[]);
    let url = rivet.url();
    let curl = |args: &[&str]| {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let put = format!("{url}/v3/kv/put");
    let range = format!("{url}/v3/kv/range");
    let over_h2 = curl(&[
        "--http2-prior-knowledge",
        &put,
        "-d",
        r#"{"key":"aDI=","value":"MQ=="}"#,
    ]);
    assert!(over_h2.contains("\"revision\":\"2\""), "{over_h2}");
    let h1 = curl(&["--http1.1", &range, "-d", r#"{"key":"aDI="}"#]);
    let h2 = curl(&["--http2-prior-knowledge", &range, "-d", r#"{"key":"aDI="}"#]);
    assert_eq!(h1, h2);
    let bad_h1 = curl(&["--http1.1", &range, "-d", "{"]);
    let bad_h2 = curl(&["--http2-prior-knowledge", &range, "-d", "{"]);
    assert_eq!(bad_h1, bad_h2);
    // A keep-alive stream over h2: one message, then the end (the body ended).
    let lease = curl(&[
        "--http2-prior-knowledge",
        &format!("{url}/v3/lease/grant"),
        "-d",
        r#"{"TTL":30}"#,
    ]);
    let lease: serde_json::Value = serde_json::from_str(&lease).expect("lease JSON");
    let id = lease["ID"].as_str().expect("lease ID");
    let keepalive = curl(&[
        "--http2-prior-knowledge",
        &format!("{url}/v3/lease/keepalive"),
        "-d",
        &format!("{{\"ID\":\"{id}\"}}"),
    ]);
    assert!(
        keepalive.starts_with("{\"result\":{")
            && keepalive.contains("\"TTL\":\"30\"")
            && keepalive.ends_with("}\n"),
        "{keepalive}"
    );
}

/// The README's "Using the JSON gateway" section: every `curl` command in its code blocks
/// runs against a rivet (with `localhost:2379` pointed at it), in order, and prints what
/// the `# ` lines under it show (IDs masked).
#[test]
fn readme_gateway_examples_run_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Using the JSON gateway")
        .nth(1)
        .expect("README has a \"Using the JSON gateway\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut examples: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_code = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            examples.push((command.to_string(), Vec::new()));
        } else if let (Some(output), Some(last)) = (line.strip_prefix("# "), examples.last_mut()) {
            last.1.push(output.to_string());
        }
    }
    assert!(examples.len() >= 8, "too few examples: {examples:?}");
    let rivet = Rivet::start(&[]);
    for (command, expected) in &examples {
        let command = command.replace("localhost:2379", &rivet.endpoint());
        let output = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
            .expect("run sh");
        // `--max-time` ends a watch example: curl's exit 28.
        let code = output.status.code();
        assert!(
            code == Some(0) || command.contains("--max-time") && code == Some(28),
            "{command}: exit {code:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| mask(l, ALWAYS_MASKED))
            .collect();
        let expected: Vec<String> = expected.iter().map(|l| mask(l, ALWAYS_MASKED)).collect();
        assert_eq!(printed, expected, "{command}");
    }
}

/// Election observe over the gateway: the leader now, then every proclamation, one line
/// each on the open stream.
fn observe_session(endpoint: &str) -> Vec<String> {
    let lease = post(endpoint, "/v3/lease/grant", r#"{"TTL":60}"#).text();
    let lease: serde_json::Value = serde_json::from_str(&lease).expect("lease JSON");
    let lease = lease["ID"].as_str().expect("lease ID").to_string();
    let campaign = post(
        endpoint,
        "/v3/election/campaign",
        &format!(r#"{{"name":"b2JzZXJ2ZQ==","value":"djE=","lease":"{lease}"}}"#),
    );
    assert_eq!(campaign.status, 200, "{}", campaign.text());
    let leader: serde_json::Value = serde_json::from_str(&campaign.text()).expect("JSON");
    let leader = leader["leader"].to_string();
    let mut stream = Stream::open(
        endpoint,
        "/v3/election/observe",
        r#"{"name":"b2JzZXJ2ZQ=="}"#,
    );
    assert_eq!(stream.status, 200);
    let mut lines = vec![stream.line()];
    for value in ["djI=", "djM="] {
        let body = format!(r#"{{"leader":{leader},"value":"{value}"}}"#);
        assert_eq!(post(endpoint, "/v3/election/proclaim", &body).status, 200);
        lines.push(stream.line());
    }
    lines
        .iter()
        .map(|l| mask(l, &[ALWAYS_MASKED, &["key", "lease"]].concat()))
        .collect()
}

#[test]
fn election_observe_stream_matches_etcd() {
    let etcd = Etcd::start(&[]);
    let rivet = Rivet::start(&[]);
    let from_etcd = observe_session(&etcd.endpoint());
    let from_rivet = observe_session(&rivet.endpoint());
    assert_eq!(from_rivet, from_etcd);
}

/// What a learner answers through the gateway: serializable reads and status, and etcd's
/// "rpc not supported for learner" for the rest, streams included.
fn learner_session(mut cluster: Cluster) -> Vec<String> {
    let voter = cluster.members[0].endpoint();
    assert_eq!(
        post(&voter, "/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#).status,
        200
    );
    let learner = cluster.new_member("m1");
    etcdctl_ok(
        &voter,
        &[
            "member",
            "add",
            "m1",
            "--learner",
            "--peer-urls",
            &learner.peer_url(),
        ],
    );
    let at_learner = learner.endpoint();
    cluster.join(learner, &[]);
    wait_until(
        "the learner serves the data",
        Duration::from_secs(60),
        || {
            etcdctl(
                &at_learner,
                &["get", "a", "--print-value-only", "--consistency", "s"],
                None,
            )
            .stdout
                == b"1\n"
        },
    );
    let keys = [ALWAYS_MASKED, &["raft_term", "raftTerm", "revision"]].concat();
    let mut seen = Vec::new();
    for (path, body) in [
        ("/v3/kv/range", r#"{"key":"YQ==","serializable":true}"#),
        ("/v3/kv/range", r#"{"key":"YQ=="}"#),
        ("/v3/kv/put", r#"{"key":"YQ==","value":"Mg=="}"#),
        ("/v3/kv/txn", "{}"),
        ("/v3/cluster/member/list", "{}"),
        ("/v3/lease/grant", r#"{"TTL":60}"#),
        ("/v3/watch", r#"{"create_request":{"key":"YQ=="}}"#),
        ("/v3/lease/keepalive", r#"{"ID":"1"}"#),
        ("/v3/lock/lock", r#"{"name":"bA=="}"#),
    ] {
        let answer = post(&at_learner, path, body);
        seen.push(format!(
            "{path} {body} -> {} {}",
            answer.status,
            mask(&answer.text(), &keys)
        ));
    }
    let status = post(&at_learner, "/v3/maintenance/status", "{}");
    let status: serde_json::Value = serde_json::from_str(&status.text()).expect("JSON");
    seen.push(format!("status: isLearner {}", status["isLearner"]));
    seen
}

#[test]
fn learner_refuses_through_the_gateway_as_etcd() {
    let from_etcd = learner_session(Cluster::start_etcd(1, &[]));
    let from_rivet = learner_session(Cluster::start(1, &[]));
    assert_eq!(from_rivet, from_etcd);
}

/// Gateway calls are gRPC calls to the server: the `grpc_server_*` metrics count them.
#[test]
fn gateway_calls_count_in_grpc_metrics() {
    let rivet = Rivet::start(&[]);
    let handled = |method: &str| -> u64 {
        let metrics = request(&rivet.endpoint(), "GET", "/metrics", "", &[]).text();
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("grpc_server_handled_total{")
                    && l.contains(&format!("grpc_method=\"{method}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = handled("Range");
    for _ in 0..3 {
        assert_eq!(
            post(&rivet.endpoint(), "/v3/kv/range", r#"{"key":"YQ=="}"#).status,
            200
        );
    }
    assert_eq!(post(&rivet.endpoint(), "/v3/kv/range", "{}").status, 400);
    assert_eq!(handled("Range"), before + 4);
}
