//! `compare --bench-cpus` and `--server-cpus`: keeping the load generator and the servers
//! on separate CPUs, so that neither takes the other's time (Linux CPU lists: `0`,
//! `0-1`, `0,2-3`).

use anyhow::{bail, Context};

/// The CPUs of a list like `0,2-3`.
pub fn parse_list(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((from, to)) => {
                let from: usize = from.parse().with_context(|| format!("CPU list {list:?}"))?;
                let to: usize = to.parse().with_context(|| format!("CPU list {list:?}"))?;
                if from > to {
                    bail!("CPU list {list:?}: {from}-{to} runs backwards");
                }
                cpus.extend(from..=to);
            }
            None => cpus.push(part.parse().with_context(|| format!("CPU list {list:?}"))?),
        }
    }
    if cpus.is_empty() {
        bail!("CPU list {list:?} is empty");
    }
    if let Some(cpu) = cpus.iter().find(|c| **c >= libc::CPU_SETSIZE as usize) {
        bail!("CPU {cpu} is beyond what the kernel interface takes");
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus {
        // SAFETY: `cpu` is below CPU_SETSIZE (checked by `parse_list`).
        unsafe { libc::CPU_SET(*cpu, &mut set) };
    }
    set
}

/// Pins thread (or process) `tid` (0: the calling thread) to `cpus`.
fn pin(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let result = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins every thread of this process, and the threads it starts later, to `cpus`.
pub fn pin_this_process(cpus: &[usize]) -> anyhow::Result<()> {
    let tasks = std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")?;
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            pin(tid, cpus).with_context(|| format!("pinning thread {tid} to CPUs {cpus:?}"))?;
        }
    }
    Ok(())
}

/// Makes `command`'s process start on `cpus` (the affinity is inherited by its threads).
pub fn pin_command(command: &mut std::process::Command, cpus: Vec<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only makes one
    // system call (no allocation: the set is built before).
    let set = cpu_set(&cpus);
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_as_taskset_takes_them() {
        assert_eq!(parse_list("0").unwrap(), vec![0]);
        assert_eq!(parse_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_list("3,1,1").unwrap(), vec![1, 3]);
        assert!(parse_list("").is_err());
        assert!(parse_list("2-1").is_err());
        assert!(parse_list("x").is_err());
    }
}
