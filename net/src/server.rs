//! Starts a member: opens the WAL, starts the raft core on its own pinned thread and one
//! pinned glommio executor per shard, wires the bounded channels between them, and serves
//! clients on every shard core (`SO_REUSEPORT`: the kernel spreads connections).
//!
//! Start-up order: WAL (tells which checkpoint to load) → shards load their page files up
//! to it and stream their live keys to the raft core → the raft core rebuilds the
//! sequencer, replays the WAL after the checkpoint and campaigns → shards listen.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rivet_api::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use rivet_engine::core::ShardCore;
use rivet_engine::messages::RaftCommand;
use rivet_engine::page::PageOptions;
use rivet_engine::raft::{
    force_new, open_wal, MonotonicClock, RaftCore, RaftCoreConfig, RaftCoreLinks,
};
use rivet_engine::shard::Shard;
use rivet_engine::shared::Shared;
use rivet_engine::{layout, limits};
use rivet_wal::Wal;

use crate::config::{bootstrap, listen_addresses, url_list, Flags};
use crate::glommio_hyper::{GlommioExecutor, GlommioIo};
use crate::http::ClientService;
use crate::peer::{PeerConfig, PeerTransport};
use crate::peer_link::{peer_address, QuicLink};
use crate::services::{ClusterService, CoreHandle, KvService, MaintenanceService};
use crate::tls::{ClientIdentity, ServerTls};
use rivet_engine::auth::{AuthState, PasswordPool, TokenConfig};

/// etcd's default quota when `--quota-backend-bytes` is 0: 2 GiB.
const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// How long a joining member looks for a member that knows it.
const DISCOVERY_WAIT: Duration = Duration::from_secs(30);
/// etcd's request timeout with default timings: 5 s plus two election timeouts.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// gRPC framing on top of `--max-request-bytes` that the decoder must still accept, so
/// that an oversized request reaches the check that answers etcd's "request is too large".
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts) so that only
/// [`wait_for_stop_signal`] sees them.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a zero-initialized sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_stop_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` was initialized by `block_stop_signals`.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

/// What the client listeners take from the flags; one copy shared by every shard core.
#[derive(Debug)]
pub struct ClientSettings {
    pub max_request_bytes: usize,
    /// `--max-concurrent-streams`: HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-interval` and `--grpc-keepalive-timeout`: server pings, as
    /// grpc-go's `keepalive.ServerParameters` (off when either is 0, as in etcd).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// `--grpc-keepalive-min-time`: the client's shortest ping interval.
    pub keepalive_min_time: Duration,
    pub http: Arc<crate::access::HttpSettings>,
    /// `--enable-grpc-gateway` and the gateway's body limit.
    pub gateway: crate::gateway::GatewayConfig,
    /// `--client-cert-auth`: a client certificate's Common Name names the user.
    pub client_cert_auth: bool,
}

impl ClientSettings {
    pub fn from_flags(flags: &Flags) -> ClientSettings {
        ClientSettings {
            max_request_bytes: flags.max_request_bytes,
            max_concurrent_streams: flags.max_concurrent_streams,
            keepalive_interval: flags.grpc_keepalive_interval,
            keepalive_timeout: flags.grpc_keepalive_timeout,
            keepalive_min_time: flags.grpc_keepalive_min_time,
            client_cert_auth: flags.client_cert_auth,
            gateway: crate::gateway::GatewayConfig {
                enabled: flags.enable_grpc_gateway,
                ..crate::gateway::GatewayConfig::new(flags.max_request_bytes)
            },
            http: Arc::new(crate::access::HttpSettings {
                cors: flags.cors.clone(),
                host_whitelist: flags.host_whitelist.clone(),
                enable_pprof: flags.enable_pprof,
            }),
        }
    }
}

