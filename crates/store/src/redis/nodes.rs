//! Node heartbeats: each node refreshes a key with a TTL under `P{global}:node:<id>` and
//! lists itself in `P{global}:nodes`; counting forgets the nodes whose key expired. A node
//! that stops without closing is counted until its heartbeat's TTL runs out.

use std::time::Duration;

use redis::Script;

use super::conn::Conn;
use super::keys::Keys;
use super::scripts::{Call, Scripts};
use super::{codec, ms};
use crate::StoreError;

/// How often a node refreshes its heartbeat, and how long one counts.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// Refreshes this node's heartbeat until aborted.
pub(super) async fn heartbeat(conn: Conn, keys: Keys, node: String) {
    let scripts = Scripts::new();
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = nodes(&conn, &scripts.nodes, &keys, &node).await {
            tracing::debug!(error = %e, "redis: heartbeat failed");
        }
    }
}

/// Refreshes `node`'s heartbeat (if not empty) and counts the live nodes.
pub(super) async fn nodes(
    conn: &Conn,
    script: &Script,
    keys: &Keys,
    node: &str,
) -> Result<u64, StoreError> {
    let mut call = Call::plain(script, &[keys.nodes()]);
    call.arg(keys.node_prefix())
        .arg(node)
        .arg(ms(HEARTBEAT_TTL));
    let n = codec::int(&conn.eval(&call).await?)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
