//! Logging in against the users directory, for `POST /v1/login` and the portal alike.
//!
//! Order of checks: the regulator first (a banned user or IP is refused without looking at
//! the password), then the directory (argon2id, on a blocking thread), then a fresh session.
//! Unknown user and wrong password are one answer, `invalid_credentials`.

use std::sync::Arc;

use sessiond_proto::v1;

use crate::directory::{Directory, User};
use crate::error::ApiError;
use crate::regulation::Regulator;
use crate::service::Service;

/// What the web-agent role needs besides the session service.
#[derive(Debug)]
pub struct Login {
    /// `None` when no `[users] file` is configured: logins are then refused.
    pub directory: Option<Arc<dyn Directory>>,
    pub regulator: Regulator,
}

/// A successful login: the token and session, and the user as the directory knows them.
#[derive(Debug)]
pub struct LoggedIn {
    pub created: v1::CreatedSession,
    pub user: User,
}

impl Login {
    /// Checks `username`/`password` and creates a session under `policy`.
    pub async fn login(
        &self,
        service: &Service,
        username: &str,
        password: &str,
        client: Option<v1::ClientInfo>,
        policy: Option<String>,
    ) -> Result<LoggedIn, ApiError> {
        let directory = self.directory.clone().ok_or_else(|| {
            ApiError::invalid("logins need a users directory: set `[users] file` in the config")
        })?;
        let ip = client
            .as_ref()
            .and_then(|c| c.ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        if username.is_empty()
            || username.len() > sessiond_core::input::MAX_USER_LEN
            || password.len() > 1024
        {
            return Err(ApiError::InvalidCredentials);
        }
        if let Some(retry_after) = self.regulator.banned(username, ip, service.now()) {
            return Err(ApiError::TooManyAttempts { retry_after });
        }
        let (name, pw) = (username.to_owned(), password.to_owned());
        let user = tokio::task::spawn_blocking(move || directory.authenticate(&name, &pw))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let Some(user) = user else {
            self.regulator.failed(username, ip, service.now());
            tracing::info!(user = username, "failed login");
            return Err(ApiError::InvalidCredentials);
        };
        self.regulator.succeeded(username);
        let created = service
            .create(v1::CreateSessionRequest {
                user: user.name.clone(),
                universal_id: user.universal_id.clone(),
                auth_level: Some(1),
                attributes: None,
                client,
                policy,
            })
            .await?;
        tracing::info!(user = %user.name, session = %created.session.id, "login");
        Ok(LoggedIn { created, user })
    }
}