/// When `data_dir` is a data dir etcd 3.4 wrote: rivet's own dir inside it (imported
/// from etcd's backend and WAL the first time, crash-safe) and the member and cluster
/// IDs etcd's WAL gave this member. `None` for any other data dir.
fn open_etcd_data_dir(
    flags: &Flags,
    data_dir: &std::path::Path,
    etcd_wal_dir: &std::path::Path,
) -> anyhow::Result<Option<(PathBuf, (u64, u64))>> {
    use rivet_engine::etcd_datadir;
    if !etcd_datadir::is_etcd_data_dir(data_dir) {
        return Ok(None);
    }
    let rivet_dir = etcd_datadir::rivet_dir(data_dir);
    if let Some(ids) = etcd_datadir::imported_identity(&rivet_dir) {
        tracing::info!(
            rivet_dir = %rivet_dir.display(),
            "using rivet's files imported from etcd's data dir (etcd's own files are unchanged)"
        );
        return Ok(Some((rivet_dir, ids)));
    }
    if rivet_dir.exists() {
        return Err(anyhow!(
            "{} exists but holds no finished import from etcd (no {}); move it away to import again",
            rivet_dir.display(),
            etcd_datadir::IDENTITY_FILE
        ));
    }
    let cpus = core_affinity::get_core_ids().map_or(1, |c| c.len().max(1));
    let shards = flags
        .shards_given()
        .unwrap_or(cpus.saturating_sub(1))
        .max(1);
    tracing::info!(
        data_dir = %data_dir.display(),
        etcd_wal_dir = %etcd_wal_dir.display(),
        rivet_dir = %rivet_dir.display(),
        "found an etcd data dir: importing etcd's backend and WAL into rivet's files; \
         etcd's files stay as they are (start etcd on this data dir to go back)"
    );
    let started = std::time::Instant::now();
    let summary = etcd_datadir::import(
        data_dir,
        etcd_wal_dir,
        shards,
        PageOptions {
            segment_bytes: limits::page_segment_bytes(),
        },
    )
    .map_err(|e| anyhow!("importing etcd's data dir {}: {e}", data_dir.display()))?;
    if let Some(torn) = &summary.torn_tail {
        tracing::warn!("etcd's WAL ends with a torn record, left out (etcd would cut it): {torn}");
    }
    tracing::info!(
        member = format_args!("{:x}", summary.member_id),
        cluster = format_args!("{:x}", summary.cluster_id),
        consistent_index = summary.consistent_index,
        revision = summary.revision,
        key_versions = summary.versions,
        wal_entries = summary.entries,
        committed_wal_entries = summary.committed,
        skipped_v2_entries = summary.skipped,
        took = ?started.elapsed(),
        "imported etcd's data dir into {}; etcd's files in {} are unchanged",
        rivet_dir.display(),
        data_dir.join("member").display()
    );
    Ok(Some((rivet_dir, (summary.member_id, summary.cluster_id))))
}

