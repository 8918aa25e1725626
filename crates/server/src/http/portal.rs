//! The login portal: `GET/POST /login`, `POST /logout`, and the self-service `/sessions`.
//!
//! Forms are protected against forgery: the login form by a double-submit cookie, forms of a
//! signed-in user by a MAC of their session id. Every login issues a new session id and
//! token; a cookie from before the login never becomes valid.

use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use sessiond_core::{EndReason, Session};
use sessiond_proto::v1;
use subtle::ConstantTimeEq;

use super::cookie::{self, Presented};
use super::extract::Params;
use super::pages;
use super::proxy::Origin;
use super::redirect::safe_target;
use super::{AppState, NO_STORE};
use crate::error::ApiError;

/// The session and anti-forgery cookies of a browser request. A cookie that cannot be a
/// token counts as absent.
#[derive(Debug)]
pub struct Cookies {
    pub session: Option<String>,
    pub csrf: Option<String>,
}

impl FromRequestParts<AppState> for Cookies {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let settings = &state.web.settings.cookie;
        let token = |p: Presented<'_>| p.text().map(str::to_owned);
        let (session, csrf) = cookie::read(&parts.headers, &settings.name);
        Ok(Cookies {
            session: token(session),
            csrf: token(csrf),
        })
    }
}

/// A browser request's user agent, for the session's client info.
#[derive(Debug)]
pub struct UserAgent(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for UserAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(UserAgent(
            parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .filter(|v| sessiond_core::input::check_user_agent(v).is_ok())
                .map(str::to_owned),
        ))
    }
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, Html(body)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, NO_STORE);
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    );
    r
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, NO_STORE);
    r
}

