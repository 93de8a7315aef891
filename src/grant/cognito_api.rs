//! Cognito's user-pool API as a session's refresh speaks it: the wire format only.
//!
//! Amplify and the AWS SDKs refresh a user's session through the user-pool API
//! (`https://cognito-idp.{region}.amazonaws.com/`), not the OAuth token endpoint of a pool's
//! domain; a pool without a domain has only this way. Each call is a `POST /` with
//! `Content-Type: application/x-amz-json-1.1`, `X-Amz-Target:
//! AWSCognitoIdentityProviderService.<Operation>` and a JSON body; these operations take no AWS
//! signature. Errors come back as `{"__type": "...", "message": "..."}`, with HTTP 400 for the
//! client's errors and 5xx for Cognito's.
//!
//! - [`RefreshFlow::GetTokensFromRefreshToken`]: `{ClientId, ClientSecret?, RefreshToken,
//!   DeviceKey?}`; the answer's `RefreshToken`, when there is one, is a rotation.
//! - [`RefreshFlow::RefreshTokenAuth`]: `InitiateAuth` with `AuthFlow: REFRESH_TOKEN_AUTH` and
//!   `AuthParameters {REFRESH_TOKEN, SECRET_HASH?, DEVICE_KEY?}`.
//!
//! The answer's `AuthenticationResult` is handed to the grant in the token endpoint's shape
//! (`access_token`, `expires_in`, `token_type`, `id_token`, `refresh_token`), so that one
//! exchange reads both, with the same checks and the same rotation rules.

use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use tokio::time::Instant;

use super::endpoint::{
    Answered, Endpoint, Secret, check_region, parse_endpoint_url, read_limited, retry_after,
};
use crate::error::Error;

/// How a [`RefreshTokenGrant`](crate::RefreshTokenGrant) on Cognito's user-pool API
/// ([`user_pool_api`](crate::RefreshTokenGrantBuilder::user_pool_api)) refreshes a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefreshFlow {
    /// `GetTokensFromRefreshToken` (the default): the operation Amplify and the AWS SDKs use
    /// since 2025, and the only one that rotates refresh tokens outside the hosted domain. When
    /// the app client has rotation on, each answer carries a new refresh token, which the
    /// grant persists before it uses the new access token; the app client's retry grace
    /// period (0 to 60 s) lets a lost answer be retried with the old token. The client secret,
    /// when there is one, goes as it is (`ClientSecret`): no username is needed.
    #[default]
    GetTokensFromRefreshToken,
    /// `InitiateAuth` with `AuthFlow: REFRESH_TOKEN_AUTH`: no rotation (Cognito refuses it for
    /// app clients that rotate), for emulators and older setups. An app client with a secret
    /// needs a `SECRET_HASH`, computed over the user's name: see
    /// [`username`](crate::RefreshTokenGrantBuilder::username).
    RefreshTokenAuth,
}

/// The media type of every call.
pub(crate) const AMZ_JSON: &str = "application/x-amz-json-1.1";

/// The header that names the operation.
const X_AMZ_TARGET: HeaderName = HeaderName::from_static("x-amz-target");

/// The header some AWS front ends put the error type in, when the body lacks it.
const X_AMZN_ERRORTYPE: &str = "x-amzn-errortype";

/// The user-pool API's public endpoint in `region`: `https://cognito-idp.{region}.amazonaws.com/`
/// (`.amazonaws.com.cn` in the China regions, `cn-…`).
pub(crate) fn api_url(region: &str) -> Result<Uri, Error> {
    check_region(region)?;
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://cognito-idp.{region}.{suffix}/")
        .parse()
        .map_err(|_| Error::invalid_config("the AWS region does not form a valid URL"))
}

/// Checks a user-pool API URL given as it is (a VPC endpoint, an emulator), by the token URL's
/// rules: `https://`, or `http://` on loopback only.
pub(crate) fn parse_api_url(url: &str) -> Result<Uri, Error> {
    parse_endpoint_url(url, "user-pool API URL")
}