pub fn run(mut flags: Flags) -> anyhow::Result<()> {
    if !flags.discovery_srv.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let parts = runtime
            .block_on(crate::discovery::initial_cluster_from_srv(
                &flags.discovery_srv,
                &flags.discovery_srv_name,
                &flags.name,
                &flags.initial_advertise_peer_urls,
            ))
            .map_err(|e| anyhow!(e))?;
        tracing::info!(
            domain = %flags.discovery_srv,
            initial_cluster = %parts.join(","),
            "resolved the initial cluster from DNS SRV records"
        );
        flags.initial_cluster = parts.join(",");
    }
    // The mode was checked with the other flags (`Flags::validate`); etcd parses the
    // retention when it starts, and a bad one stops it with this message.
    let auto_compaction = rivet_engine::raft::compactor::parse_auto_compaction(
        &flags.auto_compaction_mode,
        &flags.auto_compaction_retention,
    )
    .map_err(|e| anyhow!(e))?;
    let data_dir = PathBuf::from(flags.data_dir_or_default());
    let wal_dir = if flags.wal_dir.is_empty() {
        layout::default_wal_dir(&data_dir)
    } else {
        PathBuf::from(&flags.wal_dir)
    };
    // A data dir etcd wrote: rivet keeps its own files in `<data-dir>/rivet`, imported
    // from etcd's the first time; etcd's files are only read.
    let imported = open_etcd_data_dir(&flags, &data_dir, &wal_dir)?;
    let (store_dir, wal_dir) = match &imported {
        Some((dir, _)) => (dir.clone(), layout::default_wal_dir(dir)),
        None => (data_dir.clone(), wal_dir),
    };
    // `--discovery`: as in etcd, the discovery URL is the cluster token; a fresh member
    // registers with the discovery service and learns the initial cluster from it, a
    // restarted one has its cluster in its WAL.
    let restarted_from_discovery = !flags.discovery.is_empty() && Wal::exists(&wal_dir);
    if !flags.discovery.is_empty() {
        flags.initial_cluster_token = flags.discovery.clone();
        let advertised = url_list(&flags.initial_advertise_peer_urls);
        let own = advertised
            .iter()
            .map(|u| format!("{}={u}", flags.name))
            .collect::<Vec<_>>()
            .join(",");
        if restarted_from_discovery {
            flags.initial_cluster = own;
        } else {
            let member_id =
                rivet_engine::identity::member_id(&advertised, &flags.initial_cluster_token);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let joined = runtime.block_on(crate::discovery::v2::join_cluster(
                &flags.discovery,
                &flags.discovery_proxy,
                member_id,
                &own,
            ));
            match joined {
                Ok(cluster) => {
                    tracing::info!(initial_cluster = %cluster, "discovery: found the cluster");
                    flags.initial_cluster = cluster;
                }
                Err(e)
                    if e == crate::discovery::v2::ERR_FULL_CLUSTER
                        && flags.discovery_fallback == "proxy" =>
                {
                    return Err(anyhow!(
                        "{e}: --discovery-fallback 'proxy' would make this member a v2 proxy, \
                         which rivet does not have (it serves the v3 API only); add the \
                         member with `etcdctl member add` and start it with \
                         --initial-cluster-state existing"
                    ));
                }
                Err(e) => return Err(anyhow!(e)),
            }
        }
    }
    let snap_dir = layout::snap_dir(&store_dir);
    std::fs::create_dir_all(&snap_dir)
        .with_context(|| format!("creating {}", snap_dir.display()))?;
    let addresses = listen_addresses(&flags.listen_client_urls)?;
    if addresses.is_empty() {
        return Err(anyhow!("--listen-client-urls is empty"));
    }
    let metrics_addresses = listen_addresses(&flags.listen_metrics_urls)?;
    let client_tls =
        crate::listeners::client_tls(&flags, &data_dir, &addresses, &metrics_addresses)?;
    let peer_tls = crate::listeners::peer_tls(&flags, &data_dir)?;
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let cpu_ids: Vec<usize> = if cpus.is_empty() {
        vec![0]
    } else {
        cpus.iter().map(|c| c.id).collect()
    };
    let default_shards = flags
        .shards_given()
        .unwrap_or(cpu_ids.len().saturating_sub(1))
        .max(1);

    let cluster_plan = bootstrap(&flags).map_err(|e| anyhow!(e))?;
    // An imported etcd member keeps the IDs etcd's WAL gave it (an added member's ID
    // came with a time etcd mixed in, which the flags cannot give back).
    let (member, cluster) = match &imported {
        Some((_, ids)) => *ids,
        None => (cluster_plan.member_id, cluster_plan.cluster_id),
    };
    let join_existing = flags.initial_cluster_state == "existing";
    let peer_listen = peer_address(&url_list(&flags.listen_peer_urls)).ok_or_else(|| {
        anyhow!(
            "--listen-peer-urls {:?} has no usable URL",
            flags.listen_peer_urls.join(",")
        )
    })?;
    let initial_peers: Vec<(u64, std::net::SocketAddr)> = cluster_plan
        .members
        .iter()
        .filter(|(id, _, _)| *id != member)
        .filter_map(|(id, _, urls)| peer_address(urls).map(|a| (*id, a)))
        // An imported member's peers are those of etcd's member table (the raft core
        // sets them from its checkpoint), not the flags'.
        .filter(|_| imported.is_none())
        .collect();
    // A member joining an existing cluster learns the cluster ID from its peers the first
    // time; after that its WAL holds it (0 here: take the WAL's).
    let cluster = if join_existing {
        if Wal::exists(&wal_dir) {
            0
        } else {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(PeerTransport::discover_cluster_id(
                member,
                peer_listen,
                initial_peers.clone(),
                peer_tls.clone(),
                DISCOVERY_WAIT,
            ))?
        }
    } else if restarted_from_discovery {
        // Its WAL holds the cluster ID the discovered cluster had.
        0
    } else {
        cluster
    };
    let initial_members = if join_existing {
        Vec::new()
    } else {
        cluster_plan
            .members
            .iter()
            .map(|(id, name, urls)| rivet_api::rivetpb::Member {
                id: *id,
                name: name.clone(),
                peer_urls: urls.clone(),
                client_urls: Vec::new(),
                is_learner: false,
            })
            .collect()
    };
    let page_options = PageOptions {
        segment_bytes: limits::page_segment_bytes(),
    };
    let mut raft_config = RaftCoreConfig {
        wal_dir,
        member_id: member,
        cluster_id: cluster,
        shard_count: default_shards,
        snapshot_count: flags.snapshot_count.max(1),
        max_request_bytes: flags.max_request_bytes,
        // etcd: 0 means the default quota; a negative quota is as good as none.
        quota_backend_bytes: match flags.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            bytes => u64::try_from(bytes).unwrap_or(u64::MAX),
        },
        heartbeat_interval: Duration::from_millis(flags.heartbeat_interval.max(1)),
        election_ticks: (flags.election_timeout / flags.heartbeat_interval.max(1)).max(2) as usize,
        name: flags.name.clone(),
        client_urls: url_list(&flags.advertise_client_urls),
        initial_members,
        strict_reconfig_check: flags.strict_reconfig_check,
        cluster_token: flags.initial_cluster_token.clone(),
        snap_dir: snap_dir.clone(),
        pre_vote: flags.pre_vote,
        initial_election_tick_advance: flags.initial_election_tick_advance,
        warning_apply_duration: flags.experimental_warning_apply_duration,
        simple_token_ttl: rivet_engine::core::auth::simple_token_ttl(flags.auth_token_ttl),
        tuning: rivet_engine::raft::RaftCoreTuning {
            page_options,
            ..Default::default()
        },
    };
    // etcd's NewTokenProvider and NewAuthStore: a bad --auth-token stops the start; a
    // --bcrypt-cost out of range falls back to the default with a warning.
    let token_config = TokenConfig::parse(&flags.auth_token, flags.auth_token_ttl)
        .map_err(|e| anyhow!("failed to create token provider: {e}"))?;
    let (bcrypt_cost, replaced) = rivet_engine::auth::password::effective_cost(flags.bcrypt_cost);
    if replaced {
        tracing::warn!(
            "use default bcrypt cost {bcrypt_cost} instead of the invalid given cost {}",
            flags.bcrypt_cost
        );
    }

    let mut recovered = open_wal(&mut raft_config, flags.shards_given())?;
    if flags.force_new_cluster && force_new::has_state(&recovered) {
        let voters: Vec<u64> = raft_config.initial_members.iter().map(|m| m.id).collect();
        let forced = force_new::force_new_cluster(&mut recovered, member, &voters)?;
        tracing::warn!(
            "forcing restart of member {member:x} in cluster {:x} at commit index {}",
            raft_config.cluster_id,
            forced.commit
        );
        for id in &forced.removed {
            tracing::info!("--force-new-cluster: removing member {id:x} from the cluster");
        }
    }
    let shard_count = raft_config.shard_count;
    let cluster = raft_config.cluster_id;
    rivet_engine::metrics::QUOTA_BACKEND_BYTES.set(raft_config.quota_backend_bytes);
    let shared = Arc::new(Shared::new(member, cluster, shard_count));
    let checkpoint_index = recovered.checkpoint.as_ref().map_or(0, |c| c.applied_index);
    // The serving cores listen once every shard applied the log it had at start (see
    // `replay_before_serving`): checks then see the replayed auth store.
    let replay = (recovered.committed_at_start(), recovered.last_index());
    // The auth store of the checkpoint, for the serving cores until the raft core
    // replays the log after it (the raft core decodes the same record, and refuses to
    // start on a damaged one).
    let initial_auth = Arc::new(
        recovered
            .checkpoint
            .as_ref()
            .and_then(|c| c.auth.clone())
            .and_then(|auth| AuthState::from_proto(auth).ok())
            .unwrap_or_default(),
    );
    // A snapshot install interrupted by a crash is finished (or discarded) first.
    rivet_engine::snapshot::finish_install(&snap_dir, checkpoint_index, shard_count)
        .with_context(|| format!("finishing a staged snapshot in {}", snap_dir.display()))?;
    tracing::info!(
        name = %flags.name,
        data_dir = %data_dir.display(),
        member = format_args!("{member:x}"),
        cluster = format_args!("{cluster:x}"),
        shards = shard_count,
        checkpoint_index,
        "starting rivet"
    );

    let signals = block_stop_signals();
    // After the stop signals are blocked: threads inherit the mask, and a SIGTERM
    // delivered to a bcrypt thread would kill the process without the graceful stop.
    let password_pool = PasswordPool::start(
        limits::PASSWORD_HASH_THREADS,
        limits::PASSWORD_HASH_QUEUE,
        bcrypt_cost,
    )?;
    let (command_tx, command_rx) = async_channel::bounded(limits::RAFT_COMMAND_QUEUE);
    let (ack_tx, ack_rx) = async_channel::bounded(limits::SHARD_ACK_QUEUE);
    let (restore_tx, restore_rx) = async_channel::bounded(limits::RESTORE_QUEUE_CHUNKS);
    let (apply_txs, apply_rxs): (Vec<_>, Vec<_>) = (0..shard_count)
        .map(|_| async_channel::bounded(limits::APPLY_QUEUE_BATCHES))
        .unzip();
    let (peer_txs, peer_rxs): (Vec<_>, Vec<_>) = (0..shard_count)
        .map(|_| async_channel::bounded(limits::SHARD_REQUEST_QUEUE))
        .unzip();
    let (fatal_tx, fatal_rx) = std::sync::mpsc::channel::<String>();
    // Peers' HashKV requests (corruption checks): the transport hands them to shard 0.
    let (hash_tx, hash_rx) = async_channel::bounded(limits::PEER_HASH_KV_QUEUE);
    // Closed when the member may serve clients: at once, or after the initial
    // corruption check passed (`--experimental-initial-corrupt-check`).
    let (serve_gate_tx, serve_gate_rx) = async_channel::bounded::<()>(1);
    let mut serve_gate_tx = Some(serve_gate_tx);
    let initial_corrupt_check = flags.experimental_initial_corrupt_check;
    let corrupt_check_time = flags.experimental_corrupt_check_time;

    let raft_cpu = cpu_ids[0];
    let pin_cores = flags.pin_cores;
    let raft_shard_requests = peer_txs.clone();
    let raft_shared = Arc::clone(&shared);
    let raft_fatal = fatal_tx.clone();
    let raft_thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            if pin_cores {
                core_affinity::set_for_current(core_affinity::CoreId { id: raft_cpu });
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = raft_fatal.send(format!("raft core runtime: {e}"));
                    return;
                }
            };
            runtime.block_on(async move {
                let (peer_tx, peer_rx) = tokio::sync::mpsc::channel(limits::PEER_EVENT_QUEUE);
                let mut peer_config = PeerConfig::new(member, cluster, peer_listen, initial_peers);
                peer_config.tls = peer_tls;
                let link = match PeerTransport::start(peer_config).await {
                    Ok((transport, incoming)) => {
                        QuicLink::new(transport, incoming, peer_tx, hash_tx)
                    }
                    Err(e) => {
                        let _ = raft_fatal.send(format!("peer transport on {peer_listen}: {e}"));
                        return;
                    }
                };
                let links = RaftCoreLinks {
                    apply_senders: apply_txs,
                    restore: restore_rx,
                    peers: Box::new(link),
                    shard_requests: raft_shard_requests,
                    forward: Box::new(crate::forward::GrpcForward),
                    clock: Box::new(MonotonicClock),
                };
                match RaftCore::start(raft_config, recovered, raft_shared, links).await {
                    Ok(mut core) => {
                        core.set_auto_compaction(auto_compaction);
                        let reason = core.run(command_rx, ack_rx, peer_rx).await;
                        // After a stop signal the main thread is already done waiting;
                        // otherwise the core stopped by itself (a failed log write, a
                        // damaged log entry, this member removed): the member exits
                        // non-zero with the reason.
                        let reason = reason.unwrap_or_else(|| "the raft core stopped".into());
                        let _ = raft_fatal.send(format!("stopped: {reason}"));
                    }
                    Err(e) => {
                        let _ = raft_fatal.send(format!("raft core: {e}"));
                    }
                }
            });
        })?;

    let client_settings = Arc::new(ClientSettings::from_flags(&flags));
    rivet_engine::metrics::set_extensive(flags.metrics == "extensive");
    if !flags.experimental_watch_progress_notify_interval.is_zero() {
        crate::watch::set_progress_report_interval(
            flags.experimental_watch_progress_notify_interval,
        );
    }
    let mut executors = Vec::with_capacity(shard_count);
    for (id, (apply_rx, peer_rx)) in apply_rxs.into_iter().zip(peer_rxs).enumerate() {
        let cpu = cpu_ids[(1 + id) % cpu_ids.len()];
        let shard_dir = layout::shard_dir(&snap_dir, id);
        let shared = Arc::clone(&shared);
        let raft = command_tx.clone();
        let peers = peer_txs.clone();
        let acks = ack_tx.clone();
        let restore = restore_tx.clone();
        let addresses = addresses.clone();
        let metrics_addresses = metrics_addresses.clone();
        let client_tls = client_tls.clone();
        let fatal = fatal_tx.clone();
        let max_txn_ops = flags.max_txn_ops;
        let client_settings = Arc::clone(&client_settings);
        let initial_auth = Arc::clone(&initial_auth);
        let token_config = token_config.clone();
        let password_pool = password_pool.clone();
        let serve_gate = serve_gate_rx.clone();
        // Shard 0 answers the peers' HashKV requests and runs the corruption checks.
        let checks = (id == 0).then(|| (hash_rx.clone(), serve_gate_tx.take()));
        let placement = if flags.pin_cores {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let executor = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(limits::GLOMMIO_IO_MEMORY_BYTES)
            .spawn(move || async move {
                let shard = match Shard::open(&shard_dir, id, checkpoint_index, page_options) {
                    Ok(shard) => shard,
                    Err(e) => {
                        let _ = fatal.send(e.to_string());
                        return;
                    }
                };
                let core = Rc::new(ShardCore::new(id, shard, raft, peers, shared, max_txn_ops));
                core.configure_auth(initial_auth, token_config, password_pool);
                if let Err(e) = core.send_restore(&restore).await {
                    let _ = fatal.send(e.to_string());
                    return;
                }
                drop(restore);
                let apply = glommio::spawn_local(Rc::clone(&core).run_apply(
                    apply_rx,
                    acks,
                    crate::page_sync::page_sync,
                ));
                glommio::spawn_local(Rc::clone(&core).serve_peers(peer_rx)).detach();
                glommio::spawn_local(Rc::clone(&core).run_watermark()).detach();
                glommio::spawn_local(Rc::clone(&core).run_damage_alarm()).detach();
                if let Some((hash_requests, gate)) = checks {
                    glommio::spawn_local(crate::peer_link::serve_peer_hash_kv(
                        Rc::clone(&core),
                        hash_requests,
                    ))
                    .detach();
                    if initial_corrupt_check {
                        if let Err(reason) = core.initial_corrupt_check().await {
                            // etcd 3.4 ends its start with this line for any error
                            // StartEtcd returns, this one included.
                            tracing::error!(error = %reason, "discovery failed");
                            let _ = fatal.send(reason);
                            return;
                        }
                    }
                    drop(gate);
                    if !corrupt_check_time.is_zero() {
                        glommio::spawn_local(crate::corrupt::monitor_kv_hash(
                            Rc::clone(&core),
                            corrupt_check_time,
                        ))
                        .detach();
                    }
                }
                // No client is served before the initial corruption check passed.
                let _ = serve_gate.recv().await;
                // Garbage collection of the page file runs in a queue of its own with
                // fewer shares than serving: it never holds the core for more than a step.
                let gc_queue = glommio::executor().create_task_queue(
                    glommio::Shares::Static(limits::GC_TASK_QUEUE_SHARES),
                    glommio::Latency::NotImportant,
                    "gc",
                );
                let gc = Rc::clone(&core)
                    .run_gc(|| async { glommio::executor().yield_task_queue_now().await });
                match glommio::spawn_local_into(gc, gc_queue) {
                    Ok(task) => task.detach(),
                    Err(e) => {
                        let _ = fatal.send(format!("cannot start garbage collection: {e}"));
                        return;
                    }
                };
                replay_before_serving(&core, checkpoint_index, replay).await;
                let core_tls = match client_tls.build() {
                    Ok(core_tls) => core_tls,
                    Err(e) => {
                        let _ = fatal.send(format!("client TLS: {e}"));
                        return;
                    }
                };
                for listen in addresses {
                    let address = listen.address;
                    match crate::listener::bind_client(address) {
                        Ok(listener) => {
                            if id == 0 {
                                crate::listeners::log_serving(&listen);
                            }
                            let tls = crate::listeners::tls_for(&listen, &core_tls.client);
                            glommio::spawn_local(accept_loop(
                                listener,
                                Rc::clone(&core),
                                Arc::clone(&client_settings),
                                tls,
                            ))
                            .detach();
                        }
                        Err(e) => {
                            let _ = fatal.send(format!("cannot listen on {address}: {e}"));
                            return;
                        }
                    }
                }
                for listen in metrics_addresses {
                    let address = listen.address;
                    match crate::listener::bind_client(address) {
                        Ok(listener) => {
                            if id == 0 {
                                tracing::info!("listening for metrics on {}", listen.url);
                            }
                            let tls = crate::listeners::tls_for(&listen, &core_tls.metrics);
                            glommio::spawn_local(crate::listeners::metrics_accept_loop(
                                listener,
                                Rc::clone(&core),
                                tls,
                            ))
                            .detach();
                        }
                        Err(e) => {
                            let _ = fatal.send(format!("cannot listen on {address}: {e}"));
                            return;
                        }
                    }
                }
                // Runs until the raft core closes the apply stream at shutdown.
                apply.await;
            })
            .map_err(|e| anyhow!("cannot start shard core {id} on cpu {cpu}: {e}"))?;
        executors.push(executor);
    }
    drop(restore_tx);
    drop(ack_tx);
    drop(fatal_tx);
    drop(serve_gate_tx);

    // Wait for a stop signal, or for a core to fail.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<Result<i32, String>>();
    let signal_stop = stop_tx.clone();
    std::thread::spawn(move || {
        let signal = wait_for_stop_signal(&signals);
        let _ = signal_stop.send(Ok(signal));
    });
    std::thread::spawn(move || {
        if let Ok(reason) = fatal_rx.recv() {
            let _ = stop_tx.send(Err(reason));
        }
    });
    match stop_rx.recv() {
        Ok(Ok(signal)) => {
            tracing::info!(signal, "received a stop signal; checkpointing and stopping");
            let (done_tx, done_rx) = futures::channel::oneshot::channel();
            if command_tx
                .send_blocking(RaftCommand::Shutdown { done: done_tx })
                .is_ok()
            {
                let _ = futures::executor::block_on(done_rx);
            }
            let _ = raft_thread.join();
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Err(reason)) => Err(anyhow!(reason)),
        Err(_) => Err(anyhow!("all cores stopped")),
    }
}

