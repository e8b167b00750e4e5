//! `--experimental-corrupt-check-time`: etcd's `monitorKVHash`. Every interval, the
//! member that leads runs the check (`ShardCore::check_hash_kv`, in
//! `engine/src/core/corrupt_check.rs`); the others only wait.

use std::rc::Rc;
use std::time::Duration;

use rivet_engine::core::ShardCore;

/// Runs on shard 0 for the life of the member.
pub async fn monitor_kv_hash(core: Rc<ShardCore>, interval: Duration) {
    tracing::info!(
        local_member_id = %format_args!("{:x}", core.shared.member_id),
        interval = ?interval,
        "enabled corruption checking"
    );
    loop {
        glommio::timer::sleep(interval).await;
        if !core.is_leader() {
            continue;
        }
        if let Err(error) = core.check_hash_kv().await {
            tracing::warn!(%error, "failed to check hash KV");
        }
    }
}
