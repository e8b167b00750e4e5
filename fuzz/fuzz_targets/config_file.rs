//! Feeds arbitrary text to the `--config-file` reader (`net/src/config/file.rs`) and
//! arbitrary arguments to the flag parser (`net/src/config.rs`): a config file or a
//! command line is refused with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_net::config::{file, Flags};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(mut flags) = file::parse(&text) {
        let _ = flags.validate();
    }
    // A command line that names a config file would read that file: not here.
    if text.to_ascii_lowercase().contains("config") {
        return;
    }
    let args: Vec<String> = text.split('\n').map(str::to_string).collect();
    let env: Vec<(String, String)> = args
        .iter()
        .filter_map(|a| a.split_once('='))
        .filter(|(k, _)| k.starts_with("ETCD_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(mut loaded) = Flags::load(&args, &env) {
        let _ = loaded.flags.validate();
    }
});