async fn accept_loop(
    listener: TcpListener,
    core: Rc<ShardCore>,
    settings: Arc<ClientSettings>,
    tls: Option<Rc<ServerTls>>,
) {
    let handle = CoreHandle::new(Rc::clone(&core), REQUEST_TIMEOUT)
        .with_client_cert_auth(settings.client_cert_auth);
    let decode_limit = settings.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let routes = tonic::service::Routes::new(
        KvServer::new(KvService(handle.clone()))
            .max_decoding_message_size(decode_limit)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        ClusterServer::new(ClusterService(handle.clone()))
            .max_decoding_message_size(decode_limit)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        rivet_api::etcdserverpb::auth_server::AuthServer::new(crate::auth::AuthService(
            handle.clone(),
        ))
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LeaseServer::new(crate::lease::LeaseService(handle.clone()))
            .max_decoding_message_size(decode_limit)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        rivet_api::v3lockpb::lock_server::LockServer::new(crate::lock::LockService(handle.clone()))
            .max_decoding_message_size(decode_limit)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        rivet_api::v3electionpb::election_server::ElectionServer::new(
            crate::lock::ElectionService(handle.clone()),
        )
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        WatchServer::new(crate::watch::WatchService(handle.clone()))
            .max_decoding_message_size(decode_limit)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        MaintenanceServer::new(MaintenanceService(handle.clone()))
            .max_decoding_message_size(decode_limit)
            .max_encoding_message_size(usize::MAX),
    );
    let h2 = Rc::new(crate::h2::Server {
        kv: KvService(handle.clone()),
        max_concurrent_streams: settings.max_concurrent_streams,
        keepalive_interval: settings.keepalive_interval,
        keepalive_timeout: settings.keepalive_timeout,
    });
    let service = ClientService {
        grpc: routes,
        core: send_wrapper::SendWrapper::new(core),
        gateway: settings.gateway,
        http: Arc::clone(&settings.http),
        secure: false,
    };
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let queue = glommio::executor().current_task_queue();
        let tls = tls.clone();
        let h2 = Rc::clone(&h2);
        let connection = async move {
            match tls {
                None => serve_connection(stream, service, None, h2).await,
                Some(tls) => {
                    let Some((stream, identity)) = crate::listeners::handshake(&tls, stream).await
                    else {
                        return;
                    };
                    let service = ClientService {
                        secure: true,
                        ..service
                    };
                    serve_connection(stream, service, identity, h2).await
                }
            }
        };
        match glommio::spawn_local_into(connection, queue) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!("cannot spawn a connection: {e}"),
        };
    }
}

