//! A DNS server on loopback for tests: answers SRV and A questions from a fixed table over
//! UDP, and NXDOMAIN for every other name, so that no test sends a DNS query anywhere
//! else. Members find it through `RIVET_TEST_DNS_SERVER`. Stops when dropped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Record {
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    A(Ipv4Addr),
}

pub struct DnsServer {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const TYPE_A: u16 = 1;
const TYPE_SRV: u16 = 33;

impl DnsServer {
    /// Serves `records` (names without the trailing dot, any case).
    pub fn start(records: Vec<(String, Record)>) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a DNS port");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let address = socket.local_addr().expect("address");
        let mut table: HashMap<String, Vec<Record>> = HashMap::new();
        for (name, record) in records {
            table.entry(name.to_lowercase()).or_default().push(record);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                if let Some(answer) = answer(&buffer[..n], &table) {
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        DnsServer {
            address,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The question's name (lowercase, no trailing dot), its type, and where it ends.
fn question(query: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let length = *query.get(at)? as usize;
        at += 1;
        if length == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + length)?).to_lowercase());
        at += length;
    }
    let kind = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    Some((labels.join("."), kind, at + 4))
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn answer(query: &[u8], table: &HashMap<String, Vec<Record>>) -> Option<Vec<u8>> {
    let (name, kind, end) = question(query)?;
    let matching: Vec<&Record> = table
        .get(&name)
        .map(|records| {
            records
                .iter()
                .filter(|r| match r {
                    Record::Srv { .. } => kind == TYPE_SRV,
                    Record::A(_) => kind == TYPE_A,
                })
                .collect()
        })
        .unwrap_or_default();
    let known = table.contains_key(&name);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]);
    // A response, recursion desired and available; NXDOMAIN for unknown names.
    out.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }]);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(matching.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..end]);
    for record in matching {
        // The name: a pointer to the question's.
        out.extend_from_slice(&[0xC0, 12]);
        let mut data = Vec::new();
        let kind = match record {
            Record::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                data.extend_from_slice(&priority.to_be_bytes());
                data.extend_from_slice(&weight.to_be_bytes());
                data.extend_from_slice(&port.to_be_bytes());
                encode_name(&mut data, target);
                TYPE_SRV
            }
            Record::A(ip) => {
                data.extend_from_slice(&ip.octets());
                TYPE_A
            }
        };
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&60u32.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}
