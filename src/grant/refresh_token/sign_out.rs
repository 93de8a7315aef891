//! Signing out: the session ends here (no request carries its access token again, no
//! exchange starts) and its refresh token is revoked at the server.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Uri;
use tokio::time::Instant;

use super::{Inner, Latest, RefreshTokenGrant, executor, lock};
use crate::error::Error;
use crate::grant::endpoint::{Endpoint, Secret, client_authentication};

/// How [`RefreshTokenGrant::sign_out`] revokes the session's refresh token at the server.
pub(super) enum Revocation {
    /// RFC 7009: `POST token=…&token_type_hint=refresh_token` and the client's authentication
    /// to the revocation endpoint (Cognito's `/oauth2/revoke`).
    OAuth {
        endpoint: Box<Endpoint>,
        /// The client's own form fields (its id, and its secret under `ClientAuth::Post`).
        form_tail: Secret,
    },
    /// Cognito's user-pool API: `RevokeToken {Token, ClientId, ClientSecret?}` (a session
    /// through [`user_pool_api`](super::RefreshTokenGrantBuilder::user_pool_api)).
    UserPoolApi,
    /// No revocation endpoint is known: the session ends in this process only.
    None,
}

/// The revocation endpoint beside a token endpoint: `…/oauth2/token` → `…/oauth2/revoke`, as
/// Cognito's domains and most OAuth servers lay them out; `None` for any other path.
pub(super) fn beside(token_url: &Uri) -> Option<Uri> {
    let path = token_url.path().strip_suffix("/oauth2/token")?;
    let mut parts = token_url.clone().into_parts();
    parts.path_and_query = Some(format!("{path}/oauth2/revoke").parse().ok()?);
    Uri::from_parts(parts).ok()
}

impl RefreshTokenGrant {
    /// Signs the user out: ends the session in this process and revokes its refresh token at
    /// the server (RFC 7009, at the token endpoint's `/oauth2/revoke`, or the one
    /// [`revocation_url`](super::RefreshTokenGrantBuilder::revocation_url) names), which also
    /// ends the access tokens issued from it.
    ///
    /// Waits for an exchange in flight first. Then, before the revocation is sent: no request
    /// through a layer carries the session's access token any more (its cache drops it), no
    /// exchange starts (fetches fail with an error of kind
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig)), a token set whose save failed is
    /// forgotten, and [`status`](Self::status) says
    /// [`closed`](super::SessionStatus::closed). The application deletes what it saved.
    /// Signing out again does nothing.
    ///
    /// # Errors
    ///
    /// The session has ended here either way. An [`Error`] when the revocation failed (the
    /// server's answer or the network, as for an exchange), or of kind
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when no revocation endpoint is
    /// known (a token URL that does not end in `/oauth2/token`, without `revocation_url`):
    /// the refresh token then stays valid at the server until it expires.
    pub async fn sign_out(&self) -> Result<(), Error> {
        let mut session = self.inner.session.lock().await;
        if session.signed_out {
            return Ok(());
        }
        // A session that was only closed (`close()`) is signed out all the same: its refresh
        // token is revoked and its access token no longer served.
        session.closed = true;
        session.signed_out = true;
        let refresh_token = session.refresh_token.clone();
        let ended = session.ended.is_some();
        lock(&self.inner.stored).take();
        *lock(&self.inner.latest) = Latest::default();
        // A cache that sees the new epoch drops the session's access token.
        self.inner.epoch.fetch_add(1, Ordering::Release);
        drop(session);
        *self.inner.unsaved.lock().await = None;
        self.inner.status.send_modify(|status| {
            status.closed = true;
            status.unsaved = false;
        });
        tracing::debug!("the user signed out; the session has ended here");
        if ended {
            // `invalid_grant`: the server has ended it already.
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        executor::run(async move { inner.revoke(refresh_token).await }).await?
    }
}

impl Inner {
    /// Revokes `refresh_token` at the server, on an exchange thread.
    async fn revoke(&self, refresh_token: Secret) -> Result<(), Error> {
        match &self.revocation {
            Revocation::OAuth {
                endpoint,
                form_tail,
            } => {
                // The client authenticates as for an exchange: with what the builder made of
                // a fixed secret, or now (a secret read at each request, a new assertion).
                let secret = match self.per_request_auth {
                    true => self.read_secret().await?,
                    false => None,
                };
                let (form, authorization) =
                    self.revocation_form(&refresh_token, endpoint, form_tail, secret.as_deref())?;
                let post = endpoint.post_authorized(
                    Bytes::from(form),
                    authorization.as_ref(),
                    Instant::now(),
                );
                match tokio::time::timeout(endpoint.request_timeout, post).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(Error::timeout(
                        "the revocation request",
                        endpoint.request_timeout,
                    )),
                }
            }
            Revocation::UserPoolApi => {
                let Some(api) = &self.user_pool_api else {
                    return Err(Error::internal(
                        "a user-pool API revocation without the API",
                    ));
                };
                let secret = self.read_secret().await?;
                let revoke = api.revoke(&self.endpoint, &refresh_token.0, secret.as_deref());
                match tokio::time::timeout(self.endpoint.request_timeout, revoke).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::timeout(
                        "the revocation request",
                        self.endpoint.request_timeout,
                    )),
                }
            }
            Revocation::None => Err(Error::invalid_config(
                "signed out here, but no revocation endpoint is known (the token URL does not \
                 end in /oauth2/token): call `revocation_url`",
            )),
        }
    }

    /// `token=…&token_type_hint=refresh_token` and the client's authentication: what the
    /// builder made of a fixed secret (`form_tail`, the endpoint's header), or one made now.
    fn revocation_form(
        &self,
        refresh_token: &Secret,
        endpoint: &Endpoint,
        form_tail: &Secret,
        secret: Option<&str>,
    ) -> Result<(String, Option<http::HeaderValue>), Error> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", &refresh_token.0);
        form.append_pair("token_type_hint", "refresh_token");
        let mut authorization = endpoint.authorization.clone();
        if self.per_request_auth {
            authorization = client_authentication(
                &mut form,
                &self.client_auth,
                &self.client_id,
                secret,
                &self.audience,
            )?;
        }
        let mut form = form.finish();
        if !form_tail.0.is_empty() {
            form.push('&');
            form.push_str(&form_tail.0);
        }
        Ok((form, authorization))
    }

    /// The client secret for one request, read now if it comes from a source.
    async fn read_secret(&self) -> Result<Option<String>, Error> {
        match &self.secret {
            Some(cell) => cell.read().await.map(Some),
            None => Ok(None),
        }
    }
}
