//! Who may see the operator page.
//!
//! In a cluster that requires tokens, the page is shown only to a request
//! that presents a token (`Authorization: Bearer <token>`, or the cookie
//! [`TOKEN_COOKIE`] for a browser), and it asks the directory for what it
//! shows with that token, not with the directory's own credential: the
//! directory's gate decides (an `admin` scope, as `hayloft status` needs),
//! so the page never shows more than its viewer may see over gRPC. No token
//! or an invalid one: 401 with `WWW-Authenticate: Bearer`; a token without
//! `admin`: 403. The page that asks has a form: `POST /login` with the token
//! sets the cookie (`HttpOnly`, `SameSite=Strict`) and sends the browser
//! back to `/`; `POST /logout` clears it. In a cluster without tokens the
//! page is shown as before,
//! with the directory's credential, and the metrics address must be on
//! loopback unless nothing on it would be protected anyway (see
//! [`hayloft_access::insecure_metrics_listen`]).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, html};

/// Where the operator page asks for what it shows: the directory (or the
/// directory group) and what to present to it.
#[derive(Clone)]
pub struct PageSource {
    /// gRPC address(es) of the directory.
    pub directory: String,
    /// The directory's own credential (its cluster token, its TLS client
    /// certificate).
    pub credential: hayloft_proto::Credential,
    /// The directory requires tokens: the page is shown only to a viewer
    /// presenting one, and asks with the viewer's (see this module).
    pub require_token: bool,
}

/// The cookie a browser may carry the token in (`hayloft_token=<token>`).
pub const TOKEN_COOKIE: &str = "hayloft_token";

/// The token a request presents: its bearer token, else its
/// [`TOKEN_COOKIE`].
pub fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
    };
    bearer
        .or_else(cookie)
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// The page that asks for a token, saying why the last one did not do.
pub fn asks(why: &str) -> Html<String> {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "hayloft: token required" } }
            body {
                h1 { "hayloft" }
                p id="refused" { (why) }
                p { "This cluster requires a token with the " code { "admin" } " scope: send it as "
                    code { "Authorization: Bearer <token>" } ", or in a browser as the cookie "
                    code { (TOKEN_COOKIE) "=<token>" } " (" code { "hayloft token create --scope admin" } ")." }
                form id="login" method="post" action="/login" {
                    label for="token" { "Token " }
                    input id="token" name="token" type="password" autocomplete="off" required;
                    " "
                    button type="submit" { "Sign in" }
                }
            }
        }
    };
    Html(page.into_string())
}

/// A token a cookie can carry as it is: printable ASCII without the
/// characters that end or quote a cookie value.
fn cookie_safe(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'))
}

/// The answer to `POST /login` with the form field `token`: the cookie set
/// and back to `/` (which checks the token), or the form again.
pub fn login(form: &[(String, String)]) -> Response {
    let token = form
        .iter()
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.trim())
        .unwrap_or_default();
    if !cookie_safe(token) {
        let why = "that is not a token (empty, or with characters no token has)";
        return (StatusCode::BAD_REQUEST, asks(why)).into_response();
    }
    signed_in(&format!(
        "{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    ))
}

/// The answer to `POST /logout`: the cookie cleared, back to `/`.
pub fn logout() -> Response {
    signed_in(&format!(
        "{TOKEN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
}

/// 303 to `/` with `cookie` set.
fn signed_in(cookie: &str) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The answer to `GET /` with `headers`, from `source`.
pub async fn answer(source: &PageSource, headers: &HeaderMap) -> Response {
    if !source.require_token {
        return super::serve(&source.directory, source.credential.clone())
            .await
            .into_response();
    }
    let credential = presented_token(headers)
        .ok_or("this cluster requires a token: none was presented")
        .and_then(|token| {
            (source.credential.clone().with_token(token))
                .map_err(|_| "the token has characters a header cannot carry")
        });
    let (status, page) = match credential {
        Ok(credential) => super::serve(&source.directory, credential).await,
        Err(why) => (StatusCode::UNAUTHORIZED, asks(why)),
    };
    let mut response = (status, page).into_response();
    let headers = response.headers_mut();
    // What it shows is for this viewer only.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"hayloft\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_in_sets_the_cookie_and_out_clears_it() {
        let form = |token: &str| vec![("token".to_owned(), token.to_owned())];
        let response = login(&form(" hl1.abc-DEF_09 "));
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[header::LOCATION], "/");
        assert_eq!(
            response.headers()[header::SET_COOKIE],
            "hayloft_token=hl1.abc-DEF_09; Path=/; HttpOnly; SameSite=Strict"
        );
        for bad in ["", "a b", "a;b=c", "x\"y"] {
            let response = login(&form(bad));
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(!response.headers().contains_key(header::SET_COOKIE));
        }
        assert_eq!(login(&[]).status(), StatusCode::BAD_REQUEST);
        let out = logout();
        assert_eq!(out.status(), StatusCode::SEE_OTHER);
        assert!(
            out.headers()[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; hayloft_token=t1 ; c=d"),
        );
        assert_eq!(presented_token(&headers), Some("t1"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t2"));
        assert_eq!(presented_token(&headers), Some("t2"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpw"),
        );
        assert_eq!(presented_token(&headers), Some("t1"));
        headers.insert(header::COOKIE, HeaderValue::from_static("hayloft_tokens=x"));
        assert_eq!(presented_token(&headers), None);
    }
}