/// `SECRET_HASH`: Base64(HMAC-SHA256(key: the client secret, message: username + client id)).
pub(crate) fn secret_hash(client_secret: &str, username: &str, client_id: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, client_secret.as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(username.as_bytes());
    context.update(client_id.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(context.sign().as_ref())
}

/// The `username` claim of a Cognito access token (a JWT, read without verifying it: the API
/// verifies it). `None` for a token that is not a JWT or has no such claim.
pub(crate) fn username_claim(access_token: &str) -> Option<String> {
    let mut parts = access_token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > crate::token::MAX_TOKEN_LEN {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        username: Option<String>,
    }
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    claims.username.filter(|name| !name.is_empty())
}

/// A session's side of the user-pool API: which flow, which client, whose `SECRET_HASH`.
pub(crate) struct UserPoolApi {
    flow: RefreshFlow,
    client_id: String,
    /// Given by [`username`](crate::RefreshTokenGrantBuilder::username); it wins over the claim.
    username: Option<String>,
    device_key: Option<String>,
    /// The `username` claim of the latest access token, restored or received.
    claimed: Mutex<Option<String>>,
}

impl std::fmt::Debug for UserPoolApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPoolApi")
            .field("flow", &self.flow)
            .field("username", &self.username)
            .field("device_key", &self.device_key.as_ref().map(|_| "[set]"))
            .finish_non_exhaustive()
    }
}

impl UserPoolApi {
    pub(crate) fn new(
        flow: RefreshFlow,
        client_id: String,
        username: Option<String>,
        device_key: Option<String>,
    ) -> Self {
        UserPoolApi {
            flow,
            client_id,
            username,
            device_key,
            claimed: Mutex::new(None),
        }
    }

    /// Notes the `username` claim of an access token the session now holds (restored from
    /// storage, or received), for the next `SECRET_HASH`. A token without one changes nothing.
    pub(crate) fn saw_access_token(&self, access_token: &str) {
        if let Some(name) = username_claim(access_token) {
            *self.claimed.lock().unwrap_or_else(PoisonError::into_inner) = Some(name);
        }
    }