/// Serves one client connection (plain or TLS): HTTP/2 (it opens with the client
/// preface: gRPC with prior knowledge, or after ALPN "h2") with rivet's own server
/// (`crate::h2`), anything else with hyper (HTTP/1.1). The identity of a verified
/// client certificate goes into every request's extensions.
async fn serve_connection<S>(
    mut socket: S,
    service: ClientService,
    identity: Option<ClientIdentity>,
    h2: Rc<crate::h2::Server>,
) where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    use futures_lite::AsyncReadExt;
    use tower::ServiceExt;
    let preface = crate::h2::proto::PREFACE;
    let mut first = [0u8; 24];
    let mut seen = 0;
    while seen < preface.len() {
        match socket.read(&mut first[seen..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen += n,
        }
        if first[..seen] != preface[..seen] {
            break;
        }
    }
    if first[..seen] == *preface {
        crate::h2::serve(socket, h2, service, identity).await;
        return;
    }
    let io = GlommioIo::with_prefix(socket, &first[..seen]);
    let service = service.map_request(move |mut request: http::Request<hyper::body::Incoming>| {
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
        request
    });
    let service = TowerToHyperService::new(service);
    let builder = auto::Builder::new(GlommioExecutor);
    if let Err(e) = builder.serve_connection(io, service).await {
        tracing::debug!("client connection ended: {e}");
    }
}

