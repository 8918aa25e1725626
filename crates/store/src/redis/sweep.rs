//! The sweep of the Redis store: ends sessions whose deadline passed and drops tombstones
//! past retention, taking due entries from the global schedules (`P{global}:due`,
//! `P{global}:purge`) in batches and judging each one inside a script on its user's tag.
//!
//! The schedules only say *when to look*: a script ends a session only if its own hash
//! says it is past its deadline, so a stale or missing schedule entry can delay tidying
//! up and counters, never end a live session or bring back an ended one.

use std::collections::BTreeMap;

use sessiond_core::id::parse_tag_hex;
use sessiond_core::{SessionId, Timestamp};

use super::{RedisStore, SWEEP_BATCH, SWEEP_ROUNDS, codec, item};
use crate::{StoreError, SweepReport};

impl RedisStore {
    /// The due members of a global schedule (`due` or `purge`), grouped by user tag. A
    /// member whose tag is not hex is left out (its id cannot parse either).
    async fn due(
        &self,
        zset: String,
        now: Timestamp,
    ) -> Result<(usize, BTreeMap<[u8; 4], Vec<String>>), StoreError> {
        let members: Vec<String> = self
            .conn
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&zset)
                    .arg("-inf")
                    .arg(now.as_millis())
                    .arg("LIMIT")
                    .arg(0)
                    .arg(SWEEP_BATCH),
            )
            .await?;
        let mut by_tag: BTreeMap<[u8; 4], Vec<String>> = BTreeMap::new();
        for m in &members {
            match m
                .get(..8)
                .filter(|_| m.len() >= 32 && m.is_char_boundary(32))
            {
                Some(tag) => {
                    if let Some(tag) = parse_tag_hex(tag) {
                        by_tag.entry(tag).or_default().push(m.clone());
                    }
                }
                None => {
                    // Not ours: drop it so it cannot stall the schedule.
                    self.conn
                        .query::<()>(redis::cmd("ZREM").arg(&zset).arg(m))
                        .await?;
                }
            }
        }
        Ok((members.len(), by_tag))
    }

    pub(super) async fn sweep_sessions(
        &self,
        now: Timestamp,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        for _ in 0..SWEEP_ROUNDS {
            let (n, by_tag) = self.due(self.keys.due(), now).await?;
            for (tag, members) in by_tag {
                let ids: Vec<SessionId> = members.iter().filter_map(|m| m.parse().ok()).collect();
                let Some(first) = ids.first() else { continue };
                let route = self.keys.session(first);
                let items = self
                    .run_tag(&self.scripts.sweep, tag, route, now, |c| {
                        for id in &ids {
                            c.arg(id.to_string());
                        }
                    })
                    .await?;
                report.expired += u64::try_from(codec::int(item(&items, 0)?)?).unwrap_or(0);
                report.rescheduled += u64::try_from(codec::int(item(&items, 1)?)?).unwrap_or(0);
                for id in codec::ids(item(&items, 2)?)? {
                    self.cache.invalidate(&id);
                }
            }
            if n < SWEEP_BATCH as usize {
                break;
            }
        }
        Ok(())
    }

    pub(super) async fn sweep_tombstones(
        &self,
        now: Timestamp,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        for _ in 0..SWEEP_ROUNDS {
            let (n, by_tag) = self.due(self.keys.purge(), now).await?;
            for (tag, members) in by_tag {
                let entries: Vec<(String, SessionId, String)> = members
                    .iter()
                    .filter_map(|m| {
                        let (id, reason) = m.split_once(':')?;
                        Some((m.clone(), id.parse().ok()?, reason.to_owned()))
                    })
                    .collect();
                let Some((_, first, _)) = entries.first() else {
                    continue;
                };
                let route = self.keys.tombstone(first);
                let items = self
                    .run_tag(&self.scripts.purge, tag, route, now, |c| {
                        for (member, id, reason) in &entries {
                            c.arg(member.as_str())
                                .arg(id.to_string())
                                .arg(reason.as_str());
                        }
                    })
                    .await?;
                report.purged += u64::try_from(codec::int(item(&items, 0)?)?).unwrap_or(0);
            }
            if n < SWEEP_BATCH as usize {
                break;
            }
        }
        Ok(())
    }
}
