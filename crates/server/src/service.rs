//! What each API operation does, between the HTTP layer and the store.
//!
//! [`Service`] holds the store, the token keys, the policies and the clock. Handlers parse
//! requests and call one method here; each method reads the clock once (time is an input
//! to everything below) and returns wire types or an [`ApiError`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sessiond_core::id::ID_RANDOM_LEN;
use sessiond_core::input::{apply_attributes, check_name, check_user_agent};
use sessiond_core::session::NewSession;
use sessiond_core::token::SECRET_LEN;
use sessiond_core::{
    Clock, EndReason, Policy, Session, SessionId, Timestamp, TokenKeys, Tombstone, Verifier,
};
use sessiond_proto::v1;
use sessiond_store::{AttributeChange, Checked, Created, Ended, Lookup, SessionStore, Updated};

use crate::error::ApiError;

/// The name of the `[session]` policy.
pub const DEFAULT_POLICY: &str = "default";
/// Page size of admin listings when none is asked for, and the most that may be.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// Shared by every request.
#[derive(Clone, Debug)]
pub struct Service {
    pub store: Arc<dyn SessionStore>,
    pub keys: TokenKeys,
    pub default_policy: Policy,
    pub policies: BTreeMap<String, Policy>,
    pub ended_retention: Duration,
    pub clock: Arc<dyn Clock>,
}

/// Session → wire view (never with the token or its verifier), for creates, updates and
/// admin answers. Validate's answer is written from the shared record by
/// [`crate::json::session_envelope`] instead, which copies nothing.
pub fn view(s: Session) -> v1::Session {
    v1::Session {
        id: s.id.to_string(),
        idle_expires_at: s.idle_expires_at().to_rfc3339(),
        user: s.user.to_string(),
        universal_id: s.universal_id.map(String::from),
        auth_level: s.auth_level,
        attributes: s.attributes,
        client: v1::ClientInfo {
            ip: s.client_ip.map(|ip| ip.to_string()),
            user_agent: s.user_agent.as_deref().map(str::to_owned),
        },
        policy: s.policy.to_string(),
        created_at: s.created_at.to_rfc3339(),
        last_access_at: s.last_access_at.to_rfc3339(),
        expires_at: s.expires_at.to_rfc3339(),
        version: s.version,
    }
}

fn lookup_result(l: Lookup) -> Result<Arc<Session>, ApiError> {
    match l {
        Lookup::Live(s) => Ok(s),
        Lookup::Ended(t) => Err(ApiError::SessionEnded(Box::new(t))),
        Lookup::NotFound => Err(ApiError::SessionNotFound),
    }
}

/// [`lookup_result`] for a session lent rather than handed out.
fn checked_result(c: Checked) -> Result<(), ApiError> {
    match c {
        Checked::Live => Ok(()),
        Checked::Ended(t) => Err(ApiError::SessionEnded(Box::new(t))),
        Checked::NotFound => Err(ApiError::SessionNotFound),
    }
}

/// Parses a session id from a path or cursor.
pub fn parse_id(field: &str, s: &str) -> Result<SessionId, ApiError> {
    s.parse()
        .map_err(|e: sessiond_core::id::ParseSessionIdError| {
            ApiError::invalid_field(field, e.to_string())
        })
}

impl Service {
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn policy(&self, name: Option<&str>) -> Result<(&str, &Policy), ApiError> {
        match name {
            None | Some(DEFAULT_POLICY) => Ok((DEFAULT_POLICY, &self.default_policy)),
            Some(n) => self
                .policies
                .get_key_value(n)
                .map(|(k, p)| (k.as_str(), p))
                .ok_or_else(|| ApiError::invalid_field("policy", format!("no policy named `{n}`"))),
        }
    }

