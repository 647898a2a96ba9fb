//! The dashboard: HTML pages served by `faccia serve` on its HTTP port beside `/query`, for the
//! people who act on the votes (a town hall's office manager, the programme office).
//!
//! - `GET /` — overview: the per-service index with its Wilson interval, the week over week
//!   trend with its significance, reasons for red faces, the comuni and unions with votes;
//! - `GET /municipality/{code}` (six-digit ISTAT code), `GET /union/{code}` — today and this
//!   week per service, the weekday × hour heat map, reasons, its terminals;
//! - `GET /coverage` — per region and province: eligible administrations, those with an
//!   active terminal, those with votes this month, the bonus committed;
//! - `GET /terminals` — last seen, votes today, misuse flags (and the place for alerts);
//! - `GET|POST /login`, `GET /logout` — the analyst token kept in an HttpOnly, SameSite=Strict
//!   cookie; `Authorization: Bearer` works too.
//!
//! Italian by default, English with `?lang=en` (kept in a cookie). Everything is embedded: the
//! CSS by `include_str!`, charts drawn as SVG by `charts`; no script.
//!
//! Architecture invariant: every number on a page comes from SQL over the views through
//! `data::Session` (the analysts' SQL service), never from storage; everything from data is
//! escaped (`charts::escape`).

pub(crate) mod data;
pub(crate) mod pages;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::analysts::service::SqlService;
use data::Session;
use pages::{Lang, Page};

/// The cookie holding the analyst token after `/login`.
const TOKEN_COOKIE: &str = "faccia_token";
/// The cookie holding the language chosen with `?lang=`.
const LANG_COOKIE: &str = "faccia_lang";
/// The longest login form accepted, in bytes (a token is at most a few hundred).
const LOGIN_BODY_BYTES_MAX: usize = 4096;

/// The dashboard's routes, over the analysts' SQL service.
pub(crate) fn router(sql: Arc<SqlService>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/municipality/{code}", get(municipality))
        .route("/union/{code}", get(union))
        .route("/coverage", get(coverage))
        .route("/terminals", get(terminals))
        .route("/login", get(login_form).post(login))
        .route("/logout", get(logout))
        .with_state(sql)
}

#[derive(Debug, Deserialize)]
struct LangParam {
    lang: Option<String>,
}

/// The cookie `name`'s value, if the request sent one.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The language: `?lang=` first (remembered in a cookie), then the cookie, then Italian.
fn language(headers: &HeaderMap, param: &LangParam) -> (Lang, Option<HeaderValue>) {
    let chosen = param.lang.as_deref().map(|l| if l == "en" { Lang::En } else { Lang::It });
    let remembered = cookie(headers, LANG_COOKIE).map(|l| if l == "en" { Lang::En } else { Lang::It });
    let set = chosen.map(|lang| {
        HeaderValue::from_str(&format!("{LANG_COOKIE}={}; Path=/; SameSite=Strict; Max-Age=31536000", lang.code())).expect("ascii")
    });
    (chosen.or(remembered).unwrap_or(Lang::It), set)
}

/// The visitor's `Authorization` header, or one made from the login cookie.
fn authorization(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return Some(value.to_string());
    }
    let token: String = url::form_urlencoded::parse(format!("t={}", cookie(headers, TOKEN_COOKIE)?).as_bytes()).next()?.1.into_owned();
    Some(format!("Bearer {token}"))
}

/// Renders `page` for the visitor, or the login page (401) without a valid token.
async fn respond(sql: &SqlService, headers: &HeaderMap, param: &LangParam, page: Page) -> Response {
    let (lang, set_lang) = language(headers, param);
    let auth = authorization(headers);
    let mut response = match Session::open(sql, auth.as_deref()) {
        Ok(session) => {
            let (status, body) = pages::render(&session, lang, page).await;
            html(status, body)
        }
        Err(reason) => {
            let mut response = html(StatusCode::UNAUTHORIZED, pages::login(lang, Some(reason)));
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    };
    if let Some(value) = set_lang {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn overview(State(sql): State<Arc<SqlService>>, headers: HeaderMap, Query(param): Query<LangParam>) -> Response {
    respond(&sql, &headers, &param, Page::Overview).await
}

async fn municipality(
    State(sql): State<Arc<SqlService>>,
    headers: HeaderMap,
    Path(code): Path<String>,
    Query(param): Query<LangParam>,
) -> Response {
    respond(&sql, &headers, &param, Page::Municipality(code)).await
}

async fn union(
    State(sql): State<Arc<SqlService>>,
    headers: HeaderMap,
    Path(code): Path<String>,
    Query(param): Query<LangParam>,
) -> Response {
    respond(&sql, &headers, &param, Page::Union(code)).await
}

async fn coverage(State(sql): State<Arc<SqlService>>, headers: HeaderMap, Query(param): Query<LangParam>) -> Response {
    respond(&sql, &headers, &param, Page::Coverage).await
}

async fn terminals(State(sql): State<Arc<SqlService>>, headers: HeaderMap, Query(param): Query<LangParam>) -> Response {
    respond(&sql, &headers, &param, Page::Terminals).await
}

async fn login_form(headers: HeaderMap, Query(param): Query<LangParam>) -> Response {
    let (lang, _) = language(&headers, &param);
    html(StatusCode::OK, pages::login(lang, None))
}

/// `POST /login` with the form field `token`: sets the cookie and goes to `/`, or answers 401
/// with the form and the reason.
async fn login(State(sql): State<Arc<SqlService>>, headers: HeaderMap, body: Bytes) -> Response {
    let (lang, _) = language(&headers, &LangParam { lang: None });
    if body.len() > LOGIN_BODY_BYTES_MAX {
        return html(StatusCode::PAYLOAD_TOO_LARGE, pages::login(lang, Some("the login form is larger than 4096 bytes")));
    }
    let token = url::form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    if token.is_empty() {
        return html(StatusCode::BAD_REQUEST, pages::login(lang, Some("the form field token is empty")));
    }
    if let Err(reason) = sql.authorize(Some(&format!("Bearer {token}"))) {
        return html(StatusCode::UNAUTHORIZED, pages::login(lang, Some(reason)));
    }
    let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let cookie = format!("{TOKEN_COOKIE}={encoded}; Path=/; HttpOnly; SameSite=Strict");
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/login"));
    let clear = format!("{TOKEN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&clear).expect("ascii"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_give_the_token_and_the_language() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b; faccia_token=abc%2Bdef; faccia_lang=en"));
        assert_eq!(authorization(&headers).as_deref(), Some("Bearer abc+def"));
        assert_eq!(language(&headers, &LangParam { lang: None }).0, Lang::En);
        assert_eq!(language(&headers, &LangParam { lang: Some("it".into()) }).0, Lang::It);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer header-wins"));
        assert_eq!(authorization(&headers).as_deref(), Some("Bearer header-wins"));
        assert_eq!(authorization(&HeaderMap::new()), None);
    }
}
