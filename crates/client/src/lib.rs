//! A client library for sessiond's agent and admin HTTP APIs.
//!
//! [`Client`] has one async method per `/v1` route of the product contract: agents create,
//! validate, update and log out sessions; administrators list, show, terminate and explain
//! them and read the stats. The request and answer bodies are the wire types of
//! [`sessiond_proto`], re-exported here as [`v1`].
//!
//! Failures are an [`Error`]; [`Error::code`] gives the contract's stable [`ErrorCode`]
//! (`session_ended`, `invalid_token`, ...) that programs match on.
//!
//! Secrets stay out of sight: the credential (an agent key or the admin token) travels only
//! in the `Authorization` header, and session tokens only in request bodies. Neither ever
//! appears in a URL, an error message or `Debug` output.
//!
//! Agents that validate on every request can put a [`CachedValidator`] in front of the
//! client: it answers repeated validations locally for at most a maximum caching time, and
//! drops entries the moment the server's change-event stream (`GET /v1/events`, read with
//! [`Client::events`]) says a session changed or ended. See [`cache`] for its trust rule.
//!
//! Code map: `lib.rs` holds [`Client`] and its routes, `route.rs` builds and encodes URLs,
//! `error.rs` maps answers to [`Error`], `events.rs` reads the Server-Sent Events stream,
//! `cache.rs` (with `cache/`) is the validation cache and its event follower.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sessiond_client::Error> {
//! use sessiond_client::{Client, v1};
//!
//! let agent = Client::new("http://127.0.0.1:7480", "the-agent-key")?;
//! let created = agent
//!     .create_session(&v1::CreateSessionRequest {
//!         user: "alice".to_owned(),
//!         ..Default::default()
//!     })
//!     .await?;
//! let session = agent.validate(&created.token, true).await?;
//! assert_eq!(session.user, "alice");
//! agent.logout(&created.token).await?;
//! # Ok(())
//! # }
//! ```

pub mod cache;
mod error;
pub mod events;
mod route;

use std::fmt;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use cache::CachedValidator;
pub use error::Error;
pub use events::{Event, EventStream};
pub use sessiond_proto::{EndReason, ErrorCode, ErrorDetail, v1};

