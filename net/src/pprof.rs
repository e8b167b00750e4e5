//! `--enable-pprof`: `/debug/pprof/profile?seconds=N` (a CPU profile) and
//! `/debug/pprof/heap` on the client port, answered as Go's `net/http/pprof` answers:
//! a gzip'd `perftools.profiles.Profile` protobuf, which `go tool pprof` reads.
//!
//! - **CPU**: pprof-rs samples every thread on SIGPROF (100 Hz, Go's rate) for N seconds
//!   (default 30, as Go); the stacks are symbolized from the binary's debug info. A
//!   thread of its own starts the profiler, waits and symbolizes, so the asking core
//!   goes on serving. One profile at a time, as Go (a second request gets a 500).
//! - **Heap**: Go's heap profile samples allocation sites. rivet's allocator (mimalloc)
//!   records no allocation sites, so a per-site heap profile is not possible without
//!   a sampling allocator wrapper; what `/debug/pprof/heap` gives instead is honest
//!   totals: the memory mimalloc has committed (current and peak) and the process's
//!   resident set (current and peak), as samples of a profile whose "functions" name
//!   what each number is. `go tool pprof -top` shows them.
//!
//! The `Profile` messages below are written from `profile.proto`'s field numbers.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tonic::body::Body;

/// Go's default CPU profiling rate.
const CPU_SAMPLE_HZ: i32 = 100;
/// Go's default `seconds` for `/debug/pprof/profile`.
const CPU_SECONDS_DEFAULT: u64 = 30;
/// Longest profile asked for (an hour): the profiler holds every distinct stack.
const CPU_SECONDS_MAX: u64 = 3600;

/// `perftools.profiles` (profile.proto), the messages Go's pprof format is made of.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// Builds a profile: interns strings, functions and locations.
struct Builder {
    profile: proto::Profile,
    strings: std::collections::HashMap<String, i64>,
    functions: std::collections::HashMap<(String, String), u64>,
    locations: std::collections::HashMap<Vec<(u64, i64)>, u64>,
}

impl Builder {
    fn new() -> Builder {
        let mut builder = Builder {
            profile: proto::Profile::default(),
            strings: std::collections::HashMap::new(),
            functions: std::collections::HashMap::new(),
            locations: std::collections::HashMap::new(),
        };
        builder.string("");
        builder
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(index) = self.strings.get(text) {
            return *index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_string());
        self.strings.insert(text.to_string(), index);
        index
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.string(kind),
            unit: self.string(unit),
        }
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (name.to_string(), file.to_string());
        if let Some(id) = self.functions.get(&key) {
            return *id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name_index = self.string(name);
        let file_index = self.string(file);
        self.profile.function.push(proto::Function {
            id,
            name: name_index,
            system_name: name_index,
            filename: file_index,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    /// A location made of `(function, line)` pairs, innermost (inlined) first.
    fn location(&mut self, lines: Vec<(u64, i64)>) -> u64 {
        if let Some(id) = self.locations.get(&lines) {
            return *id;
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(proto::Location {
            id,
            mapping_id: 0,
            address: 0,
            line: lines
                .iter()
                .map(|(function_id, line)| proto::Line {
                    function_id: *function_id,
                    line: *line,
                })
                .collect(),
            is_folded: false,
        });
        self.locations.insert(lines, id);
        id
    }

    /// The profile, encoded and gzip'd as Go's pprof handler writes it.
    fn gzip(self) -> std::io::Result<Vec<u8>> {
        let bytes = prost::Message::encode_to_vec(&self.profile);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&bytes)?;
        encoder.finish()
    }
}

fn nanos_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A CPU profile from a pprof-rs report, in Go's shape: sample types `samples/count`
/// and `cpu/nanoseconds`, period `cpu/nanoseconds`.
fn cpu_profile(report: &pprof::Report) -> std::io::Result<Vec<u8>> {
    let mut builder = Builder::new();
    let samples = builder.value_type("samples", "count");
    let cpu = builder.value_type("cpu", "nanoseconds");
    let period = 1_000_000_000 / i64::from(report.timing.frequency.max(1));
    builder.profile.sample_type = vec![samples, cpu.clone()];
    builder.profile.period_type = Some(cpu);
    builder.profile.period = period;
    builder.profile.time_nanos = nanos_since_epoch(report.timing.start_time);
    builder.profile.duration_nanos =
        i64::try_from(report.timing.duration.as_nanos()).unwrap_or(i64::MAX);
    let thread_key = builder.string("thread");
    for (frames, count) in &report.data {
        let mut location_ids = Vec::with_capacity(frames.frames.len());
        for frame in &frames.frames {
            let lines: Vec<(u64, i64)> = frame
                .iter()
                .map(|symbol| {
                    let function = builder.function(&symbol.name(), &symbol.filename());
                    (function, i64::from(symbol.lineno()))
                })
                .collect();
            if lines.is_empty() {
                continue;
            }
            location_ids.push(builder.location(lines));
        }
        let thread = builder.string(&frames.thread_name);
        let count = *count as i64;
        builder.profile.sample.push(proto::Sample {
            location_id: location_ids,
            value: vec![count, count * period],
            label: vec![proto::Label {
                key: thread_key,
                str: thread,
                num: 0,
                num_unit: 0,
            }],
        });
    }
    builder.gzip()
}

/// This process's resident set in bytes (`/proc/self/statm`), if it can be read.
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let page_bytes = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    pages.checked_mul(page_bytes)
}

/// The heap "profile": mimalloc's committed bytes and the resident set, current and
/// peak, each a sample at a location named after what it measures.
fn heap_profile() -> std::io::Result<Vec<u8>> {
    let mut elapsed = 0usize;
    let mut user = 0usize;
    let mut system = 0usize;
    let mut rss = 0usize;
    let mut rss_peak = 0usize;
    let mut committed = 0usize;
    let mut committed_peak = 0usize;
    let mut faults = 0usize;
    // mimalloc's process info gives its committed bytes as the current resident set on
    // Linux, which can exceed the peak it reads from getrusage (committed pages that were
    // never touched are not resident). Read the kernel's count, and before the peak, so
    // that the peak is never below it.
    let resident = resident_bytes();
    // SAFETY: mi_process_info only writes the integers it is given pointers to.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut elapsed,
            &mut user,
            &mut system,
            &mut rss,
            &mut rss_peak,
            &mut committed,
            &mut committed_peak,
            &mut faults,
        );
    }
    if let Some(resident) = resident {
        rss = resident;
    }
    let mut builder = Builder::new();
    let inuse = builder.value_type("inuse_space", "bytes");
    let peak = builder.value_type("peak_space", "bytes");
    builder.profile.sample_type = vec![inuse, peak];
    builder.profile.period_type = Some(builder.value_type("space", "bytes"));
    builder.profile.time_nanos = nanos_since_epoch(SystemTime::now());
    let comment = builder.string(
        "rivet: totals only; mimalloc records no allocation sites, so this profile has no stacks",
    );
    builder.profile.comment = vec![comment];
    for (name, current, high) in [
        (
            "mimalloc committed memory (all heap allocations)",
            committed,
            committed_peak,
        ),
        (
            "process resident set (heap, page files, stacks, code)",
            rss,
            rss_peak,
        ),
    ] {
        let function = builder.function(name, "");
        let location = builder.location(vec![(function, 0)]);
        builder.profile.sample.push(proto::Sample {
            location_id: vec![location],
            value: vec![current as i64, high as i64],
            label: Vec::new(),
        });
    }
    builder.gzip()
}