    /// Forgets the claim of the previous sign-in (a new one may be another user's).
    pub(crate) fn forget_username_claim(&self) {
        *self.claimed.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether a refresh can be sent: under [`RefreshFlow::RefreshTokenAuth`], an app client
    /// with a secret needs a username for its `SECRET_HASH`.
    pub(crate) fn check_username(&self, has_secret: bool) -> Result<(), Error> {
        if has_secret
            && self.flow == RefreshFlow::RefreshTokenAuth
            && self.hash_username().is_none()
        {
            return Err(no_username());
        }
        Ok(())
    }

    /// The name `SECRET_HASH` is computed over: the one given, else the latest claim.
    fn hash_username(&self) -> Option<String> {
        self.username.clone().or_else(|| {
            self.claimed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// The operation and its JSON body for one refresh.
    pub(crate) fn body(
        &self,
        refresh_token: &str,
        client_secret: Option<&str>,
    ) -> Result<Call, Error> {
        let mut hash = None;
        let body = match self.flow {
            RefreshFlow::GetTokensFromRefreshToken => {
                let mut body = serde_json::Map::new();
                body.insert("ClientId".into(), self.client_id.clone().into());
                body.insert("RefreshToken".into(), refresh_token.into());
                if let Some(secret) = client_secret {
                    body.insert("ClientSecret".into(), secret.into());
                }
                if let Some(device_key) = &self.device_key {
                    body.insert("DeviceKey".into(), device_key.clone().into());
                }
                ("GetTokensFromRefreshToken", body)
            }
            RefreshFlow::RefreshTokenAuth => {
                let mut parameters = serde_json::Map::new();
                parameters.insert("REFRESH_TOKEN".into(), refresh_token.into());
                if let Some(secret) = client_secret {
                    let username = self.hash_username().ok_or_else(no_username)?;
                    let value = secret_hash(secret, &username, &self.client_id);
                    parameters.insert("SECRET_HASH".into(), value.clone().into());
                    hash = Some(Secret(value));
                }
                if let Some(device_key) = &self.device_key {
                    parameters.insert("DEVICE_KEY".into(), device_key.clone().into());
                }
                let mut body = serde_json::Map::new();
                body.insert("AuthFlow".into(), "REFRESH_TOKEN_AUTH".into());
                body.insert("ClientId".into(), self.client_id.clone().into());
                body.insert("AuthParameters".into(), parameters.into());
                ("InitiateAuth", body)
            }
        };
        let (operation, body) = body;
        Ok(Call {
            operation,
            body: Secret(serde_json::Value::Object(body).to_string()),
            secret_hash: hash,
        })
    }

    /// One refresh call: the request for this flow, its answer read under the endpoint's size
    /// limit and handed back in the token endpoint's shape, or the error it maps to. Bound it
    /// with [`Endpoint::timed`].
    pub(crate) async fn post(
        &self,
        endpoint: &Endpoint,
        refresh_token: &str,
        client_secret: Option<&str>,
    ) -> Result<Answered, Error> {
        let call = self.body(refresh_token, client_secret)?;
        let (body, sent_at, sent_at_wall) =
            send(endpoint, call, refresh_token, client_secret).await?;
        let body = token_answer(&body)?;
        if let Some(access_token) = body.access_token.as_deref() {
            self.saw_access_token(access_token);
        }
        Ok(Answered {
            body: Bytes::from(body.json),
            sent_at,
            sent_at_wall,
        })
    }

    /// Revokes a refresh token (`RevokeToken {Token, ClientId, ClientSecret?}`), as a sign-out
    /// does: Cognito then refuses it and the access tokens issued from it. The same error
    /// mapping as a refresh. Bound it with [`Endpoint::timed`].
    pub(crate) async fn revoke(
        &self,
        endpoint: &Endpoint,
        refresh_token: &str,
        client_secret: Option<&str>,
    ) -> Result<(), Error> {
        let mut body = serde_json::Map::new();
        body.insert("Token".into(), refresh_token.into());
        body.insert("ClientId".into(), self.client_id.clone().into());
        if let Some(secret) = client_secret {
            body.insert("ClientSecret".into(), secret.into());
        }
        let call = Call {
            operation: "RevokeToken",
            body: Secret(serde_json::Value::Object(body).to_string()),
            secret_hash: None,
        };
        send(endpoint, call, refresh_token, client_secret).await?;
        Ok(())
    }
}

/// Sends one call; a `2xx` answer's body (read under the size limit) with when the call was
/// sent, or the error the answer maps to, with what was sent (the refresh token, the client
/// secret and the call's `SECRET_HASH`) kept out of its message.
async fn send(
    endpoint: &Endpoint,
    call: Call,
    refresh_token: &str,
    client_secret: Option<&str>,
) -> Result<(Bytes, Instant, SystemTime), Error> {
    let sent_at = Instant::now();
    let sent_at_wall = SystemTime::now();
    let mut request = endpoint.request(Bytes::from(call.body.0), AMZ_JSON);
    let target = format!("AWSCognitoIdentityProviderService.{}", call.operation);
    request.headers_mut().insert(
        X_AMZ_TARGET,
        HeaderValue::try_from(target)
            .map_err(|_| Error::internal("the operation name is not a header value"))?,
    );
    let response = endpoint.send(request).await?;
    let status = response.status();
    if status.is_success() {
        let body = read_limited(response).await?;
        return Ok((body, sent_at, sent_at_wall));
    }
    let retry_after = retry_after(&response, sent_at_wall);
    let header_type = response
        .headers()
        .get(X_AMZN_ERRORTYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The body is read only for its error; one that is too large or broken says nothing.
    let body = read_limited(response).await.ok();
    // What was sent stays out of the error, should the server echo it (moto puts a wrong
    // SECRET_HASH in its message); the client's own credentials also tell a refusal of the
    // client from one of the refresh token.
    let client: Vec<&str> = client_secret
        .into_iter()
        .chain(call.secret_hash.as_ref().map(|h| h.0.as_str()))
        .collect();
    Err(api_error(
        status,
        retry_after,
        body.as_deref(),
        header_type.as_deref(),
        refresh_token,
        &client,
    ))
}

/// One call of the API: the operation, its JSON body (which holds the refresh token and
/// maybe the client secret), and the `SECRET_HASH` in it, if any.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) operation: &'static str,
    pub(crate) body: Secret,
    pub(crate) secret_hash: Option<Secret>,
}

fn no_username() -> Error {
    Error::invalid_config(
        "the app client has a secret, and RefreshFlow::RefreshTokenAuth needs the user's name \
         for its SECRET_HASH: call `.username(..)` (the `username` claim of the user's access \
         token), or restore an access token that has that claim",
    )
}

/// An answer in the token endpoint's shape, and the access token it carries.
struct TokenAnswer {
    json: String,
    access_token: Option<String>,
}

/// Reads `{"AuthenticationResult": {AccessToken, ExpiresIn, IdToken, RefreshToken?,
/// TokenType}}` into the token endpoint's field names, values as they came: the grant's checks
/// of a token answer then apply as they are.
fn token_answer(body: &[u8]) -> Result<TokenAnswer, Error> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "AuthenticationResult")]
        result: Option<serde_json::Map<String, serde_json::Value>>,
        #[serde(rename = "ChallengeName")]
        challenge: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| Error::invalid_response("the body is not a JSON object"))?;
    let Some(mut result) = answer.result else {
        return Err(match answer.challenge {
            Some(challenge) => Error::invalid_response(format!(
                "Cognito answered with the challenge {} instead of tokens",
                sanitized(&challenge)
            )),
            None => Error::invalid_response("`AuthenticationResult` is missing"),
        });
    };
    let mut out = serde_json::Map::new();
    for (from, to) in [
        ("AccessToken", "access_token"),
        ("ExpiresIn", "expires_in"),
        ("TokenType", "token_type"),
        ("IdToken", "id_token"),
        ("RefreshToken", "refresh_token"),
    ] {
        if let Some(value) = result.remove(from) {
            out.insert(to.into(), value);
        }
    }
    let access_token = match out.get("access_token") {
        Some(serde_json::Value::String(token)) => Some(token.clone()),
        _ => None,
    };
    Ok(TokenAnswer {
        json: serde_json::Value::Object(out).to_string(),
        access_token,
    })
}