/// How long to wait for the TCP connection to the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take, answer included. The event stream is exempt: it is
/// meant to stay open, and is bounded by its idle timeout instead.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one sessiond server, holding one credential.
///
/// Cheap to clone: clones share the connection pool (HTTP/1.1 keep-alive).
#[derive(Clone)]
pub struct Client {
    /// The HTTP client: one connection pool reused by every call.
    http: reqwest::Client,
    /// The HTTP client for `GET /v1/events`: the same settings without the overall request
    /// timeout, which would cut a healthy stream.
    stream_http: reqwest::Client,
    /// The server's base URL, checked once so that every route is built from it safely.
    base: route::Base,
    /// `Bearer <credential>`, marked sensitive; `None` when the credential is empty, so
    /// that tests can call the server as an anonymous client.
    auth: Option<HeaderValue>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base.as_str())
            .field("credential", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:7480`, optionally with
    /// a path prefix), authenticating with `credential`: an agent key for the agent API, the
    /// admin token for the admin API. It is sent as `Authorization: Bearer ...`; an empty
    /// credential sends no `Authorization` header at all.
    pub fn new(base_url: &str, credential: &str) -> Result<Client, Error> {
        let base = route::Base::parse(base_url)?;
        let auth = if credential.is_empty() {
            None
        } else {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {credential}")).map_err(|_| {
                    Error::InvalidArgument(
                        "the credential holds characters that cannot be sent in a header"
                            .to_owned(),
                    )
                })?;
            value.set_sensitive(true);
            Some(value)
        };
        let http = http_builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Transport(format!("cannot set up the HTTP client: {e}")))?;
        let stream_http = http_builder()
            .build()
            .map_err(|e| Error::Transport(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            stream_http,
            base,
            auth,
        })
    }

    /// The server's base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    // ----- Agent API -----

    /// `POST /v1/sessions`: creates a session for a user the agent has authenticated.
    /// The answer holds the token, shown this once.
    pub async fn create_session(
        &self,
        req: &v1::CreateSessionRequest,
    ) -> Result<v1::CreatedSession, Error> {
        let url = self.base.route(&["v1", "sessions"], &[])?;
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// `POST /v1/sessions/validate`: the session behind `token`. With `touch`, this counts
    /// as activity and slides the idle timer; without, it only reads.
    pub async fn validate(&self, token: &str, touch: bool) -> Result<v1::Session, Error> {
        let body = v1::ValidateRequest {
            token: token.to_owned(),
            touch,
        };
        self.post_for_session(&["v1", "sessions", "validate"], &body)
            .await
    }

    /// `POST /v1/sessions/update`: sets and removes attributes, optionally only if the
    /// session is still at `expected_version`.
    pub async fn update(&self, req: &v1::UpdateRequest) -> Result<v1::Session, Error> {
        self.post_for_session(&["v1", "sessions", "update"], req)
            .await
    }

    /// `POST /v1/sessions/logout`: ends the session behind `token` (`logged_out`).
    pub async fn logout(&self, token: &str) -> Result<(), Error> {
        let url = self.base.route(&["v1", "sessions", "logout"], &[])?;
        let body = v1::LogoutRequest {
            token: token.to_owned(),
        };
        self.empty(self.request(Method::POST, url).json(&body))
            .await
    }

    // ----- Admin API -----

    /// `GET /v1/admin/sessions`: one page of sessions, all users' or one user's. Pass the
    /// page's `next_cursor` back as `cursor` for the next page.
    pub async fn list_sessions(
        &self,
        user: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<v1::SessionPage, Error> {
        let limit = limit.map(|n| n.to_string());
        let query: Vec<(&str, &str)> = [
            ("user", user),
            ("limit", limit.as_deref()),
            ("cursor", cursor),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let url = self.base.route(&["v1", "admin", "sessions"], &query)?;
        self.json(self.request(Method::GET, url)).await
    }

    /// `GET /v1/admin/sessions/{id}`: one session by its public id.
    pub async fn get_session(&self, id: &str) -> Result<v1::Session, Error> {
        let url = self.base.route(&["v1", "admin", "sessions", id], &[])?;
        let envelope: v1::SessionEnvelope = self.json(self.request(Method::GET, url)).await?;
        Ok(envelope.session)
    }

    /// `DELETE /v1/admin/sessions/{id}`: ends one session (`terminated_by_admin`).
    pub async fn terminate(&self, id: &str) -> Result<(), Error> {
        let url = self.base.route(&["v1", "admin", "sessions", id], &[])?;
        self.empty(self.request(Method::DELETE, url)).await
    }

    /// `DELETE /v1/admin/users/{user}/sessions`: ends all of a user's sessions; returns how
    /// many were ended.
    pub async fn terminate_user(&self, user: &str) -> Result<u64, Error> {
        let url = self
            .base
            .route(&["v1", "admin", "users", user, "sessions"], &[])?;
        let answer: v1::Terminated = self.json(self.request(Method::DELETE, url)).await?;
        Ok(answer.terminated)
    }

    /// `GET /v1/admin/sessions/{id}/explain`: when and why the session ends or ended.
    pub async fn explain(&self, id: &str) -> Result<v1::Explanation, Error> {
        let url = self
            .base
            .route(&["v1", "admin", "sessions", id, "explain"], &[])?;
        self.json(self.request(Method::GET, url)).await
    }

    /// `GET /v1/admin/stats`: active sessions, per policy, ended by reason, store kind.
    pub async fn stats(&self) -> Result<v1::Stats, Error> {
        let url = self.base.route(&["v1", "admin", "stats"], &[])?;
        self.json(self.request(Method::GET, url)).await
    }

    // ----- Probes -----

    /// `GET /healthz`: succeeds while the server process is up.
    pub async fn healthz(&self) -> Result<(), Error> {
        self.probe("healthz").await
    }

    /// `GET /readyz`: succeeds only while the server can reach its store.
    pub async fn readyz(&self) -> Result<(), Error> {
        self.probe("readyz").await
    }

    // ----- Plumbing -----

    /// A request carrying the credential.
    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let builder = self
            .http
            .request(method, url)
            .header(ACCEPT, "application/json");
        match &self.auth {
            Some(auth) => builder.header(AUTHORIZATION, auth.clone()),
            None => builder,
        }
    }

    /// Probes are unauthenticated, so they are sent without the credential.
    async fn probe(&self, name: &str) -> Result<(), Error> {
        let url = self.base.route(&[name], &[])?;
        self.empty(self.http.get(url)).await
    }

    async fn post_for_session<B: Serialize + ?Sized>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<v1::Session, Error> {
        let url = self.base.route(segments, &[])?;
        let envelope: v1::SessionEnvelope = self
            .json(self.request(Method::POST, url).json(body))
            .await?;
        Ok(envelope.session)
    }

    /// Sends `request` and decodes a 2xx answer's JSON body.
    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, Error> {
        let (status, body) = self.exchange(request).await?;
        serde_json::from_slice(&body).map_err(|e| Error::bad_json(status, &e))
    }

    /// Sends `request` and expects a 2xx answer (usually `204`), ignoring any body.
    async fn empty(&self, request: RequestBuilder) -> Result<(), Error> {
        self.exchange(request).await.map(|_| ())
    }

    /// Sends `request`; a 2xx answer gives its status and body, anything else an error.
    async fn exchange(&self, request: RequestBuilder) -> Result<(u16, Vec<u8>), Error> {
        let base = self.base.as_str();
        let response = request
            .send()
            .await
            .map_err(|e| Error::transport(base, e))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::transport(base, e))?;
        if (200..300).contains(&status) {
            Ok((status, body.to_vec()))
        } else {
            Err(Error::from_answer(status, &body))
        }
    }
}

/// The settings both HTTP clients share.
fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // The API never redirects; following one could carry the credential elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sessiond-client/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