fn add_cookie(r: &mut Response, value: Option<HeaderValue>) {
    if let Some(v) = value {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The anti-forgery value of a signed-in user's forms.
fn session_csrf(state: &AppState, s: &Session) -> String {
    B64.encode(state.service.keys.tag("csrf", s.id.as_bytes()))
}

/// The browser's session, if its cookie names a live one.
async fn current(
    state: &AppState,
    cookies: &Cookies,
    touch: bool,
) -> Result<Option<Arc<Session>>, ApiError> {
    let Some(token) = &cookies.session else {
        return Ok(None);
    };
    match state.service.validate(token, touch).await {
        Ok(s) => Ok(Some(s)),
        Err(ApiError::Store(e)) => Err(ApiError::Store(e)),
        Err(_) => Ok(None),
    }
}

/// Where to go after login: `rd` if allowed, else the configured default, else `/sessions`.
fn after_login(state: &AppState, rd: Option<&str>) -> String {
    let web = &state.web.settings;
    rd.and_then(|rd| safe_target(rd, &web.allowed_redirect_hosts))
        .or_else(|| web.default_redirect.clone())
        .unwrap_or_else(|| "/sessions".to_owned())
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    rd: Option<String>,
}

pub(super) async fn login_page(
    State(state): State<AppState>,
    cookies: Cookies,
    Params(q): Params<LoginQuery>,
) -> Result<Response, ApiError> {
    let rd =
        q.rd.as_deref()
            .and_then(|rd| safe_target(rd, &state.web.settings.allowed_redirect_hosts));
    if rd.is_some() && current(&state, &cookies, false).await?.is_some() {
        return Ok(redirect(&after_login(&state, rd.as_deref())));
    }
    Ok(login_form(
        &state,
        &cookies,
        rd.as_deref().unwrap_or(""),
        StatusCode::OK,
        None,
        "",
    ))
}

/// The form, with the browser's anti-forgery cookie (a fresh one if it has none).
fn login_form(
    state: &AppState,
    cookies: &Cookies,
    rd: &str,
    status: StatusCode,
    error: Option<&str>,
    user: &str,
) -> Response {
    let settings = &state.web.settings.cookie;
    let (csrf, fresh) = match &cookies.csrf {
        Some(c) if c.len() == 43 => (c.clone(), false),
        _ => match sessiond_core::token::random_secret(32) {
            Ok(c) => (c, true),
            Err(_) => return ApiError::Internal("no randomness".into()).into_response(),
        },
    };
    let mut r = html(status, pages::login(rd, &csrf, error, user));
    if fresh {
        let strict = crate::config::CookieSettings {
            same_site: crate::config::SameSite::Strict,
            domain: None,
            ..settings.clone()
        };
        add_cookie(
            &mut r,
            cookie::set(&strict, &cookie::csrf_name(settings), &csrf),
        );
    }
    r
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    rd: String,
}

pub(super) async fn login_submit(
    State(state): State<AppState>,
    origin: Origin,
    UserAgent(user_agent): UserAgent,
    cookies: Cookies,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let Ok(Form(form)) = form else {
        return Ok(login_form(
            &state,
            &cookies,
            "",
            StatusCode::BAD_REQUEST,
            Some("The form could not be read. Please try again."),
            "",
        ));
    };
    let rd = safe_target(&form.rd, &state.web.settings.allowed_redirect_hosts).unwrap_or_default();
    if !cookies.csrf.as_deref().is_some_and(|c| same(c, &form.csrf)) {
        return Ok(login_form(
            &state,
            &cookies,
            &rd,
            StatusCode::FORBIDDEN,
            Some("Your sign-in form expired. Please try again."),
            &form.username,
        ));
    }
    let client = v1::ClientInfo {
        ip: origin.client_ip.map(|ip| ip.to_string()),
        user_agent,
    };
    let policy = state.web.settings.policy.clone();
    let logged_in = match state
        .web
        .login
        .login(
            &state.service,
            &form.username,
            &form.password,
            Some(client),
            policy,
        )
        .await
    {
        Ok(l) => l,
        Err(ApiError::InvalidCredentials) => {
            return Ok(login_form(
                &state,
                &cookies,
                &rd,
                StatusCode::UNAUTHORIZED,
                Some("Wrong username or password."),
                &form.username,
            ));
        }
        Err(ApiError::TooManyAttempts { retry_after }) => {
            let msg = format!("Too many failed attempts. Try again in {retry_after} seconds.");
            let mut r = login_form(
                &state,
                &cookies,
                &rd,
                StatusCode::TOO_MANY_REQUESTS,
                Some(&msg),
                &form.username,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, retry_after.into());
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    // The browser's previous session, if any, ends here: one browser, one session.
    if let Some(old) = current(&state, &cookies, false).await.ok().flatten() {
        let _ = state.service.end(old.id, None, EndReason::LoggedOut).await;
    }
    let settings = &state.web.settings.cookie;
    let mut r = redirect(&after_login(&state, Some(&rd)));
    add_cookie(
        &mut r,
        cookie::set(settings, &settings.name, &logged_in.created.token),
    );
    add_cookie(
        &mut r,
        cookie::clear(settings, &cookie::csrf_name(settings)),
    );
    Ok(r)
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    rd: String,
    #[serde(default)]
    id: String,
}

fn read_form(form: Result<Form<CsrfForm>, FormRejection>) -> CsrfForm {
    form.map(|Form(f)| f).unwrap_or(CsrfForm {
        csrf: String::new(),
        rd: String::new(),
        id: String::new(),
    })
}

fn forged() -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::message(
            "Request refused",
            "This form expired or did not come from this site.",
            ("/sessions", "Back to your sessions"),
        ),
    )
}

pub(super) async fn logout(
    State(state): State<AppState>,
    cookies: Cookies,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let form = read_form(form);
    if let Some(s) = current(&state, &cookies, false).await? {
        if !same(&form.csrf, &session_csrf(&state, &s)) {
            return Ok(forged());
        }
        match state.service.end(s.id, None, EndReason::LoggedOut).await {
            Ok(_) | Err(ApiError::SessionEnded(_)) | Err(ApiError::SessionNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    let settings = &state.web.settings.cookie;
    let to = safe_target(&form.rd, &state.web.settings.allowed_redirect_hosts)
        .unwrap_or_else(|| "/login".to_owned());
    let mut r = redirect(&to);
    add_cookie(&mut r, cookie::clear(settings, &settings.name));
    Ok(r)
}

pub(super) async fn sessions_page(
    State(state): State<AppState>,
    cookies: Cookies,
) -> Result<Response, ApiError> {
    let Some(me) = current(&state, &cookies, true).await? else {
        return Ok(redirect("/login?rd=%2Fsessions"));
    };
    let page = state
        .service
        .list(Some(&me.user), None, crate::service::MAX_PAGE)
        .await?;
    let csrf = session_csrf(&state, &me);
    Ok(html(
        StatusCode::OK,
        pages::sessions(&me.user, &page.sessions, &me.id.to_string(), &csrf),
    ))
}

/// A signed-in user's form, checked: their session and the form, or the answer to send
/// instead (the login page when not signed in, a refusal when the form is forged).
async fn signed_in(
    state: &AppState,
    cookies: &Cookies,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Result<(Arc<Session>, CsrfForm), Response>, ApiError> {
    let form = read_form(form);
    let Some(me) = current(state, cookies, true).await? else {
        return Ok(Err(redirect("/login?rd=%2Fsessions")));
    };
    if !same(&form.csrf, &session_csrf(state, &me)) {
        return Ok(Err(forged()));
    }
    Ok(Ok((me, form)))
}

pub(super) async fn end_one(
    State(state): State<AppState>,
    cookies: Cookies,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let (me, form) = match signed_in(&state, &cookies, form).await? {
        Ok(checked) => checked,
        Err(response) => return Ok(response),
    };
    // Another user's session, an unknown id and a malformed one all look the same.
    let target = crate::service::parse_id("id", &form.id).ok();
    let mine = match target {
        Some(id) if id != me.id => match state.service.get(id).await {
            Ok(s) if s.user == me.user => Some(id),
            Ok(_) | Err(ApiError::SessionNotFound | ApiError::SessionEnded(_)) => None,
            Err(e) => return Err(e),
        },
        _ => None,
    };
    let Some(id) = mine else {
        return Ok(html(
            StatusCode::NOT_FOUND,
            pages::message(
                "No such session",
                "That session is not one of yours, or it has already ended.",
                ("/sessions", "Back to your sessions"),
            ),
        ));
    };
    match state
        .service
        .end(id, None, EndReason::TerminatedByUser)
        .await
    {
        Ok(_) | Err(ApiError::SessionEnded(_)) => Ok(see_other("/sessions")),
        Err(e) => Err(e),
    }
}

pub(super) async fn end_others(
    State(state): State<AppState>,
    cookies: Cookies,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let (me, _) = match signed_in(&state, &cookies, form).await? {
        Ok(checked) => checked,
        Err(response) => return Ok(response),
    };
    let page = state
        .service
        .list(Some(&me.user), None, crate::service::MAX_PAGE)
        .await?;
    for s in page.sessions.iter().filter(|s| s.id != me.id.to_string()) {
        if let Ok(id) = crate::service::parse_id("id", &s.id) {
            match state
                .service
                .end(id, None, EndReason::TerminatedByUser)
                .await
            {
                Ok(_) | Err(ApiError::SessionEnded(_) | ApiError::SessionNotFound) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(see_other("/sessions"))
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}
