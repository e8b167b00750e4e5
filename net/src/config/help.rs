//! `rivet --help`: etcd's usage lines and its flags grouped as `etcd --help` groups
//! them, from the flag table, with rivet's own flags in a group of their own.

use super::{Group, SPECS};

/// What `-h` prints to stderr (etcd prints its usage lines there, and only them after a
/// flag error).
pub fn usage() -> String {
    "Usage:

  rivet [flags]
    Start a rivet member (an etcd v3 API server).

  rivet --version
    Show the version of rivet.

  rivet -h | --help
    Show the help information about rivet.

  rivet --config-file
    Path to the server configuration file. Note that if a configuration file is provided, other command line flags and environment variables will be ignored.
"
    .to_string()
}

fn title(group: Group) -> Option<&'static str> {
    Some(match group {
        Group::Member => "Member:",
        Group::Clustering => "Clustering:",
        Group::Security => "Security:",
        Group::Auth => "Auth:",
        Group::Profiling => "Profiling and Monitoring:",
        Group::Logging => "Logging:",
        Group::Proxy => "v2 Proxy (to be deprecated in v4):",
        Group::Experimental => "Experimental feature:",
        Group::Unsafe => "Unsafe feature:",
        Group::Deprecated => "TO BE DEPRECATED:",
        Group::Rivet => "rivet (not in etcd):",
        Group::Hidden => return None,
    })
}

/// What `-h` prints to stdout: every listed flag by group.
pub fn flags() -> String {
    let mut out = String::new();
    let mut groups: Vec<Group> = SPECS.iter().map(|s| s.group).collect();
    groups.dedup();
    for group in groups {
        let Some(title) = title(group) else { continue };
        out.push('\n');
        out.push_str(title);
        out.push('\n');
        if group == Group::Deprecated {
            out.push('\n');
        }
        for spec in SPECS.iter().filter(|s| s.group == group) {
            out.push_str(&format!("  --{} {}\n", spec.name, spec.shown));
            for line in spec.help.lines() {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
        }
        if group == Group::Unsafe {
            out.push_str("\nCAUTIOUS with unsafe flag! It may break the guarantees given by the consensus protocol!\n");
        }
    }
    out
}