/// etcd serves clients only after its start is applied (`ReadyNotify`): before that, a
/// token, a permission or a read would be checked against the checkpoint's auth store and
/// data, though the log after it may have revoked the permission. A shard core waits
/// until every shard applied the entries known committed at start (`committed`: they
/// apply without any peer), then until either all of the log it had (`last`: a single
/// member commits it all at once) or everything the cluster has committed (a ReadIndex:
/// the entries of the tail that were committed, when the rest never will be) is applied,
/// at most [`limits::START_REPLAY_WAIT`].
async fn replay_before_serving(core: &ShardCore, checkpoint: u64, (committed, last): (u64, u64)) {
    use futures::future::{select, Either};
    if last <= checkpoint {
        return;
    }
    core.wait_applied(committed).await;
    let tail = async {
        let applied_all = core.wait_applied(last);
        let confirmed = async {
            while core.read_index().await.is_err() {
                glommio::timer::sleep(limits::READ_INDEX_RETRY).await;
            }
        };
        select(std::pin::pin!(applied_all), std::pin::pin!(confirmed)).await;
    };
    let deadline = glommio::timer::sleep(limits::START_REPLAY_WAIT);
    match select(std::pin::pin!(tail), std::pin::pin!(deadline)).await {
        Either::Left(_) => {
            tracing::debug!("applied the log after the checkpoint ({checkpoint}..={last})")
        }
        Either::Right(_) => tracing::warn!(
            "serving clients before the log after the checkpoint is known committed \
             (applied {} of {last}): no leader within {:?}",
            core.shared.applied_index(),
            limits::START_REPLAY_WAIT
        ),
    }
}