fn answer(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn profile_answer(name: &str, body: std::io::Result<Vec<u8>>) -> Response<Body> {
    match body {
        Ok(body) => {
            let mut response = answer(StatusCode::OK, "application/octet-stream", body);
            if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        Err(e) => go_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Could not write the {name} profile: {e}"),
        ),
    }
}

/// Go's `http.Error`.
fn go_error(status: StatusCode, message: &str) -> Response<Body> {
    answer(
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n").into_bytes(),
    )
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Takes a CPU profile for `seconds` and encodes it, all on a thread of its own.
fn cpu_on_this_thread(seconds: u64) -> Result<Vec<u8>, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(CPU_SAMPLE_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| format!("Could not enable CPU profiling: {e}"))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let report = guard
        .report()
        .build()
        .map_err(|e| format!("Could not build the CPU profile: {e}"))?;
    drop(guard);
    cpu_profile(&report).map_err(|e| format!("Could not write the CPU profile: {e}"))
}

/// A CPU profile of `seconds`. Starting the profiler (it loads the binary's symbols),
/// waiting and symbolizing take seconds of a thread: a thread of its own does it all
/// while the asking core goes on serving.
async fn cpu(seconds: u64) -> Response<Body> {
    let (done_tx, done_rx) = futures::channel::oneshot::channel();
    let worker = std::thread::Builder::new()
        .name("pprof".into())
        .spawn(move || {
            let _ = done_tx.send(cpu_on_this_thread(seconds));
        });
    if let Err(e) = worker {
        return go_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    match done_rx.await {
        Ok(Ok(body)) => profile_answer("profile", Ok(body)),
        Ok(Err(message)) => go_error(StatusCode::INTERNAL_SERVER_ERROR, &message),
        Err(_) => go_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the profiling thread stopped",
        ),
    }
}

/// Answers `/debug/pprof/...`; `None` for other paths.
pub async fn route(path: &str, query: &str) -> Option<Response<Body>> {
    let name = path.strip_prefix("/debug/pprof/")?;
    Some(match name {
        "profile" => {
            let seconds = match query_value(query, "seconds") {
                None | Some("") => CPU_SECONDS_DEFAULT,
                Some(text) => match text.parse::<u64>() {
                    Ok(0) | Err(_) => CPU_SECONDS_DEFAULT,
                    Ok(seconds) => seconds.min(CPU_SECONDS_MAX),
                },
            };
            cpu(seconds).await
        }
        "heap" | "allocs" => profile_answer(name, heap_profile()),
        "" => answer(
            StatusCode::OK,
            "text/html; charset=utf-8",
            b"<html><head><title>/debug/pprof/</title></head><body>/debug/pprof/<br>\n\
              <a href=\"profile?seconds=30\">profile</a> (CPU)<br>\n\
              <a href=\"heap\">heap</a> (totals: mimalloc records no allocation sites)<br>\n\
              </body></html>\n"
                .to_vec(),
        ),
        _ => go_error(StatusCode::NOT_FOUND, "Unknown profile"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(gzipped: &[u8]) -> proto::Profile {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gzipped), &mut bytes)
            .expect("gzip");
        prost::Message::decode(bytes.as_slice()).expect("a Profile")
    }

    #[test]
    fn heap_totals_decode() {
        let profile = decode(&heap_profile().expect("heap"));
        assert_eq!(profile.sample.len(), 2);
        assert!(profile.sample.iter().all(|s| s.value.len() == 2));
        let rss = &profile.sample[1].value;
        assert!(rss[0] > 0, "{rss:?}");
        let kind = profile.sample_type[0].r#type as usize;
        assert_eq!(profile.string_table[kind], "inuse_space");
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("seconds=5&x=1", "seconds"), Some("5"));
        assert_eq!(query_value("x=1", "seconds"), None);
    }
}