    /// Checks a create request into a [`NewSession`] and its policy; changes nothing.
    fn check_create(
        &self,
        req: v1::CreateSessionRequest,
    ) -> Result<(NewSession, &str, &Policy), ApiError> {
        check_name("user", &req.user)?;
        if let Some(u) = &req.universal_id {
            check_name("universal_id", u)?;
        }
        let attributes =
            apply_attributes(&BTreeMap::new(), &req.attributes.unwrap_or_default(), &[]).map_err(
                |mut e| {
                    e.field = "attributes".into();
                    e
                },
            )?;
        let client = req.client.unwrap_or_default();
        let client_ip = match client.ip.as_deref() {
            None => None,
            Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| {
                ApiError::invalid_field("client.ip", format!("`{ip}` is not an IP address"))
            })?),
        };
        if let Some(ua) = &client.user_agent {
            check_user_agent(ua)?;
        }
        let (name, policy) = self.policy(req.policy.as_deref())?;
        let new = NewSession {
            user: req.user,
            universal_id: req.universal_id,
            auth_level: req.auth_level.unwrap_or(0),
            attributes,
            client_ip,
            user_agent: client.user_agent,
        };
        Ok((new, name, policy))
    }

    /// `POST /v1/sessions`: a fresh id and token for a user the agent authenticated.
    pub async fn create(
        &self,
        req: v1::CreateSessionRequest,
    ) -> Result<v1::CreatedSession, ApiError> {
        let (token, session) = self.create_session(req).await?;
        Ok(v1::CreatedSession {
            token,
            session: view(Arc::unwrap_or_clone(session)),
        })
    }

    /// [`Service::create`], answering with the token and the stored record itself, for an
    /// answer written straight into bytes (`json::created`).
    pub async fn create_session(
        &self,
        req: v1::CreateSessionRequest,
    ) -> Result<(String, Arc<Session>), ApiError> {
        let (new, policy_name, policy) = self.check_create(req)?;
        // One draw from the OS for the id's random bits and the token's secret: each
        // getrandom call is about 1% of a create's CPU.
        let mut random = [0u8; ID_RANDOM_LEN + SECRET_LEN];
        getrandom::fill(&mut random).map_err(|e| ApiError::Internal(e.to_string()))?;
        let (mut id_bits, mut secret) = ([0u8; ID_RANDOM_LEN], [0u8; SECRET_LEN]);
        id_bits.copy_from_slice(&random[..ID_RANDOM_LEN]);
        secret.copy_from_slice(&random[ID_RANDOM_LEN..]);
        let mut id = SessionId::for_user_from(&new.user, &id_bits);
        self.store.issue_slot(&mut id);
        let minted = self.keys.mint_from(id, &secret);
        let now = self.now();
        let session = Session::create(new, id, minted.verifier, policy_name, policy, now);
        match self.store.create(session, policy.limit(), now).await? {
            Created::Created { session, displaced } => {
                for d in displaced {
                    tracing::info!(session = %d, user = %session.user, "session displaced by the per-user limit");
                }
                Ok((minted.token, session))
            }
            Created::LimitReached { limit } => Err(ApiError::SessionLimitReached { limit }),
        }
    }

    /// A token's session, MAC first, then one in-memory lookup, answered with a session the
    /// caller keeps (the portal's pages). The routes of every page view use
    /// [`Service::validate_with`], which copies nothing.
    pub async fn validate(&self, token: &str, touch: bool) -> Result<Arc<Session>, ApiError> {
        let (id, verifier) = self.verify(token)?;
        let now = self.now();
        lookup_result(self.store.validate(id, &verifier, touch, now).await?)
    }

    /// [`Service::validate`], lending the live session to `answer` (called once, possibly
    /// under a store lock: it only writes the answer) instead of handing out a copy. The
    /// route of every page view (`POST /v1/sessions/validate`, forward auth) answers
    /// through this.
    pub async fn validate_with(
        &self,
        token: &[u8],
        touch: bool,
        answer: &mut (dyn for<'s> FnMut(&'s Session) + Send),
    ) -> Result<(), ApiError> {
        let (id, verifier) = self.verify(token)?;
        let now = self.now();
        let checked = match self.store.validate_ready(id, &verifier, touch, now, answer) {
            Some(ready) => ready?,
            None => {
                self.store
                    .validate_with(id, &verifier, touch, now, answer)
                    .await?
            }
        };
        checked_result(checked)
    }

    /// The session id and verifier `token` carries, its MAC checked: the first step of
    /// everything a token asks for.
    fn verify(&self, token: impl AsRef<[u8]>) -> Result<(SessionId, Verifier), ApiError> {
        self.keys.verify(token).map_err(|_| ApiError::InvalidToken)
    }

    /// `POST /v1/sessions/update`.
    pub async fn update(&self, req: v1::UpdateRequest) -> Result<Session, ApiError> {
        let (id, verifier) = self.verify(&req.token)?;
        let change = AttributeChange {
            set: req.set,
            remove: req.remove,
        };
        let now = self.now();
        match self
            .store
            .update(id, &verifier, &change, req.expected_version, now)
            .await?
        {
            Updated::Updated(s) => Ok(s),
            Updated::NotFound => Err(ApiError::SessionNotFound),
            Updated::Ended(t) => Err(ApiError::SessionEnded(Box::new(t))),
            Updated::VersionConflict { current } => Err(ApiError::VersionConflict { current }),
            Updated::Invalid(e) => Err(e.into()),
        }
    }

    /// `POST /v1/sessions/logout`.
    pub async fn logout(&self, token: &str) -> Result<Tombstone, ApiError> {
        let (id, verifier) = self.verify(token)?;
        self.end(id, Some(&verifier), EndReason::LoggedOut).await
    }

    /// Ends one session; an already ended one answers `session_ended` with its reason.
    pub async fn end(
        &self,
        id: SessionId,
        verifier: Option<&Verifier>,
        reason: EndReason,
    ) -> Result<Tombstone, ApiError> {
        let now = self.now();
        match self.store.end(id, verifier, reason, now).await? {
            Ended::Ended(t) => {
                tracing::info!(session = %t.id, user = %t.user, reason = %t.reason, "session ended");
                Ok(t)
            }
            Ended::AlreadyEnded(t) => Err(ApiError::SessionEnded(Box::new(t))),
            Ended::NotFound => Err(ApiError::SessionNotFound),
        }
    }

    /// `DELETE /v1/admin/users/{user}/sessions`.
    pub async fn end_user(&self, user: &str, reason: EndReason) -> Result<u64, ApiError> {
        check_name("user", user)?;
        let n = self.store.end_user(user, reason, self.now()).await?;
        tracing::info!(user, count = n, reason = %reason, "ended every session of a user");
        Ok(n)
    }

    /// `GET /v1/admin/sessions/{id}`.
    pub async fn get(&self, id: SessionId) -> Result<Arc<Session>, ApiError> {
        lookup_result(self.store.get(id, self.now()).await?)
    }

    /// `GET /v1/admin/sessions`.
    pub async fn list(
        &self,
        user: Option<&str>,
        cursor: Option<SessionId>,
        limit: usize,
    ) -> Result<v1::SessionPage, ApiError> {
        if let Some(u) = user {
            check_name("user", u)?;
        }
        let page = self.store.list(user, cursor, limit, self.now()).await?;
        Ok(v1::SessionPage {
            sessions: page.sessions.into_iter().map(view).collect(),
            next_cursor: page.next_cursor.map(|c| c.to_string()),
        })
    }

    /// `GET /v1/admin/sessions/{id}/explain`.
    pub async fn explain(&self, id: SessionId) -> Result<v1::Explanation, ApiError> {
        let now = self.now();
        match self.store.get(id, now).await? {
            Lookup::Live(s) => Ok(crate::explain::live(&s, now)),
            Lookup::Ended(t) => Ok(crate::explain::ended(&t)),
            Lookup::NotFound => Err(ApiError::SessionNotFound),
        }
    }

    /// `GET /v1/admin/stats`: sweeps first, so nothing past its deadline is counted.
    pub async fn stats(&self) -> Result<v1::Stats, ApiError> {
        self.store.sweep(self.now()).await?;
        let s = self.store.stats().await?;
        Ok(v1::Stats {
            store: self.store.kind().to_owned(),
            active_sessions: s.live,
            sessions_per_policy: s.per_policy,
            ended_by_reason: s
                .ended_by_reason
                .into_iter()
                .map(|(r, n)| (r.as_str().to_owned(), n))
                .collect(),
            users_with_sessions: s.users,
            nodes: s.nodes,
        })
    }

    /// The shortest idle timeout among the policies: it bounds the touch flush window.
    pub fn shortest_idle_timeout(&self) -> Duration {
        self.policies
            .values()
            .map(|p| p.idle_timeout)
            .fold(self.default_policy.idle_timeout, Duration::min)
    }
}