/// Server text kept short and printable.
fn sanitized(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// The error type without the namespace some services prefix (`…#NotAuthorizedException`) or
/// the detail some suffix (`NotAuthorizedException:http://…`).
fn error_type(raw: &str) -> &str {
    let raw = raw.rsplit('#').next().unwrap_or(raw);
    raw.split(':').next().unwrap_or(raw).trim()
}

/// Maps a non-2xx answer of the user-pool API to an [`Error`].
///
/// - `NotAuthorizedException` (a refresh token revoked, expired or reused, a wrong secret or
///   `SECRET_HASH`) and `RefreshTokenReuseException` end the session: the error is a rejection
///   with the OAuth code `invalid_grant` (so [`Error::is_invalid_grant`] and
///   [`Error::is_permanent`] hold), its description Cognito's type and message, and its
///   message says to sign in again. One that refuses the app client (Cognito's message
///   speaks of the secret, or an emulator's repeats the secret or hash it refused) is marked
///   ([`Error::client_refused`]): a session whose secret comes from a source that can change
///   is kept, to heal once the secret is right.
/// - `TooManyRequestsException` and HTTP 429: rate limited, with `Retry-After` when sent.
/// - `InternalErrorException` and every 5xx: unavailable (retryable).
/// - Any other: a rejection whose OAuth code is the `__type` and description the message.
///
/// What was sent (`refresh_token`, and `client`: the client secret, the `SECRET_HASH`) that
/// the server's message repeats is replaced by `[redacted]`.
pub(crate) fn api_error(
    status: StatusCode,
    retry_after: Option<std::time::Duration>,
    body: Option<&[u8]>,
    header_type: Option<&str>,
    refresh_token: &str,
    client: &[&str],
) -> Error {
    #[derive(serde::Deserialize, Default)]
    struct Raw {
        #[serde(rename = "__type")]
        kind: Option<String>,
        message: Option<String>,
        #[serde(rename = "Message")]
        message_upper: Option<String>,
    }
    let raw: Raw = body
        .and_then(|body| serde_json::from_slice(body).ok())
        .unwrap_or_default();
    let kind = raw.kind.as_deref().or(header_type).map(error_type);
    let raw_message = raw.message.or(raw.message_upper);
    let redact = |mut message: String, what: &[&str]| {
        for secret in what.iter().filter(|s| !s.is_empty()) {
            message = message.replace(secret, "[redacted]");
        }
        message
    };
    // Whether Cognito refused the app client rather than the refresh token: its messages say
    // so ("Unable to verify secret hash for client …", "… is configured with secret …"), and
    // an emulator's repeat the secret or hash it refused.
    let about_client = raw_message.as_deref().is_some_and(|message| {
        client.iter().any(|s| !s.is_empty() && message.contains(s))
            || redact(message.to_owned(), &[refresh_token])
                .to_ascii_lowercase()
                .contains("secret")
    });
    let message = raw_message.map(|message| {
        let mut sent = vec![refresh_token];
        sent.extend_from_slice(client);
        redact(message, &sent)
    });
    match kind {
        Some("NotAuthorizedException") if about_client => {
            let description = match &message {
                Some(message) => format!("NotAuthorizedException: {message}"),
                None => "NotAuthorizedException".to_owned(),
            };
            Error::rejected_client(status, &description)
        }
        Some("NotAuthorizedException" | "RefreshTokenReuseException") => {
            let kind = kind.unwrap_or_default();
            let description = match &message {
                Some(message) => format!("{kind}: {message}"),
                None => kind.to_owned(),
            };
            Error::rejected(status, Some("invalid_grant"), Some(&description))
        }
        Some("TooManyRequestsException") => Error::rate_limited(retry_after),
        _ if status == StatusCode::TOO_MANY_REQUESTS => Error::rate_limited(retry_after),
        Some("InternalErrorException") => Error::server_error(status, retry_after),
        _ if status.is_server_error() => Error::server_error(status, retry_after),
        Some(kind) if !kind.is_empty() => Error::rejected(status, Some(kind), message.as_deref()),
        _ => Error::rejected(status, None, None),
    }
}

#[cfg(test)]
mod tests;
